"""Ingest a WFDB database from PhysioNet, a local folder or s3:// into a local folder.

Every ingest stages into a temporary folder beside `out` and renames it into
place, so a failed ingest leaves nothing half-written and never destroys a
previous good copy. Files are checked against the source's SHA256SUMS when it
has one, and `out/SHA256SUMS` is written for what was ingested.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from sibeatgan.errors import SourceError

log = logging.getLogger(__name__)

CHECKSUMS = "SHA256SUMS"
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def parse_sha256sums(text: str, origin: str = CHECKSUMS) -> dict[str, str]:
    """`{filename: hex}` from sha256sum output ("<hex>  <name>", binary marker '*' allowed)."""
    sums: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        digest, _, name = line.partition(" ")
        name = name.strip().lstrip("*")
        if len(digest) != 64 or not name or any(c not in "0123456789abcdefABCDEF" for c in digest):
            raise SourceError(f"{origin}: line {lineno} is not '<sha256 hex>  <filename>': {line!r}")
        sums[name] = digest.lower()
    return sums


def write_sha256sums(folder: Path, names: list[str] | None = None) -> Path:
    """Write `folder/SHA256SUMS` for `names` (default: every plain file but SHA256SUMS), sorted."""
    folder = Path(folder)
    if names is None:
        names = [p.name for p in folder.iterdir() if p.is_file() and p.name != CHECKSUMS]
    lines = [f"{sha256_file(folder / n)}  {n}\n" for n in sorted(names)]
    path = folder / CHECKSUMS
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(lines))
    os.replace(tmp, path)
    return path


@contextlib.contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """Yield an empty temp folder beside `out`; on success it replaces `out`, on error it is removed."""
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = None
    if out.exists() or out.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / "previous")
    try:
        os.replace(stage, out)
    except OSError:
        if old is not None:
            os.replace(old / "previous", out)
            shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
