"""Atomic writes: a failure while writing leaves the previous file intact and no temp file behind."""

from __future__ import annotations

import pytest

from sibeatgan.files import atomic_open, write_json


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as fh:
            fh.write('{"v": 2, "half')
            raise RuntimeError("crash mid-write")
    assert target.read_text() == '{\n  "v": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_creates_parent_folders(tmp_path):
    write_json(tmp_path / "x" / "y" / "z.json", [1, 2])
    assert (tmp_path / "x" / "y" / "z.json").read_text() == "[\n  1,\n  2\n]\n"
