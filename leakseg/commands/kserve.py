"""Serve an archive with KServe's Python model server (Open Inference Protocol v2), or write KServe's layout.

Needs the kserve extra (pip install 'leakseg[kserve]'). Serves the same Predictor and the same
result JSON as TorchServe's /predictions, through the Open Inference Protocol v2:

  GET  /v2/health/live   /v2/health/ready   /v2/models/NAME   /v2/models/NAME/ready
  POST /v2/models/NAME/infer     one clip: input "frames", a UINT8/UINT16/FP32 tensor [T, H, W(, 3)]
                                 or BYTES [T] of encoded image files; prompts/options as parameters
  GET  /metrics                  Prometheus

No authentication of its own: bind it to loopback (the default), or run it behind KServe's
ingress / service mesh (docs/DEPLOY.md). --layout DIR instead writes the model storage layout of
KServe's TorchServe runtime (config/config.properties + model-store/NAME.mar) and exits.

examples:
  leakseg kserve --archive model_store/jvlgs.mar                     # http://127.0.0.1:8080
  leakseg kserve --archive /mnt/models/jvlgs.mar --host 0.0.0.0      # in a container under KServe
  leakseg kserve --archive model_store/jvlgs.mar --layout kserve/jvlgs   # for storageUri
"""

import sys
from pathlib import Path


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
    parser.add_argument("--max-request-size", type=int, default=822083584, metavar="BYTES",
                        help="largest request body; bigger ones get 413 unread (default 784 MiB, as `leakseg serve`)")
    parser.add_argument("--layout", type=Path, metavar="DIR",
                        help="write KServe's TorchServe-runtime storage layout for the archive to DIR and exit")


def run(args):
    if args.layout:
        from leakseg.export.kserve import write_kserve_layout

        out = write_kserve_layout(args.archive, args.layout, name=args.name)
        print(f"wrote {out}/config/config.properties and {out}/model-store/ (upload {out} as the storageUri)")
        return 0
    if not args.archive.exists():
        print(f"leakseg kserve: {args.archive} does not exist", file=sys.stderr)
        return 2
    try:
        from leakseg.serving.kserve import serve
    except ImportError as exc:
        print(f"leakseg kserve needs the kserve extra: pip install 'leakseg[kserve]' ({exc})", file=sys.stderr)
        return 2
    serve(args.archive, args.name, args.host, args.http_port, device=args.device, threads=args.threads,
          batch_size=args.batch_size, max_batch_delay_ms=args.max_batch_delay,
          max_request_size=args.max_request_size)
    return 0
