"""Failures of what the package runs on (a server, credentials, the disk) as one line naming the cause, and an exit code.

The command prints that line instead of a traceback (`sibeatgan --debug ...` shows the traceback too). Exit codes:
0 success, 1 a refusal (the validation gate, the promotion gate), 2 bad input (a field, a file, a model or alias
that does not exist), 3 an infrastructure failure (server away, credentials refused, disk full, output not writable).
"""

from __future__ import annotations

import errno
import os
import re
import sys
from typing import Any

from sibeatgan.errors import redact_url

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_INFRA = 3

_OS_CAUSES = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "the file system is read-only",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "exists and is not a folder",
    errno.EISDIR: "is a folder, not a file",
    errno.ENOENT: "no such file or folder",
}


def describe(err: BaseException) -> tuple[str, int] | None:
    """(one line, exit code) for an infrastructure failure or a missing file; None for anything else (a bug keeps its traceback)."""
    chain = _chain(err)
    for e in chain:
        found = _mlflow(e, chain) or _http(e) or _s3(e) or _database(e)
        if found:
            return found
    for e in chain:
        if isinstance(e, OSError):
            return _os(e)
        if isinstance(e, RuntimeError) and "PytorchStreamWriter failed writing" in str(e):
            return f"writing a file failed ({_first(e)}): is the disk full?", EXIT_INFRA
    return None


def _chain(err: BaseException) -> list[BaseException]:
    """`err`, then what caused it (explicit causes and the exceptions being handled when it was raised)."""
    seen: list[BaseException] = []
    while err is not None and all(err is not s for s in seen):
        seen.append(err)
        err = err.__cause__ or err.__context__
    return seen


def _first(err: BaseException, limit: int = 200) -> str:
    text = str(err).strip().splitlines()
    line = text[0] if text else type(err).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri and "mlflow" in sys.modules:
        try:
            uri = sys.modules["mlflow"].get_tracking_uri()
        except Exception:  # noqa: BLE001 - only for the message
            uri = None
    return redact_url(uri or "the tracking URI")


_UNREACHABLE = (
    ("connection refused", "connection refused"), ("name or service not known", "host name not found"),
    ("nodename nor servname", "host name not found"), ("temporary failure in name resolution", "host name not found"),
    ("timed out", "timed out"), ("timeout", "timed out"), ("no route to host", "no route to host"),
    ("network is unreachable", "network unreachable"), ("certificate", "TLS certificate refused"),
)


def _unreachable(detail: str) -> str:
    text = detail.lower()
    for needle, reason in _UNREACHABLE:
        if needle in text:
            return reason
    return _first(Exception(detail), 120)


def _mlflow(e: BaseException, chain: list[BaseException]) -> tuple[str, int] | None:
    try:
        from mlflow.exceptions import MlflowException
    except ImportError:
        return None
    if not isinstance(e, MlflowException):
        return None
    text, code = str(e), getattr(e, "error_code", "")
    status = re.search(r"failed with error code (\d{3})", text)
    http = int(status.group(1)) if status else e.get_http_status_code()
    uri = _tracking_uri()
    if http == 401 or code == "UNAUTHENTICATED":
        return (f"MLflow at {uri} refused the credentials (HTTP 401): check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD",
                EXIT_INFRA)
    if http == 403 or code == "PERMISSION_DENIED":
        return f"MLflow at {uri} denied the permission (HTTP 403): {_first(e)}", EXIT_INFRA
    if "failed with exception" in text or "failed with timeout exception" in text:
        inner = next((str(c) for c in chain[chain.index(e) + 1 :]), text)
        return f"MLflow at {uri} cannot be reached ({_unreachable(inner + ' ' + text)})", EXIT_INFRA
    said = re.sub(r"^[A-Z_]+: ", "", _first(e))  # a server error's text without its code's name
    if code == "RESOURCE_DOES_NOT_EXIST" or http == 404 or re.search(r"not found|does not exist", said, re.IGNORECASE):
        return f"MLflow at {uri}: {said}", EXIT_USAGE  # an unknown model, alias, version or run
    if code in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST", "RESOURCE_ALREADY_EXISTS", "INVALID_STATE"):
        return f"MLflow: {said}", EXIT_USAGE
    return f"MLflow at {uri} failed: {said}", EXIT_INFRA


def _http(e: BaseException) -> tuple[str, int] | None:
    try:
        import requests
    except ImportError:
        return None
    if isinstance(e, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
        url = getattr(getattr(e, "request", None), "url", None)
        where = redact_url(url.split("?")[0]) if url else "a server"
        return f"{where} cannot be reached ({_unreachable(str(e))})", EXIT_INFRA
    return None


def _s3(e: BaseException) -> tuple[str, int] | None:
    module = type(e).__module__ or ""
    if not module.startswith(("botocore", "boto3")):
        return None
    return f"the object store (S3) failed: {_first(e)}", EXIT_INFRA


def _database(e: BaseException) -> tuple[str, int] | None:
    module = type(e).__module__ or ""
    if not module.startswith("sqlalchemy") or type(e).__name__ not in ("OperationalError", "DatabaseError", "InterfaceError"):
        return None
    return f"the database failed: {_first(getattr(e, 'orig', None) or e)}", EXIT_INFRA


def _os(e: OSError) -> tuple[str, int]:
    if isinstance(e, ConnectionError):
        return f"a connection failed ({_first(e)})", EXIT_INFRA
    cause = _OS_CAUSES.get(e.errno or -1, e.strerror or _first(e))
    name = e.filename
    if name is not None:
        name = str(name)
        if os.path.basename(name).startswith(".") and name.endswith(".tmp"):  # atomic_open's temp file: name the folder
            name = os.path.dirname(name) or "."
    code = EXIT_USAGE if e.errno == errno.ENOENT else EXIT_INFRA
    if name is None:
        return cause, code
    if e.errno in (errno.EEXIST, errno.EISDIR):
        return f"{name} {cause}", code
    return f"{name}: {cause}", code
