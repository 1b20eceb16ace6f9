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
    "maskface.demo.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskface", description="MaskFace face and landmark detector")
    parser.add_argument("--debug", action="store_true", help="show the full traceback when a command fails")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"maskface {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one clear line for users; the traceback with --debug
        if args.debug:
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"maskface {args.command}: error: {type(exc).__name__}: {message or repr(exc)} "
              "(run `maskface --debug ...` for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
