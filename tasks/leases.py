"""Leases in the object store: a lock that holds wherever the flows run (any host that reaches S3).

A lease is one small JSON object, ``locks/<name>.json`` in the data bucket, created with a conditional
write (S3 ``PutObject`` with ``If-None-Match: *``): of several writers, exactly one succeeds and holds
the lease; the others get 412 and read who holds it. The holder renews it (``If-Match: <its ETag>``)
every ``locks.lease_seconds / 4`` from a background thread and deletes it (``If-Match``) on release.

A holder that crashes (killed pod, SIGKILL, lost host) stops renewing: once the object is older than
its ``ttl_s`` *by the store's clock* (the response's ``Date`` minus the object's ``Last-Modified``, so
the hosts' clocks do not matter), the next caller replaces it with ``If-Match: <the stale ETag>``:
again exactly one taker wins. A holder that could not renew within its TTL (the store unreachable for
longer) has *lost* the lease: :meth:`Lease.check` raises :class:`~detloop.errors.LockBusy`, and callers
check before a side effect that must happen once (registering, moving an alias, appending the log).

AWS S3 and the local stack's SeaweedFS (4.48, measured: 60 races of 8 writers, one winner each) honour
``If-None-Match`` / ``If-Match`` on PUT and ``If-Match`` on DELETE. Prefect's global concurrency limits
were the alternative; their leases live in the Prefect server's memory by default, so a slot held across
a server restart stays taken for good (measured: see docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from detloop.errors import LockBusy, NotFound, ServiceError, ServiceUnavailable

LOCK_PREFIX = "locks/"
log = logging.getLogger(__name__)


def lease_key(name: str) -> str:
    """``locks/<name>.json`` (``name`` is e.g. ``training-<model>``)."""
    return f"{LOCK_PREFIX}{name}.json"


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="seconds")


def holder_info(what: str, ttl_s: float, owner: str) -> dict[str, Any]:
    """The body of a lease: who holds it (host, pid, Prefect flow run when there is one), since when, TTL."""
    now = _now()
    return {
        "owner": owner, "what": what, "host": socket.gethostname(), "pid": os.getpid(),
        "flow_run": os.environ.get("PREFECT__FLOW_RUN_ID") or None, "since": _iso(now), "renewed": _iso(now),
        "ttl_s": float(ttl_s),
    }


def describe(info: dict[str, Any], age_s: float | None = None) -> str:
    """`` by host H pid P (flow run R) since T`` from a lease body, plus when it expires when ``age_s`` is known."""
    who = f" by host {info.get('host', '?')} pid {info.get('pid', '?')}"
    if info.get("flow_run"):
        who += f" (flow run {info['flow_run']})"
    if info.get("since"):
        who += f" since {info['since']}"
    if age_s is not None and info.get("ttl_s") is not None:
        left = max(0.0, float(info["ttl_s"]) - age_s)
        who += f"; its lease expires in {left:.0f} s unless renewed"
    return who


@dataclass
class Lease:
    """A held lease (what :func:`lease` yields). ``lost`` turns True when renewing failed for longer than the TTL
    or another holder replaced it."""

    store: Any
    bucket: str
    key: str
    what: str
    ttl_s: float
    info: dict[str, Any]
    etag: str
    took_over: str | None = None  # describe() of the stale holder it replaced, if any
    lost: bool = False
    _renewed_at: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self) -> None:
        """Raise :class:`LockBusy` when the lease was lost (call before a side effect that must happen once)."""
        if self.lost or time.monotonic() - self._renewed_at > self.ttl_s:
            self.lost = True
            raise LockBusy(f"the lease on {self.what} (s3://{self.bucket}/{self.key}) was lost: it could not be "
                           f"renewed within {self.ttl_s:.0f} s, another holder may have taken it over")

    def renew(self) -> bool:
        """Extend the lease (conditional on our ETag); False when it was lost."""
        with self._lock:
            if self.lost:
                return False
            self.info["renewed"] = _iso(_now())
            try:
                etag = self.store.put_bytes_if_match(self.bucket, self.key, _body(self.info), self.etag,
                                                     content_type="application/json")
            except ServiceUnavailable as err:  # keep trying until the TTL runs out
                log.warning("cannot renew the lease on %s: %s", self.what, err)
                if time.monotonic() - self._renewed_at > self.ttl_s:
                    self.lost = True
                return not self.lost
            except (ServiceError, NotFound) as err:  # refused (permissions, the bucket gone): it will not get better
                log.warning("lost the lease on %s: renewal refused: %s", self.what, err)
                self.lost = True
                return False
            if etag is None:
                self.lost = True
                log.warning("lost the lease on %s (s3://%s/%s): replaced by another holder",
                            self.what, self.bucket, self.key)
                return False
            self.etag = etag
            self._renewed_at = time.monotonic()
            return True

    def release(self) -> None:
        """Delete the lease if it still is ours (a failure is logged: the lease then expires on its own)."""
        with self._lock:
            if self.lost:
                return
            try:
                self.store.delete_if_match(self.bucket, self.key, self.etag)
            except (ServiceError, NotFound) as err:  # never hides what the guarded work raised
                log.warning("could not release the lease on %s (it expires in %.0f s): %s", self.what, self.ttl_s, err)
            self.lost = True


def _body(info: dict[str, Any]) -> bytes:
    return json.dumps(info, sort_keys=True).encode()


def _holder(body: bytes, default_ttl: float) -> tuple[dict[str, Any], float]:
    """A lease object's holder info and TTL; an unreadable lease object holds nothing (TTL 0)."""
    try:
        cur = json.loads(body)
        return cur, float(cur.get("ttl_s", default_ttl))
    except (ValueError, TypeError, AttributeError):
        return {}, 0.0


def try_acquire(store: Any, bucket: str, key: str, what: str, ttl_s: float) -> tuple[Lease | None, str]:
    """One attempt: create the lease, or replace it when its holder let it expire.

    Returns:
        ``(lease, "")`` when acquired, else ``(None, describe(current holder))``.
    """
    info = holder_info(what, ttl_s, uuid.uuid4().hex)
    etag = store.put_bytes_if_absent(bucket, key, _body(info), content_type="application/json")
    if etag is not None:
        return Lease(store, bucket, key, what, ttl_s, info, etag), ""
    try:
        body, cur_etag, age_s = store.get_bytes_with_age(bucket, key)
    except NotFound:  # released in between: the next attempt creates it
        return None, ""
    cur, cur_ttl = _holder(body, ttl_s)
    if age_s <= cur_ttl:
        return None, describe(cur, age_s)
    etag = store.put_bytes_if_match(bucket, key, _body(info), cur_etag, content_type="application/json")
    if etag is None:  # another caller renewed or took it over first
        return None, describe(cur, age_s)
    stale = describe(cur) + f" (not renewed for {age_s:.0f} s, TTL {cur_ttl:.0f} s)"
    log.warning("took over the lease on %s from a holder that stopped renewing it:%s", what, stale)
    return Lease(store, bucket, key, what, ttl_s, info, etag, took_over=stale), ""


def is_held(store: Any, bucket: str, name: str) -> bool:
    """Whether lease ``name`` is held now: it exists and was renewed within its TTL (a holder that died stops
    renewing it, so after the TTL it holds nothing)."""
    try:
        body, _etag, age_s = store.get_bytes_with_age(bucket, lease_key(name))
    except NotFound:
        return False
    return age_s <= _holder(body, 0.0)[1]


@contextlib.contextmanager
def lease(store: Any, bucket: str, name: str, what: str, ttl_s: float, wait_s: float = 0.0,
          poll_s: float = 2.0) -> Iterator[Lease]:
    """Hold the lease ``name`` for the ``with`` block (renewed in the background, released at the end).

    Args:
        store: the object store (:class:`~detloop.clients.protocols.ObjectStore`); ``bucket``: where leases live.
        name: the lease's name (``training-<model>``, ``promotion-<model>``, ``retrain-<round id>``).
        what: how messages name the guarded work (``"training of detloop-detector"``).
        ttl_s: seconds without renewal after which others may take the lease over.
        wait_s: how long to wait for a busy lease (0: fail at once).

    Raises:
        LockBusy: still held by someone else after ``wait_s``; the message says by whom, since when, and
            when the lease expires if its holder stopped.
        ServiceUnavailable: the store is unreachable (the caller's retry policy applies).
    """
    key = lease_key(name)
    deadline = time.monotonic() + wait_s
    while True:
        held, holder = try_acquire(store, bucket, key, what, ttl_s)
        if held is not None:
            break
        if time.monotonic() >= deadline:
            raise LockBusy(f"another {what} is running (lease s3://{bucket}/{key} is held{holder})")
        time.sleep(max(0.05, min(poll_s, deadline - time.monotonic())))
    stop = threading.Event()

    def renew_loop() -> None:
        while not stop.wait(max(0.2, ttl_s / 4)):
            if not held.renew():
                return

    thread = threading.Thread(target=renew_loop, name=f"detloop-lease-{name}", daemon=True)
    thread.start()
    try:
        yield held
    finally:
        stop.set()
        thread.join(timeout=30)
        held.release()

