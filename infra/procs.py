"""Process bookkeeping for the local stack: pid files, port owners, detached spawn, group stop.

Everything here is generic (no knowledge of SeaweedFS, MLflow, ...). A pid file is JSON holding the pid,
the process' start time and the argv we launched, so a recycled pid is never mistaken for one of ours: a pid
file *matches* a live process only when the start time is equal and our argv (minus the interpreter, which a
shebang may rewrite) is a contiguous part of the process' command line.

The start time compared is, on Linux, the kernel's start time in clock ticks since boot (``/proc/<pid>/stat``):
``psutil.Process.create_time`` is that plus the boot time derived from the wall clock, so it moves when the clock
is stepped (NTP, a VM resumed), and every service of a running stack would look like a stranger holding its own
port. Records written before the ticks were kept, and other systems, compare ``create_time``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from detloop.errors import DetloopError

CREATE_TIME_TOL_S = 0.05


class StackError(DetloopError):
    """A stack operation failed in a way the user can act on (port taken, timeout, ...)."""


# --------------------------------------------------------------------------------------------
# Pid files
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PidRecord:
    """What ``up`` remembers about a process it started.

    Attributes:
        service: service name (``s3``, ``mlflow``, ...).
        pid: process id (also its process-group id: every service runs in its own session).
        create_time: ``psutil.Process.create_time()`` of that pid, seconds since the epoch.
        argv: the command we launched.
        start_ticks: its start in clock ticks since boot (Linux; None elsewhere): unmoved by clock steps.
    """

    service: str
    pid: int
    create_time: float
    argv: tuple[str, ...]
    start_ticks: int | None = None


def start_ticks(pid: int) -> int | None:
    """The start of ``pid`` in clock ticks since boot (field 22 of ``/proc/<pid>/stat``); None when unavailable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[19])  # fields after "(comm)" start at field 3
    except (OSError, ValueError, IndexError):
        return None


def write_pid_file(path: Path, record: PidRecord) -> None:
    """Write ``record`` atomically (write to a temp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    data = asdict(record)
    data["argv"] = list(record.argv)
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def read_pid_file(path: Path) -> PidRecord | None:
    """The record in ``path``; None when the file is missing or unreadable (a torn or foreign file)."""
    try:
        data = json.loads(path.read_text())
        return PidRecord(
            service=str(data["service"]),
            pid=int(data["pid"]),
            create_time=float(data["create_time"]),
            argv=tuple(str(a) for a in data["argv"]),
            start_ticks=int(data["start_ticks"]) if data.get("start_ticks") is not None else None,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _is_sublist(needle: Sequence[str], hay: Sequence[str]) -> bool:
    n = len(needle)
    if n == 0:
        return True
    return any(list(hay[i : i + n]) == list(needle) for i in range(len(hay) - n + 1))


def cmdline_matches(argv: Sequence[str], cmdline: Sequence[str]) -> bool:
    """True when a live process' ``cmdline`` is the one we launched with ``argv``.

    A script with a shebang runs as ``[interpreter, script, args...]``, so the check is: ``argv[1:]``
    appears contiguously in ``cmdline`` and the program's basename appears in one of its elements.
    """
    if not argv or not cmdline:
        return False
    prog = Path(argv[0]).name
    return _is_sublist(argv[1:], cmdline) and any(Path(c).name == prog for c in cmdline)


def record_matches(record: PidRecord, create_time: float, cmdline: Sequence[str], ticks: int | None = None) -> bool:
    """True when (start time, ``cmdline``) of a live pid belong to the process ``record`` describes: the start in
    clock ticks since boot when both are known, else ``create_time``."""
    if record.start_ticks is not None and ticks is not None:
        same_start = record.start_ticks == ticks
    else:
        same_start = abs(create_time - record.create_time) <= CREATE_TIME_TOL_S
    return same_start and cmdline_matches(record.argv, cmdline)


def live_process(record: PidRecord) -> bool:
    """True when ``record.pid`` is alive, not a zombie, and is still the process we started."""
    import psutil

    try:
        p = psutil.Process(record.pid)
        for _ in range(20):
            if p.status() == psutil.STATUS_ZOMBIE:
                return False
            cmdline = p.cmdline()
            if cmdline:
                return record_matches(record, p.create_time(), cmdline, start_ticks(record.pid))
            time.sleep(0.05)  # /proc/<pid>/cmdline is briefly empty right after a process starts
        return False
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


# --------------------------------------------------------------------------------------------
# Ports
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PortOwner:
    pid: int | None
    name: str | None


def port_conflict_message(port: int, label: str, owner: PortOwner | None) -> str:
    """One line for a user: ``port 8333 (S3) is taken by pid 1234 (python)``."""
    if owner is None or owner.pid is None:
        return f"port {port} ({label}) is already in use (owner not visible to this user)"
    return f"port {port} ({label}) is taken by pid {owner.pid} ({owner.name or '?'})"


def port_bindable(host: str, port: int) -> bool:
    """True when a listening socket can be bound to ``host:port`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as err:
            if err.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def port_owner(port: int) -> PortOwner | None:
    """The process listening on ``port`` (any local address), or None if nobody listens."""
    import psutil

    try:
        conns = psutil.net_connections(kind="inet")
    except psutil.AccessDenied:
        return PortOwner(None, None)
    for c in conns:
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN:
            name = None
            if c.pid is not None:
                with contextlib.suppress(psutil.Error):
                    name = psutil.Process(c.pid).name()
            return PortOwner(c.pid, name)
    return None


def check_ports_free(host: str, ports: Mapping[str, int], release_s: float = 0.0) -> None:
    """Raise :class:`StackError` naming the first taken port and its owner.

    A port held by no visible process is waited for up to ``release_s``: a service just killed (SIGKILL, OOM)
    keeps its sockets until its last thread has exited, after its group leader already shows as gone (seen
    once in CI: S3 restarted a moment after a kill found 8433 taken by nobody). A port a live process holds
    fails at once.

    Args:
        host: address the service will bind.
        ports: label -> port, e.g. ``{"S3": 8333, "S3 gRPC": 18333}``.
        release_s: how long to wait for a port whose owner is not visible.
    """
    deadline = time.monotonic() + release_s
    for label, port in ports.items():
        while not port_bindable(host, port):
            owner = port_owner(port)
            if (owner is not None and owner.pid is not None) or time.monotonic() >= deadline:
                raise StackError(port_conflict_message(port, label, owner))
            time.sleep(0.2)


# --------------------------------------------------------------------------------------------
# Spawn / stop
# --------------------------------------------------------------------------------------------
def spawn_detached(
    service: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path, pid_path: Path, cwd: Path
) -> PidRecord:
    """Start ``argv`` in its own session (survives the caller), stdout+stderr appended to ``log_path``.

    Returns:
        The record also written to ``pid_path``.
    """
    import psutil

    log_path.parent.mkdir(parents=True, exist_ok=True)
    cwd.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n==== {time.strftime('%Y-%m-%dT%H:%M:%S%z')} start {service} ====\n".encode())
        log.flush()
        try:
            proc = subprocess.Popen(
                list(argv),
                env=dict(env),
                cwd=str(cwd),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as err:
            raise StackError(f"{service}: cannot start {argv[0]}: {err}") from err
    try:
        ctime = psutil.Process(proc.pid).create_time()
    except psutil.NoSuchProcess:
        ctime = time.time()
    record = PidRecord(service=service, pid=proc.pid, create_time=ctime, argv=tuple(argv),
                       start_ticks=start_ticks(proc.pid))
    write_pid_file(pid_path, record)
    return record


def _reap(pid: int) -> None:
    """Collect ``pid`` if it is our own (zombie) child; ignore it otherwise."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def group_members(pgid: int) -> list[int]:
    """Pids (not zombies) whose process group is ``pgid``."""
    import psutil

    out = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if p.info["status"] == psutil.STATUS_ZOMBIE:
                _reap(p.pid)
                continue
            if os.getpgid(p.pid) == pgid:
                out.append(p.pid)
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return out


def stop_group(record: PidRecord, term_timeout_s: float = 10.0, kill_timeout_s: float = 10.0) -> str:
    """Stop the process group of ``record`` (SIGTERM, then SIGKILL) and check that it is gone.

    The leader is verified with :func:`live_process` before any signal, so a recycled pid is never
    signalled. Returns how it ended: ``"not running"``, ``"terminated"`` or ``"killed"``.

    Raises:
        StackError: when processes of the group are still alive after SIGKILL.
    """
    if not live_process(record):
        _reap(record.pid)
        return "not running"
    pgid = record.pid
    for sig, timeout, outcome in ((signal.SIGTERM, term_timeout_s, "terminated"), (signal.SIGKILL, kill_timeout_s, "killed")):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _reap(record.pid)
            if not group_members(pgid):
                return outcome
            time.sleep(0.2)
    left = group_members(pgid)
    raise StackError(f"{record.service}: process group {pgid} still has pids {left} after SIGKILL")


def wait_until(check: Callable[[], bool], timeout_s: float, interval_s: float = 0.5) -> bool:
    """Poll ``check()`` until it returns True or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


def read_tail(path: Path, start: int = 0, cap: int = 1_000_000) -> str:
    """A text file from byte ``start`` on, at most its last ``cap`` bytes ("" when missing)."""
    if not path.is_file():
        return ""
    with open(path, "rb") as f:
        f.seek(max(start, f.seek(0, os.SEEK_END) - cap))
        return f.read().decode(errors="replace")


def tail_lines(path: Path, n: int) -> list[str]:
    """The last ``n`` lines of a text file (empty when missing); reads at most the last ~1 MB."""
    return read_tail(path).splitlines()[-n:] if n > 0 else []


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (``flock``) held for the ``with`` block: serialises concurrent ``up``/``down``."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
