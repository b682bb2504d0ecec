"""Start or stop TorchServe with the models of the model store (see docs/API.md).

Starts TorchServe with config.properties (./config.properties, else the repository's), loads
the archives, waits until every model's workers are READY and prints the inference URL. The
run folder (.leakseg/serve) holds the effective configuration, TorchServe's key_file.json and
the state `--stop`, `--check`, `--print-token` and `--rotate-token` read; logs go to --log-dir.
The run folder must be new or empty (or one leakseg serve made): it is leakseg's, never the user's.

examples:
  leakseg serve                                  # every .mar in model_store/, in the background
  leakseg serve --models jvlgs=jvlgs.mar --foreground
  leakseg serve --set inference_address=http://0.0.0.0:8080    # reachable from other hosts
  curl -H "Authorization: Bearer $(leakseg serve --print-token)" \\
       -F frame_0000=@f0.png -F frame_0001=@f1.png -F frame_0002=@f2.png \\
       http://127.0.0.1:8080/predictions/jvlgs
  leakseg serve --stop
"""

import sys
from pathlib import Path


def add_arguments(parser):
    parser.add_argument("--model-store", type=Path, default=Path("model_store"), help="folder of .mar archives")
    parser.add_argument("--models", nargs="+", metavar="NAME=FILE",
                        help="archives to load from the model store (default: every .mar; NAME defaults to the "
                             "file's stem); the URL is /predictions/NAME")
    parser.add_argument("--config", type=Path, help="TorchServe config (default ./config.properties or the repo's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override one config.properties key (repeatable)")
    parser.add_argument("--log-dir", type=Path, default=Path("logs"), help="TorchServe's logs (default ./logs)")
    parser.add_argument("--run-dir", type=Path, default=Path(".leakseg/serve"),
                        help="state, effective config and key file: a new or empty folder, or one leakseg serve "
                             "made (default ./.leakseg/serve)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the workers (default 300)")
    parser.add_argument("--foreground", action="store_true",
                        help="stay attached (logs on the console) until SIGTERM/Ctrl-C; for containers")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--stop", action="store_true", help="stop the TorchServe started from --run-dir")
    action.add_argument("--check", action="store_true",
                        help="health check: exit 0 when every model answers a describe request")
    action.add_argument("--print-token", action="store_true", help="print the current inference key")
    action.add_argument("--rotate-token", action="store_true",
                        help="replace the inference key (the old one stops working) and print the new one")


def run(args):
    from leakseg.serving import torchserve_process as serve

    try:
        if args.stop:
            return _stop(serve, args.run_dir)
        if args.check:
            return _check(serve.Server.load(args.run_dir))
        if args.print_token:
            print(serve.Server.load(args.run_dir).inference_key)
            return 0
        if args.rotate_token:
            print(serve.Server.load(args.run_dir).rotate_key("inference"))
            return 0
        return _start(serve, args)
    except serve.ServeError as exc:
        print(f"leakseg serve: {exc}", file=sys.stderr)
        return 1
    except serve.Stopped:
        return 0


def _start(serve, args):
    overrides = dict(_key_value(item) for item in args.overrides)
    if args.foreground:
        serve.install_stop_signals()  # a SIGTERM while the workers load still stops everything
    server = serve.start(args.model_store, args.models, args.config, args.log_dir, args.run_dir, overrides,
                         args.timeout, inherit_output=args.foreground)
    _print_ready(server, args.run_dir)
    sys.stdout.flush()
    return serve.serve_forever(server) if args.foreground else 0


def _print_ready(server, run_dir):
    print(f"TorchServe is ready (pid {server.pid}, logs in {server.log_dir})")
    for name in server.model_names:
        print(f"  POST {server.prediction_url(name)}")
    print(f"  token:   leakseg serve --print-token --run-dir {run_dir}   (the \"inference\" key of {server.key_file})")
    print(f"  metrics: {server.metrics_url}/metrics")
    print(f"  stop:    leakseg serve --stop --run-dir {run_dir}")


def _stop(serve, run_dir):
    try:
        server = serve.Server.load(run_dir)
    except serve.NotStarted:  # a state file that is not ours is an error (exit 1), not "not running"
        print("TorchServe is not running (nothing started from this run folder)")
        return 0
    if server.is_running():
        server.stop()
        print(f"TorchServe stopped (pid {server.pid})")
    else:
        server.stop()  # clears the stale state and key file
        print("TorchServe was not running; cleared its stale state")
    return 0


def _check(server):
    for name in server.model_names:
        server.describe(name)
    print("healthy")
    return 0


def _key_value(item):
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise SystemExit(f"leakseg serve: --set expects KEY=VALUE, got {item!r}")
    return key.strip(), value.strip()
