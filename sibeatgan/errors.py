"""Exceptions that name what is wrong: the record, file or field, and the problem."""

from __future__ import annotations

import re


class SibeatganError(Exception):
    """Base of every error this package raises on bad input or configuration."""


class ConfigError(SibeatganError):
    """A configuration file or override is invalid (names the field)."""


class SourceError(SibeatganError):
    """A data source cannot be read: unreachable, empty, or a checksum mismatch."""


class RecordError(SibeatganError):
    """One WFDB record is unusable; the message starts with the record name."""

    def __init__(self, record: str, problem: str):
        self.record = record
        self.problem = problem
        super().__init__(f"record {record}: {problem}")


class CheckpointError(SibeatganError):
    """A checkpoint or generator file is missing, corrupt, of another format, or does not fit the run."""


class DatasetError(SibeatganError):
    """A beat dataset artifact is missing, corrupt or of an unknown version."""


class ValidationFailed(SibeatganError):
    """The validation gate found failed expectations; `summary` lists them."""

    def __init__(self, summary: str):
        self.summary = summary
        super().__init__(summary)


_URL_USERINFO = re.compile(r"(\b[a-zA-Z][\w+.-]*://)([^:/@\s]*)(:[^@\s]*)?@")


def redact_url(text: str) -> str:
    """`text` with the credentials of every URL in it hidden: `scheme://user:***@host` (the user kept, the password
    gone), and `scheme://***@host` for a bare token. The one redactor of messages, params and tags."""
    return _URL_USERINFO.sub(lambda m: f"{m[1]}{m[2]}:***@" if m[3] is not None else f"{m[1]}***@", str(text))
