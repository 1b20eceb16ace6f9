"""A CLI that explains itself: every --help answers without the heavy libraries, shows defaults and
describes every option; a bare call prints the help; --version works."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

from maskface.cli import _all_parsers, build_parser, main

HEAVY = ("torch", "cv2", "onnx", "onnxruntime")

_PROBE = r"""
import contextlib, io, json, sys
from maskface.cli import _all_parsers, build_parser
parser = build_parser()
commands = []
def walk(p, prefix):
    for a in p._actions:
        if a.__class__.__name__ == "_SubParsersAction":
            for name, sub in a.choices.items():
                commands.append(prefix + [name]); walk(sub, prefix + [name])
walk(parser, [])
texts = {}
for argv in [[]] + commands:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            build_parser().parse_args(argv + ["--help"])
        except SystemExit as exc:
            assert exc.code == 0, (argv, exc.code)
    texts[" ".join(argv)] = out.getvalue()
print(json.dumps({"heavy": sorted(m for m in %r if m in sys.modules), "help": texts}))
""" % (HEAVY,)


def test_every_help_runs_without_heavy_imports():
    done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["heavy"] == [], f"--help imported {result['heavy']}"
    helps = result["help"]
    for command in ("detect", "train", "evaluate widerface", "evaluate landmarks", "serve", "client",
                    "predict-widerface", "demo-eval"):
        assert command in helps and helps[command].startswith("usage: maskface"), command
    # defaults are shown: detect's --max-side 640 and --device auto, train's --lr 0.01
    assert "(default: 640)" in helps["detect"] and "(default: auto)" in helps["detect"]
    assert "(default: 0.01)" in helps["train"]


def test_every_option_is_described():
    undocumented = []
    for parser in _all_parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not (action.help or "").strip():
                undocumented.append(f"{parser.prog} {'/'.join(action.option_strings) or action.dest}")
    assert undocumented == []


def test_device_defaults_to_auto_everywhere():
    devices = {}
    for parser in _all_parsers(build_parser()):
        for action in parser._actions:
            if "--device" in action.option_strings:
                devices[parser.prog] = action.default
    assert {"maskface detect", "maskface train", "maskface predict-widerface", "maskface predict-landmarks",
            "maskface predict-faces"} <= set(devices)
    assert set(devices.values()) == {"auto"}, devices


def test_bare_call_prints_help_and_version(capsys):
    assert main([]) == 0
    assert "usage: maskface" in capsys.readouterr().out
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    from maskface import __version__

    assert capsys.readouterr().out.strip() == f"maskface {__version__}"


def test_bare_evaluate_lists_its_data_sets(capsys):
    assert main(["evaluate"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("widerface", "landmarks", "afw", "pascal"))
