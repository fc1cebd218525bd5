"""What went wrong, said so that the caller knows what to do next.

The CLI prints any :class:`DetloopError` as one line (exit 2), never a traceback. The classes say
what happened, and so whether to retry:

=======================  ====================================================  ==========================
class                    meaning                                               what callers do
=======================  ====================================================  ==========================
:class:`ServiceUnavailable`  the service did not answer, timed out, or said        the flows retry it (the only
                         5xx / 429: it may work in a moment                    retry layer: Prefect tasks)
:class:`ServiceRejected`     the service answered 4xx: this request is wrong       never retried; fix the
                         (bad token, bad payload, missing permission)          request or the config
:class:`NotFound`        what was asked for does not exist (an S3 key, an      branch on it (absent is a
                         alias, a round)                                       normal answer)
:class:`LockBusy`        someone else holds the lock this work needs           wait, or say who holds it
:class:`DataError`       the input is bad (undecodable frame, unknown label)   quarantine it with the reason,
                                                                               or stop with one line
:class:`ConfigError`     the configuration is invalid                          one line per bad field
=======================  ====================================================  ==========================

Clients (``detloop.clients``) translate library exceptions into these by *type and status code*,
never by matching message text; nothing above the clients sees a botocore, httpx or MLflow exception.
"""

from __future__ import annotations


class DetloopError(Exception):
    """Base class of errors whose message is meant for the user."""


class ConfigError(DetloopError, ValueError):
    """A configuration problem, phrased for a user: one line per bad field."""


class ServiceError(DetloopError):
    """A call to a service (S3, MLflow, Label Studio, Prefect) failed; the message names the service and URL.

    Use the subclasses: :class:`ServiceUnavailable` (retryable) or :class:`ServiceRejected` (not).

    Attributes:
        service: ``"S3"``, ``"MLflow"``, ``"Label Studio"`` or ``"Prefect"``.
        url: the service's base URL (never with credentials).
        status: HTTP status when the service answered, else None.
    """

    def __init__(self, message: str, *, service: str | None = None, url: str | None = None,
                 status: int | None = None):
        super().__init__(message)
        self.service = service
        self.url = url
        self.status = status


class ServiceUnavailable(ServiceError):
    """Connection refused or reset, timeout, 5xx or 429: the same call may succeed later (retryable)."""


class ServiceRejected(ServiceError):
    """The service answered 4xx (other than not-found): the request itself is wrong; retrying cannot help."""


class NotFound(DetloopError):
    """The object, alias or record asked for does not exist."""


class LockBusy(DetloopError):
    """A lock that this work needs is held by someone else (the message says who and since when)."""


class DataError(DetloopError):
    """Bad input data: counts, names, what was expected."""


def is_retryable(exc: BaseException | None) -> bool:
    """True only for :class:`ServiceUnavailable` (the one condition the flows retry on)."""
    return isinstance(exc, ServiceUnavailable)


def http_error(service: str, url: str, status: int, what: str, reason: str = "") -> ServiceError | NotFound:
    """The error for an HTTP answer ``status`` (>= 400) from ``service`` at ``url`` while doing ``what``.

    404 -> :class:`NotFound`; 408, 425, 429 and 5xx -> :class:`ServiceUnavailable`; other 4xx ->
    :class:`ServiceRejected`. ``reason`` (the server's explanation) is appended, cut to 300 characters.
    """
    why = f": {' '.join(str(reason).split())[:300]}" if reason else ""
    msg = f"{service} at {url}: HTTP {status} on {what}{why}"
    if status == 404:
        return NotFound(msg)
    if status >= 500 or status in (408, 425, 429):
        return ServiceUnavailable(msg, service=service, url=url, status=status)
    return ServiceRejected(msg, service=service, url=url, status=status)


def unreachable(service: str, url: str, what: str, err: BaseException) -> ServiceUnavailable:
    """The error for a connection failure or timeout (``err``) reaching ``service`` at ``url``."""
    return ServiceUnavailable(
        f"{service} at {url} is not reachable ({what}): {type(err).__name__}; is the stack up? (`detloop stack up`)",
        service=service, url=url,
    )
