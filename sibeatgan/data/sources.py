"""Ingest a WFDB database from PhysioNet, a local folder or s3:// into a local folder.

Every ingest stages into a temporary folder beside `out` and renames it into
place, so a failed ingest leaves nothing half-written and never destroys a
previous good copy. `out` is replaced only when it is absent, an empty folder,
or holds the marker `.sibeatgan-output.json` that every output folder gets;
anything else is refused before any work starts. Files are checked against the
source's `SHA256SUMS` or, as PhysioNet names it, `SHA256SUMS.txt` (the first
when both exist); the output always gets our own `out/SHA256SUMS` for what was
ingested (the marker is not listed).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import urlparse

from tqdm.auto import tqdm

from sibeatgan.config import IngestConfig
from sibeatgan.errors import ConfigError, SourceError
from sibeatgan.files import process_umask, sha256_file, write_json, write_text

log = logging.getLogger(__name__)

CHECKSUMS = "SHA256SUMS"
PHYSIONET_CHECKSUMS = "SHA256SUMS.txt"
CHECKSUM_NAMES = (CHECKSUMS, PHYSIONET_CHECKSUMS)  # looked for in a source, in this order
OUTPUT_MARKER = ".sibeatgan-output.json"
RECORD_LIST = "RECORDS"
REQUIRED_EXTENSIONS = (".hea", ".dat")
OPTIONAL_EXTENSIONS = (".atr",)
CACHE_MARKER = ".sibeatgan-complete.json"
PROBE_TIMEOUT_S = 3.0
S3_CONNECT_TIMEOUT_S = 3.0
S3_READ_TIMEOUT_S = 30.0
S3_MAX_ATTEMPTS = 2
_CHUNK = 1 << 20


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
    """Write `folder/SHA256SUMS` for `names` (default: every plain file but SHA256SUMS and markers), sorted."""
    folder = Path(folder)
    if names is None:
        skip = {CHECKSUMS, OUTPUT_MARKER, CACHE_MARKER}
        names = [p.name for p in folder.iterdir() if p.is_file() and p.name not in skip]
    lines = [f"{sha256_file(folder / n)}  {n}\n" for n in sorted(names)]
    return write_text(folder / CHECKSUMS, "".join(lines))


def _written_by_us(folder: Path) -> bool:
    """True when `folder` holds a readable output marker written by sibeatgan."""
    try:
        marker = json.loads((folder / OUTPUT_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and str(marker.get("written_by", "")).startswith("sibeatgan")


def check_out(out: Path) -> Path:
    """Raise ConfigError unless `out` may be replaced: absent, an empty folder, or an earlier sibeatgan output."""
    out = Path(out).expanduser()
    if out.is_symlink():
        raise ConfigError(f"{out}: is a symbolic link, not a folder sibeatgan wrote; choose a new or empty folder")
    if not out.exists():
        return out
    if not out.is_dir():
        raise ConfigError(f"{out}: is a file, not a folder; choose a new or empty folder")
    with os.scandir(out) as entries:
        if next(entries, None) is None or _written_by_us(out):
            return out
    raise ConfigError(f"{out}: folder is not empty and was not written by sibeatgan (it has no {OUTPUT_MARKER}); "
                      "choose a new or empty folder")


@contextlib.contextmanager
def staged_dir(out: Path, step: str = "") -> Iterator[Path]:
    """Yield an empty temp folder beside `out`; on success it gets the output marker and replaces `out`.

    `out` must pass `check_out` (checked on entry and again before the swap); on error the stage is removed
    and `out` is untouched.
    """
    out = check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    os.chmod(stage, 0o777 & ~process_umask())  # mkdtemp's 0700 would become the output folder's mode
    try:
        yield stage
        write_json(stage / OUTPUT_MARKER, {
            "written_by": f"sibeatgan {_version()}",
            "step": step,
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })
        check_out(out)
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


def _version() -> str:
    from sibeatgan import __version__

    return __version__


def _copy_hashing(src: IO[bytes], dest: Path) -> tuple[str, int]:
    """Copy a stream to `dest`, returning its SHA-256 and size."""
    h = hashlib.sha256()
    size = 0
    with open(dest, "wb") as f:
        for chunk in iter(lambda: src.read(_CHUNK), b""):
            h.update(chunk)
            f.write(chunk)
            size += len(chunk)
    return h.hexdigest(), size


class Source(Protocol):
    """A flat store of files: what `_ingest` needs from a folder or a bucket."""

    label: str

    def files(self) -> set[str]: ...

    def open(self, name: str) -> contextlib.AbstractContextManager[IO[bytes]]: ...


class FolderSource:
    """A local folder, read only."""

    def __init__(self, root: Path, label: str | None = None):
        self.root = Path(root).expanduser()
        self.label = label or str(self.root)

    def files(self) -> set[str]:
        if not self.root.is_dir():
            raise SourceError(f"source folder {self.root} does not exist or is not a folder")
        return {p.name for p in self.root.iterdir() if p.is_file()}

    def open(self, name: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        return open(self.root / name, "rb")


class S3Source:
    """The objects directly under s3://bucket/prefix, through boto3 with short timeouts and few retries."""

    def __init__(self, url: str, endpoint_url: str | None):
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise SourceError(f"{url!r} is not an S3 address of the form s3://bucket/prefix")
        self.bucket, self.prefix = parsed.netloc, parsed.path.strip("/")
        self.endpoint = endpoint_url or "the default AWS endpoint"
        self.where = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.label = self.where + (f" at {endpoint_url}" if endpoint_url else "")
        import boto3
        from botocore.config import Config

        config = Config(connect_timeout=S3_CONNECT_TIMEOUT_S, read_timeout=S3_READ_TIMEOUT_S,
                        retries={"max_attempts": S3_MAX_ATTEMPTS, "mode": "standard"})
        try:
            # A fresh session: credentials are resolved now, not cached from an earlier call.
            self.client = boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)
        except ValueError as err:
            raise SourceError(f"S3 endpoint {endpoint_url!r} is not usable: {err}") from None

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _error(self, err: Exception, action: str) -> SourceError:
        from botocore.exceptions import (ClientError, ConnectTimeoutError, EndpointConnectionError,
                                         NoCredentialsError, PartialCredentialsError)

        if isinstance(err, (NoCredentialsError, PartialCredentialsError)):
            return SourceError(f"no AWS credentials to {action} {self.where} at {self.endpoint}: set "
                               "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)")
        if isinstance(err, (EndpointConnectionError, ConnectTimeoutError)):
            return SourceError(f"could not reach the S3 endpoint {self.endpoint} to {action} {self.where}: {err}")
        if isinstance(err, ClientError):
            code = str(err.response.get("Error", {}).get("Code", ""))
            if code == "NoSuchBucket":
                return SourceError(f"bucket {self.bucket!r} does not exist at {self.endpoint} ({self.where})")
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
                return SourceError(f"access denied ({code}) to {action} {self.where} at {self.endpoint}")
            return SourceError(f"S3 error {code or err} to {action} {self.where} at {self.endpoint}: {err}")
        return SourceError(f"S3 failure to {action} {self.where} at {self.endpoint}: {err}")

    def files(self) -> set[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        base = self._key("")
        names: set[str] = set()
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base)
            for page in pages:
                for obj in page.get("Contents", []):
                    name = obj["Key"][len(base):]
                    if name and "/" not in name:
                        names.add(name)
        except (BotoCoreError, ClientError) as err:
            raise self._error(err, "list") from None
        if not names:
            raise SourceError(f"{self.label}: no objects directly under this prefix")
        return names

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"]
        except (BotoCoreError, ClientError) as err:
            raise self._error(err, f"download {name} from") from None
        try:
            yield body
        except BotoCoreError as err:
            raise self._error(err, f"download {name} from") from None
        finally:
            body.close()


def _physionet_address() -> tuple[str, int]:
    """Host and port of the PhysioNet server wfdb downloads from."""
    from wfdb.io import download

    url = urlparse(download.PN_CONTENT_URL)
    return url.hostname or "physionet.org", url.port or (443 if url.scheme == "https" else 80)


def _probe_physionet(timeout: float = PROBE_TIMEOUT_S) -> None:
    """Fail within `timeout` seconds (DNS included) when PhysioNet cannot be reached."""
    host, port = _physionet_address()

    def connect() -> None:
        with socket.create_connection((host, port), timeout=timeout):
            pass

    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        pool.submit(connect).result(timeout=timeout + 0.5)
    except (OSError, concurrent.futures.TimeoutError) as err:
        raise SourceError(
            f"could not reach PhysioNet ({host}:{port}) within {timeout:g} s: {err or 'timed out'}. "
            "Ingest from a local folder (source: /path/to/mitdb) or from S3 (source: s3://bucket/prefix) instead"
        ) from None
    finally:
        pool.shutdown(wait=False)


def _cache_complete(cache: Path, records: tuple[str, ...]) -> bool:
    """True when an earlier download into `cache` covered `records` (all, when empty) and its files remain."""
    try:
        marker = json.loads((cache / CACHE_MARKER).read_text())
    except (OSError, ValueError):
        return False
    cached = marker.get("records")
    if not records and cached != "all":
        return False
    if records and cached != "all" and not set(records) <= set(cached or ()):
        return False
    present = {p.name for p in cache.iterdir() if p.is_file()}
    names = records or tuple(n[:-4] for n in present if n.endswith(".hea"))
    return bool(names) and all(f"{r}{ext}" in present for r in names for ext in REQUIRED_EXTENSIONS)


def physionet_cache(config: IngestConfig) -> FolderSource:
    """Download `config.database` into the cache (skipped when it is complete) and return it as a folder source."""
    import wfdb
    from wfdb.io import download

    cache = Path(config.cache_dir).expanduser() / config.database
    label = f"physionet:{config.database} (cache {cache})"
    if _cache_complete(cache, config.records):
        log.info("ingest: PhysioNet %s already cached in %s", config.database, cache)
        return FolderSource(cache, label)
    _probe_physionet()
    cache.mkdir(parents=True, exist_ok=True)
    records: Any = list(config.records) or "all"
    log.info("ingest: downloading %s from PhysioNet into %s", config.database, cache)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            wfdb.dl_database(config.database, dl_dir=str(cache), records=records, annotators="all")
    except Exception as err:  # wfdb raises bare HTTP and OS errors
        raise SourceError(f"downloading {config.database} from PhysioNet into {cache} failed: {err}") from None
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            download.dl_files(config.database, str(cache), [PHYSIONET_CHECKSUMS], overwrite=True)
    except Exception as err:
        log.warning("ingest: no %s for %s on PhysioNet (%s); files will not be verified",
                    PHYSIONET_CHECKSUMS, config.database, err)
    previous: Any = None
    with contextlib.suppress(OSError, ValueError):
        previous = json.loads((cache / CACHE_MARKER).read_text()).get("records")
    if records != "all" and previous != "all":
        records = sorted(set(records) | set(previous or ()))
    if previous == "all":
        records = "all"
    write_json(cache / CACHE_MARKER, {"database": config.database, "records": records})
    return FolderSource(cache, label)


def _check_names(records: tuple[str, ...]) -> None:
    for r in records:
        if not r or "/" in r or "\\" in r or r.startswith("."):
            raise ConfigError(f"IngestConfig.records: {r!r} is not a record name")


def _ingest(source: Source, config: IngestConfig, out: Path, progress: bool) -> dict[str, Any]:
    """Copy the requested records of `source` into `out` through a staging folder, verifying checksums."""
    available = source.files()
    have = sorted(n[: -len(".hea")] for n in available if n.endswith(".hea"))
    if not have:
        raise SourceError(f"{source.label} holds no WFDB records (no .hea files)")
    wanted = list(dict.fromkeys(config.records)) or have
    missing = [r for r in wanted if r not in have]
    if missing:
        raise SourceError(f"{source.label}: record(s) {', '.join(missing)} not found "
                          f"(it has {len(have)}: {', '.join(have[:10])}{' ...' if len(have) > 10 else ''})")
    sums: dict[str, str] = {}
    sums_name = next((n for n in CHECKSUM_NAMES if n in available), None)
    if config.verify_checksums and sums_name:
        with source.open(sums_name) as f:
            sums = parse_sha256sums(f.read().decode("utf-8", "replace"), f"{source.label}/{sums_name}")
    elif config.verify_checksums:
        log.warning("ingest: %s has no %s; files are copied unverified", source.label, " or ".join(CHECKSUM_NAMES))
    plan: list[str] = []
    for r in wanted:
        for ext in REQUIRED_EXTENSIONS + OPTIONAL_EXTENSIONS:
            name = r + ext
            if name in available:
                plan.append(name)
            elif ext in REQUIRED_EXTENSIONS:
                raise SourceError(f"record {r}: {name} is missing from {source.label}")
        for name in sums:
            if name.rsplit(".", 1)[0] == r and name not in available:
                raise SourceError(f"record {r}: {name} is listed in {sums_name} but missing from {source.label}")

    digests: dict[str, str] = {}
    total = verified = 0
    with staged_dir(out, "ingest") as stage:
        for name in tqdm(plan, desc="ingest", unit="file", disable=not progress):
            with source.open(name) as f:
                digest, size = _copy_hashing(f, stage / name)
            if name in sums:
                if digest != sums[name]:
                    raise SourceError(f"checksum mismatch for {name} from {source.label}: "
                                      f"expected {sums[name]} ({sums_name}), got {digest}")
                verified += 1
            digests[name] = digest
            total += size
        (stage / RECORD_LIST).write_text("".join(f"{r}\n" for r in wanted))
        write_sha256sums(stage, [*digests, RECORD_LIST])
    log.info("ingest: %d records, %d files, %d bytes from %s -> %s (%d checksums verified)",
             len(wanted), len(plan), total, source.label, out, verified)
    return {
        "out": str(out),
        "source": source.label,
        "records": wanted,
        "n_records": len(wanted),
        "files": sorted(digests),
        "n_files": len(digests),
        "bytes": total,
        "checksums_verified": verified,
        "checksums_unlisted": len(plan) - verified,
    }


def run_ingest(config: IngestConfig, out: Path, progress: bool = False) -> dict[str, Any]:
    """Ingest `config.records` (all when empty) from `config.source` into `out` and return a summary."""
    out = Path(out).expanduser()
    _check_names(config.records)
    if "://" in config.source and not config.source.startswith("s3://"):
        raise ConfigError(f"IngestConfig.source: {config.source!r} is not 'physionet', a folder or s3://bucket/prefix")
    root = None
    if config.source == "physionet":
        root = Path(config.cache_dir).expanduser() / config.database
    elif not config.source.startswith("s3://"):
        root = Path(config.source).expanduser()
    if root is not None:
        src, dst = root.resolve(), out.resolve()
        if src == dst or src.is_relative_to(dst) or dst.is_relative_to(src):
            raise SourceError(f"out {out} and the source folder {root} must not contain each other")
    check_out(out)  # before any download or copy
    if config.source == "physionet":
        source: Source = physionet_cache(config)
    elif config.source.startswith("s3://"):
        source = S3Source(config.source, config.s3_endpoint_url)
    else:
        source = FolderSource(Path(config.source))
    return _ingest(source, config, out, progress)
