"""Render deploy/proxy/nginx.conf.template: nginx in front of TorchServe's inference API.

The body limit is config.properties' max_request_size (the contract's largest request), so the proxy
and TorchServe never disagree. Timeouts and the per-client connection limit have safe defaults.

    python deploy/proxy/render.py --out /etc/leakseg/nginx.conf \\
        --listen 0.0.0.0:8443 --upstream 127.0.0.1:8080 --state-dir /var/lib/leakseg-proxy
    python deploy/proxy/render.py ... --proxy-key-file /etc/leakseg/proxy.key   # optional key, see below

With --proxy-key-file every request must also carry ``Proxy-Authorization: Bearer <that key>``
(refused with 401 here otherwise, and stripped before TorchServe); TorchServe's own token still
travels in ``Authorization`` and TorchServe still checks it.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

TEMPLATE = Path(__file__).resolve().with_name("nginx.conf.template")
REPO = Path(__file__).resolve().parents[2]
#: Characters a bearer key may hold (RFC 6750 token68): nothing that could end an nginx string.
KEY_PATTERN = re.compile(r"[A-Za-z0-9._~+/-]+=*")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the nginx.conf to write")
    parser.add_argument("--config", type=Path, default=REPO / "config.properties",
                        help="TorchServe's config.properties, for max_request_size (default: the repository's)")
    parser.add_argument("--listen", default="0.0.0.0:8443", help="nginx's listen address (default 0.0.0.0:8443)")
    parser.add_argument("--upstream", default="127.0.0.1:8080", help="TorchServe's inference address")
    parser.add_argument("--state-dir", type=Path, default=Path("/var/lib/leakseg-proxy"),
                        help="pid, logs and body buffers (must be writable by nginx)")
    parser.add_argument("--header-timeout", type=int, default=10, help="seconds for the whole request head")
    parser.add_argument("--body-timeout", type=int, default=20, help="seconds between two reads of the body")
    parser.add_argument("--send-timeout", type=int, default=30, help="seconds between two writes of the answer")
    parser.add_argument("--keepalive-timeout", type=int, default=30, help="seconds an idle connection is kept")
    parser.add_argument("--read-timeout", type=int, default=180, help="seconds to wait for TorchServe's answer")
    parser.add_argument("--max-conns", type=int, default=16, help="requests in progress per client address")
    parser.add_argument("--proxy-key-file", type=Path, help="require Proxy-Authorization: Bearer <this key>")
    return parser.parse_args(argv)


def max_request_size(config: Path) -> int:
    from leakseg.serving.torchserve_process import read_properties

    return int(read_properties(config)["max_request_size"])


def auth_blocks(key_file: Path | None) -> dict:
    """The optional proxy key: a map from the Proxy-Authorization header and the check using it."""
    if key_file is None:
        note = "    # no proxy key (--proxy-key-file): TorchServe's token is the only check"
        return {"@AUTH_MAP@": note, "@AUTH_CHECK@": "            # no proxy key"}
    key = key_file.read_text().strip()
    if not KEY_PATTERN.fullmatch(key):
        raise SystemExit(f"{key_file}: a proxy key holds only letters, digits and ._~+/- (then '=' padding)")
    return {
        "@AUTH_MAP@": ('    map $http_proxy_authorization $leakseg_proxy_denied {\n'
                       '        default 1;\n'
                       f'        "Bearer {key}" 0;\n'
                       '    }'),
        "@AUTH_CHECK@": ("            if ($leakseg_proxy_denied) {\n"
                         "                return 401 '{\"code\": 401, \"type\": \"ProxyAuthenticationException\", "
                         "\"message\": \"missing or wrong Proxy-Authorization key\"}\\n';\n"
                         "            }"),
    }


def render(args: argparse.Namespace) -> str:
    values = {
        "@MAX_BODY@": str(max_request_size(args.config)),
        "@LISTEN@": args.listen,
        "@UPSTREAM@": args.upstream,
        "@STATE_DIR@": str(args.state_dir.resolve()),
        "@HEADER_TIMEOUT@": str(args.header_timeout),
        "@BODY_TIMEOUT@": str(args.body_timeout),
        "@SEND_TIMEOUT@": str(args.send_timeout),
        "@KEEPALIVE_TIMEOUT@": str(args.keepalive_timeout),
        "@READ_TIMEOUT@": str(args.read_timeout),
        "@MAX_CONNS@": str(args.max_conns),
        **auth_blocks(args.proxy_key_file),
    }
    text = TEMPLATE.read_text()
    for name, value in values.items():
        text = text.replace(name, value)
    left = sorted(set(re.findall(r"@[A-Z_]+@", text)))
    if left:
        raise SystemExit(f"{TEMPLATE}: no value for {left}")
    return text


def main(argv=None) -> int:
    args = parse_args(argv)
    text = render(args)
    args.state_dir.mkdir(parents=True, exist_ok=True)
    # 0600: the file may hold the proxy key
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
