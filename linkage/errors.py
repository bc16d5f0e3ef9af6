"""Errors a user sees. Each names what to fix: the file, and where known the column."""

from __future__ import annotations


class LinkageError(Exception):
    """Base of every error linkage reports as a one-line reason (CLI exit code 2)."""

    exit_code = 2


class InputError(LinkageError):
    """The input cannot be used as a whole: a table or a required column is missing, a file is corrupt."""


class ConfigError(LinkageError):
    """Settings file or options are invalid."""


class StoreError(LinkageError):
    """The graph store (Neo4j) refused or could not be reached."""

    exit_code = 3


class LockHeldError(LinkageError):
    """Another rebuild holds the lock (EX_TEMPFAIL, so cron retries later)."""

    exit_code = 75
