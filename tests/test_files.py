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


def test_concurrent_writers_do_not_share_a_temp_file(tmp_path):
    target = tmp_path / "m.json"
    with atomic_open(target, "w") as a, atomic_open(target, "w") as b:
        assert a.name != b.name
        a.write("A" * 1000)
        b.write("B")
    assert target.read_text() == "A" * 1000  # the outer writer renamed last; nothing interleaved
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_current_umask())


def _current_umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_json_is_strict(tmp_path):
    import json

    write_json(tmp_path / "m.json", {"auc": float("nan"), "loss": [1.5, float("inf")], "n": 3})
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard constant {c}")) == {"auc": None, "loss": [1.5, None], "n": 3}
