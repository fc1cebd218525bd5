"""User-facing errors: the CLI prints their message as one line, never a traceback."""

from __future__ import annotations


class DetloopError(Exception):
    """Base class of errors whose message is meant for the user."""


class ServiceError(DetloopError):
    """A service (S3, MLflow, Label Studio, Prefect) is down or refused: the message names its URL."""


class DataError(DetloopError):
    """Bad input data: counts, names, what was expected."""
