"""Serve an archive with KServe's Python model server (Open Inference Protocol v2), or write KServe's layout.

Needs the kserve extra (pip install 'leakseg[kserve]'). Serves the same Predictor and the same
result JSON as TorchServe's /predictions, through the Open Inference Protocol v2:

  GET  /v2/health/live   /v2/health/ready   /v2/models/NAME   /v2/models/NAME/ready
  POST /v2/models/NAME/infer     one clip: input "frames", a UINT8/UINT16/FP32 tensor [T, H, W(, 3)]
                                 or BYTES [T] of encoded image files; prompts/options as parameters
  GET  /metrics                  Prometheus

Only these routes answer (KServe's model-repository, v1 and versioned routes do not). Inference,
metadata and /metrics need the API key (Authorization: Bearer KEY) from --api-key-file,
$LEAKSEG_API_KEY_FILE or $LEAKSEG_API_KEY; the health routes need none. Off loopback the server
will not start without a key unless --no-api-key says the mesh authenticates (docs/DEPLOY.md).
--layout DIR instead writes the model storage layout of KServe's TorchServe runtime
(config/config.properties + model-store/NAME.mar) and exits.

examples:
  leakseg kserve --archive model_store/jvlgs.mar                     # http://127.0.0.1:8080
  leakseg kserve --archive /mnt/models/jvlgs.mar --host 0.0.0.0 --api-key-file /var/run/secrets/leakseg/api-key
  leakseg kserve --archive model_store/jvlgs.mar --layout kserve/jvlgs   # for storageUri
"""

import ipaddress
import os
import sys
from pathlib import Path

from leakseg.io.frames import MAX_REQUEST_BYTES


def add_arguments(parser):
    parser.add_argument("--archive", required=True, type=Path, help="a .mar file or an extracted archive folder")
    parser.add_argument("--name", help="model name in the URLs (default: the archive's model name)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; 0.0.0.0 inside a container)")
    parser.add_argument("--http-port", type=int, default=8080, help="HTTP port (default 8080, KServe's)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, help="intra-op threads (default: $LEAKSEG_THREADS or the cores)")
    parser.add_argument("--batch-size", type=int, default=4,
                        help="clips that may share one forward pass (default 4)")
    parser.add_argument("--max-batch-delay", type=float, default=20.0, metavar="MS",
                        help="how long a clip waits for others to batch with, ms (default 20)")
    parser.add_argument("--max-request-size", type=int, default=MAX_REQUEST_BYTES, metavar="BYTES",
                        help="largest request body, counted as it arrives; bigger ones get 413 "
                             "(default %(default)s: 768 MiB + 64 KiB, as `leakseg serve`)")
    parser.add_argument("--max-in-flight", type=int, default=8, metavar="N",
                        help="requests read, parsed or run at once; more get 503 + Retry-After (default 8)")
    parser.add_argument("--request-timeout", type=float, default=120.0, metavar="S",
                        help="seconds for a body to arrive (else 408) and again for its answer (else 504); "
                             "a forward pass longer than this makes the server unready (default 120)")
    parser.add_argument("--api-key-file", type=Path, metavar="FILE",
                        help="the API key clients send as Authorization: Bearer KEY: a one-line file or "
                             "TorchServe's key_file.json (default $LEAKSEG_API_KEY_FILE; $LEAKSEG_API_KEY holds "
                             "the key itself)")
    parser.add_argument("--no-api-key", action="store_true",
                        help="serve without a key off loopback: only where the mesh or ingress authenticates "
                             "every caller (docs/DEPLOY.md, Authentication)")
    parser.add_argument("--open-metrics", action="store_true",
                        help="serve /metrics without the key (for a scraper that cannot send one)")
    parser.add_argument("--layout", type=Path, metavar="DIR",
                        help="write KServe's TorchServe-runtime storage layout for the archive to DIR and exit")


def run(args):
    if args.layout:
        from leakseg.export.kserve_layout import write_kserve_layout

        out = write_kserve_layout(args.archive, args.layout, name=args.name)
        print(f"wrote {out}/config/config.properties and {out}/model-store/ (upload {out} as the storageUri)")
        return 0
    if not args.archive.exists():
        print(f"leakseg kserve: {args.archive} does not exist", file=sys.stderr)
        return 2
    try:
        api_key = _api_key(args)
    except (OSError, ValueError) as exc:
        print(f"leakseg kserve: {exc}", file=sys.stderr)
        return 2
    try:
        from leakseg.serving.kserve_runtime import GateSettings, serve
    except ImportError as exc:
        print(f"leakseg kserve needs the kserve extra: pip install 'leakseg[kserve]' ({exc})", file=sys.stderr)
        return 2
    settings = GateSettings(max_request_size=args.max_request_size, max_in_flight=max(1, args.max_in_flight),
                            request_timeout=args.request_timeout, api_key=api_key, open_metrics=args.open_metrics)
    serve(args.archive, args.name, args.host, args.http_port, device=args.device, threads=args.threads,
          batch_size=args.batch_size, max_batch_delay_ms=args.max_batch_delay, settings=settings)
    return 0


def _api_key(args):
    """The key to require, or None; ValueError when the choice is missing or contradictory (checked before
    the model loads, so a misconfigured pod fails at once and says why)."""
    from leakseg.client.client import read_inference_key  # one reader for the key file: the client's
    from leakseg.client.errors import AuthError

    key_file = args.api_key_file or os.environ.get("LEAKSEG_API_KEY_FILE")
    if args.no_api_key:
        if key_file or os.environ.get("LEAKSEG_API_KEY"):
            raise ValueError("--no-api-key, but an API key is configured too ($LEAKSEG_API_KEY[_FILE] or "
                             "--api-key-file); drop one")
        return None
    try:
        key = read_inference_key(key_file) if key_file else os.environ.get("LEAKSEG_API_KEY") or None
    except AuthError as exc:
        raise ValueError(str(exc)) from None
    if key is not None and not (key.isascii() and key.isprintable()):
        raise ValueError("the API key must be printable ASCII (e.g. openssl rand -base64 32): it travels in a header")
    if key is None and not _is_loopback(args.host):
        raise ValueError(f"--host {args.host} serves beyond this machine: give --api-key-file (or "
                         "$LEAKSEG_API_KEY), or --no-api-key where the mesh authenticates (docs/DEPLOY.md)")
    return key


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
