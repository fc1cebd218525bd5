"""Fault injection for the local stack (tests and ``detloop bench faults``): kill a service the way a crash
does, and make a client kill one at an exact moment of a flow.

:func:`kill_service` sends SIGKILL to a service's whole process group (no shutdown code runs, as with an OOM
kill or a lost host) and leaves its pid file behind, exactly as a crash would: the next
:func:`infra.stack.ensure_up` (``detloop stack up``) finds it stale and starts the service again.

:func:`kill_on_call` wraps a client (S3, Label Studio, MLflow) so that its n-th call of a method kills a
service first (or right after the call returned: an answer that never arrived).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from detloop.settings import Settings
from infra import procs
from infra.procs import StackError
from infra.stack import SERVICES, stack_paths


def kill_service(settings: Settings, service: str, timeout_s: float = 10.0) -> int:
    """SIGKILL the process group of ``service`` and wait until it is gone; returns the group's pid.

    Raises:
        StackError: unknown service, not running (no live pid record), or still alive after ``timeout_s``.
    """
    if service not in SERVICES:
        raise StackError(f"unknown service {service!r}; known: {', '.join(SERVICES)}")
    rec = procs.read_pid_file(stack_paths(settings).pid(service))
    if rec is None or not procs.live_process(rec):
        raise StackError(f"{service} is not running (no live pid file under {stack_paths(settings).pids})")
    os.killpg(rec.pid, signal.SIGKILL)
    if not procs.wait_until(lambda: not procs.group_members(rec.pid), timeout_s, 0.05):
        raise StackError(f"{service}: process group {rec.pid} still alive {timeout_s} s after SIGKILL")
    return rec.pid


@dataclass
class Injection:
    """One planned kill and what became of it: calls seen, when it fired (monotonic seconds), a log.

    Several proxies (one per client bundle a flow builds) may share one injection: it fires once.
    """

    service: str
    method: str
    calls: int = 0
    killed_at: float | None = None
    log: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class _Faulty:
    """A proxy of ``target``: every attribute is the target's, except ``method``, whose ``on_call``-th matching
    call runs ``kill`` (before the call, or after it returned)."""

    def __init__(self, target: Any, method: str, kill: Callable[[], None], on_call: int, after: bool,
                 when: Callable[..., bool] | None, injection: Injection):
        self._target, self._method, self._kill = target, method, kill
        self._on_call, self._after, self._when, self.injection = on_call, after, when, injection

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if name != self._method:
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            inj = self.injection
            with inj.lock:
                match = self._when is None or self._when(*args, **kwargs)
                inj.calls += int(match)
                fire = match and inj.calls == self._on_call and inj.killed_at is None
                if fire:
                    inj.killed_at = -1.0  # claimed: a concurrent call does not fire again
            if fire and not self._after:
                self._fire()
            result = value(*args, **kwargs)
            if fire and self._after:
                self._fire()
            return result

        return call

    def _fire(self) -> None:
        self.injection.log.append(f"kill {self.injection.service} at call {self.injection.calls} of {self._method} "
                                  f"({'after' if self._after else 'before'} it)")
        self._kill()
        self.injection.killed_at = time.monotonic()


def kill_on_call(target: Any, method: str, kill: Callable[[], None], on_call: int = 1, after: bool = False,
                 when: Callable[..., bool] | None = None, injection: Injection | None = None,
                 service: str = "") -> Any:
    """``target`` whose ``method`` runs ``kill`` on its ``on_call``-th call (counting only calls ``when`` accepts).

    Args:
        kill: e.g. ``lambda: kill_service(settings, "s3")``, or a SIGKILL of the calling process itself.
        after: kill once the call has returned (the work was done but its caller never learns it, as when
            the server dies before its answer arrives); default: kill just before the call is sent.
        when: ``when(*args, **kwargs) -> bool`` selects the calls that count (e.g. only ``set_alias("champion", ...)``).
        injection: share one injection between several proxies (it fires once).

    Returns:
        The proxy; its ``injection`` attribute records what happened.
    """
    inj = injection or Injection(service, method)
    return _Faulty(target, method, kill, on_call, after, when, inj)
