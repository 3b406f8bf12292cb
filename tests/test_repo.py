"""The repository as a new user meets it: the README's promises and what git ignores."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_readme_says_how_to_reach_the_command_and_how_long_training_takes():
    text = " ".join((ROOT / "README.md").read_text().split())
    assert "source .venv/bin/activate" in text and ".venv/bin/sibeatgan" in text
    assert "85 s" in text and "2.4 hours per fold" in text and "CUDA graph" in text
    assert "--no-resume" in text


def test_the_readme_outputs_are_ignored_by_git():
    outputs = set(re.findall(r"--out ((?:data|reports|runs)/[\w/-]+)", (ROOT / "README.md").read_text()))
    assert {p.split("/")[0] for p in outputs} == {"data", "reports", "runs"}
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    r = subprocess.run(["git", "check-ignore", *sorted(outputs), "sibeatgan/data/x.py"], cwd=ROOT, capture_output=True, text=True)
    assert sorted(r.stdout.split()) == sorted(outputs)  # the package's own data/ folder is not ignored


def test_no_test_skips_on_a_broken_import_of_our_own_code():
    offenders = [f"{p.name}:{i}" for p in sorted((ROOT / "tests").glob("*.py"))
                 for i, line in enumerate(p.read_text().splitlines(), 1)
                 if re.search(r"importorskip\(\s*[\"']sibeatgan", line)]
    assert offenders == []
