"""Exceptions that name what is wrong: the record, file or field, and the problem."""

from __future__ import annotations


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
