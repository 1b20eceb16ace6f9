"""The `maskface` console script. Each subcommand lives in the module that owns its stage and
exposes `add_parser(subparsers)`; the parser's `func` default runs it and returns an exit code.

Every --help shows each option's default, and answers without importing torch, OpenCV, onnx or
onnxruntime (command modules import them inside their run functions; tests/test_cli_help.py).
A bare `maskface` prints this help and exits 0; `maskface --version` prints the version."""
from __future__ import annotations

import argparse
import importlib
import sys

# Modules that contribute subcommands (each defines add_parser(subparsers)).
COMMAND_MODULES = (
    "maskface.engine.detect",
    "maskface.evaluation.commands",
    "maskface.engine.predict_widerface",
    "maskface.engine.train_cli",
    "maskface.engine.plot_log",
    "maskface.serving.commands",
    "maskface.demo.commands",
)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions as written and appends "(default: X)" to every option whose help does
    not already state its default (flags and options without a default get nothing)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (default in (None, False, argparse.SUPPRESS) or "default" in text.lower() or not action.option_strings
                or (isinstance(default, (list, tuple)) and not default)):
            return text
        shown = " ".join(str(v) for v in default) if isinstance(default, (list, tuple)) else "%(default)s"
        return f"{text} (default: {shown})" if text else f"(default: {shown})"


def _all_parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_parsers(sub)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="maskface", description="MaskFace face and landmark detector "
                                     "(docs/ARCHITECTURE.md; `maskface COMMAND --help` for each command)")
    parser.add_argument("--version", action="version", version=f"maskface {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback when a command fails")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_parser(subparsers)
    for sub in _all_parsers(parser):
        sub.formatter_class = HelpFormatter
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
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
