"""Modules import each other as installed packages: no sys.path edits outside the tests."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PATH_EDIT = re.compile(r"\bsys\.path\.(insert|append|extend)\(|\bsys\.path\s*[+]?=")


def test_no_sys_path_edits_outside_tests():
    folders = ("maskface", "export", "plugins", "benchmarks", "triton_models", "scripts")
    offenders = [f"{p.relative_to(REPO)}:{i}" for folder in folders for p in sorted((REPO / folder).rglob("*.py"))
                 for i, line in enumerate(p.read_text().splitlines(), 1) if PATH_EDIT.search(line)]
    assert offenders == [], offenders
    # the scanner finds one when there is one
    assert PATH_EDIT.search('    sys.path.insert(0, str(REPO))')
