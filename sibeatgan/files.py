"""Atomic file writes: a temp file beside the target, then a rename, so a crash never leaves half a file.

A writer killed mid-write (SIGKILL, a lost node) leaves its temp file behind; the temp file's name says which
host and process wrote it, so the next write of the same target removes the ones whose writer is gone.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import math
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a fresh temp file beside `path`; on success it replaces `path`, on error it is removed and `path` is untouched.

    Each writer gets its own temp file, so two processes writing the same path never mix their bytes:
    the last rename wins whole.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.{_HOST}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    with _open_lock:
        _open_temps.add(tmp.name)
    try:
        os.fchmod(fd, 0o666 & ~process_umask())
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        with _open_lock:
            _open_temps.discard(tmp.name)


_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
_open_temps: set[str] = set()  # this process's temp files still being written (threads write too)
_open_lock = threading.Lock()
STALE_AFTER_S = 3600.0  # a temp file of another host, or of an older name form, untouched this long is a leftover


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Remove the temp files beside `path` that an earlier, interrupted `atomic_open(path)` left; returns them.

    A temp file of this host is stale when its process is gone, or is a newer process with the same pid (started
    after the file was last written: a restarted container reuses pids); one of another host (shared storage), or
    of the name form before pids were in it, when it has not been written for STALE_AFTER_S.
    """
    path = Path(path)
    removed = []
    try:
        candidates = list(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))
    except OSError:
        return removed
    for tmp in candidates:
        rest = tmp.name[len(path.name) + 2 : -len(".tmp")].split(".")
        try:
            mtime = tmp.stat().st_mtime
        except OSError:
            continue
        if len(rest) == 3 and rest[1].isdigit():  # host.pid.random
            host, pid = rest[0], int(rest[1])
            stale = not _writer_alive(pid, mtime, tmp.name) if host == _HOST else time.time() - mtime > STALE_AFTER_S
        elif len(rest) == 1:  # random: written before the name held its writer
            stale = time.time() - mtime > STALE_AFTER_S
        else:  # a temp file of another target whose name starts with this one's
            continue
        if stale:
            try:
                tmp.unlink()
            except OSError:
                continue
            removed.append(tmp)
    return removed


def _writer_alive(pid: int, mtime: float, name: str) -> bool:
    """Whether process `pid` of this host may still be writing a temp file last written at `mtime`."""
    if pid == os.getpid():
        with _open_lock:
            return name in _open_temps
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    state, started = _process_state(pid)
    return state != "Z" and (started is None or started <= mtime + 1.0)


def _process_state(pid: int) -> tuple[str | None, float | None]:
    """Process `pid`'s state letter (Z: a zombie, dead) and start (seconds since the epoch), from /proc; None, None
    where there is no /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
        return fields[0], btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None, None


@functools.cache
def process_umask() -> int:
    """The process umask, read once (reading it means setting it, so not on every write)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_text(path: str | Path, text: str) -> Path:
    with atomic_open(path, "w") as fh:
        fh.write(text)
    return Path(path)


def write_json(path: str | Path, data: Any) -> Path:
    """Strict JSON (NaN and infinities become null, which every reader accepts), written atomically."""
    return write_text(path, json.dumps(_finite(data), indent=2, sort_keys=True, allow_nan=False) + "\n")


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
