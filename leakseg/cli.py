"""The `leakseg` console command.

Each subcommand lives in ``leakseg/commands/<name>.py`` with two functions:
``add_arguments(parser)`` (argparse only, no heavy imports) and ``run(args) -> int``
(imports torch, onnxruntime, ... only when the command actually runs), so
``leakseg segment`` works on a machine that has only the thin client installed.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import List, Optional

from leakseg import __version__

#: name -> one-line help. The module leakseg.commands.<name> implements it.
COMMANDS = {
    "export": "import a checkpoint, precompute prompt embeddings, trace the graph, write a .mar archive",
    "predict": "segment a clip in process with an archive; prints the same JSON the HTTP API returns",
    "schema": "print the JSON Schema of the wire contract",
    "segment": "send a clip to a running leakseg service and summarise the result",
    "serve": "start or stop TorchServe with the models in the model store",
    "synth": "generate labelled synthetic infrared leak clips (SCENE/images, SCENE/masks)",
    "train": "train or fine-tune JVLGS on a folder of labelled clips (SCENE/images, SCENE/masks)",
    "evaluate": "J, F, J&F, false alarms and clip detection of an archive on a labelled dataset",
    "kserve": "serve an archive on KServe's model server (Open Inference Protocol v2), or write KServe's layout",
    "monitor": "watch cameras, segment overlapping clips, raise leak alarms over OPC UA, MQTT, Modbus",
    "selftest": "blend synthetic plumes into a camera's own frames: PoD, time to alarm, false alarms, detection limit",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leakseg",
        description="Gas-leak segmentation in infrared video (JVLGS): export, serve, segment.",
    )
    parser.add_argument("--version", action="version", version=f"leakseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"leakseg.commands.{name}")
        p = sub.add_parser(
            name, help=help_text, description=(module.__doc__ or help_text).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    return int(args._module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
