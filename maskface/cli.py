"""The `maskface` console script. Each subcommand lives in the module that owns its stage and
exposes `add_parser(subparsers)`; the parser's `func` default runs it and returns an exit code."""
from __future__ import annotations

import argparse
import importlib
import sys

# Modules that contribute subcommands (each defines add_parser(subparsers)).
COMMAND_MODULES = (
    "maskface.engine.detect",
    "maskface.evaluation.commands",
    "maskface.engine.train_cli",
    "maskface.serving.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskface", description="MaskFace face and landmark detector")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
