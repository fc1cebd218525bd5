"""Integration tests run against the REAL local test stack (``configs/test.yaml``: ``.detloop-test``, ports +100).

The session fixture :func:`stack_settings` brings the stack up once (idempotent: a running stack is reused,
also one started by another engineer or session) and stops it at the end only when this session started
it and ``DETLOOP_TEST_KEEP_STACK`` is not set, and then only the services this session started. Every test in this folder is marked ``integration``.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
TEST_CONFIG = REPO_ROOT / "configs" / "test.yaml"
_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.integration)


class _EarlyStart:
    """The stack brought up in a background thread as soon as collection ends, so its first-time work (Label
    Studio's venv, migrations, health waits: minutes on a fresh machine) overlaps the unit and flow tiers,
    which ``make test`` runs first. The session fixture joins it; an error it met is raised there."""

    thread: threading.Thread | None = None
    result: Any = None
    error: BaseException | None = None


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly or os.environ.get("DETLOOP_TEST_NO_EARLY_STACK"):
        return
    if not any(_HERE in Path(str(i.path)).resolve().parents for i in session.items):
        return

    def start() -> None:
        from detloop.offline import apply_offline_env
        from infra.stack import ensure_up

        try:
            settings = _test_settings()
            apply_offline_env(settings)
            _EarlyStart.result = ensure_up(settings, log=lambda m: print(f"[stack, early] {m}", file=sys.stderr))
        except BaseException as e:
            _EarlyStart.error = e

    _EarlyStart.thread = threading.Thread(target=start, name="detloop-early-stack", daemon=True)
    _EarlyStart.thread.start()


def _test_settings():  # type: ignore[no-untyped-def]
    """Settings of the test stack; a relative data dir is anchored at the repo root, not the cwd."""
    from detloop.settings import load_settings

    raw = yaml.safe_load(TEST_CONFIG.read_text()) or {}
    data_dir = Path(os.environ.get("DETLOOP_DATA_DIR") or raw.get("data_dir", ".detloop-test"))
    if not data_dir.is_absolute():
        data_dir = REPO_ROOT / data_dir
    return load_settings(TEST_CONFIG, overrides={"data_dir": str(data_dir)})


@pytest.fixture(scope="session")
def stack_settings() -> Iterator:  # type: ignore[type-arg]
    """``Settings`` of the running test stack (secrets filled from its ``secrets.env``)."""
    from detloop.offline import apply_offline_env
    from infra.stack import client_env, down, ensure_up

    os.environ["DETLOOP_CONFIG"] = str(TEST_CONFIG)
    early = []
    if _EarlyStart.thread is not None:
        _EarlyStart.thread.join()
        if _EarlyStart.error is not None:
            raise _EarlyStart.error
        early = list(_EarlyStart.result.started)
    settings = _test_settings()
    apply_offline_env(settings)
    result = ensure_up(settings, log=lambda m: print(f"[stack] {m}", file=sys.stderr))
    result.started = [*early, *(s for s in result.started if s not in early)]
    os.environ.update(client_env(settings))
    yield settings
    if result.started and not os.environ.get("DETLOOP_TEST_KEEP_STACK"):
        # only what THIS session started (a session that merely restarted the runner leaves the servers up)
        down(settings, log=lambda m: print(f"[stack] {m}", file=sys.stderr), services=tuple(result.started))


# --------------------------------------------------------------------------------------------
# One test that leaves a server down must not fail every test after it
# --------------------------------------------------------------------------------------------
_SERVERS = ("s3", "mlflow", "label-studio", "prefect")
_REVIVED: list[str] = []  # what the guard below found down, and before which test
_LOG_TAIL = 25


def _log_tail(settings: Any, service: str, n: int = _LOG_TAIL) -> list[str]:
    """The last ``n`` lines of the service's log that say something went wrong (Go's E/F levels, panics,
    tracebacks, errors), with the start markers between them; the last plain lines when there are none."""
    import re

    from infra import procs
    from infra.stack import stack_paths

    lines = procs.tail_lines(stack_paths(settings).log(service), 20_000)
    bad = re.compile(r"^(==== |[EF]\d{4} )|panic|fatal|Traceback|Error|error:")
    picked = [line for line in lines if bad.search(line)]
    return (picked or lines)[-n:]


@pytest.fixture(autouse=True)
def _servers_up(request: pytest.FixtureRequest) -> Iterator[None]:
    """Before a test of the stack: every server answers, else it is restarted (and reported at the end).

    Several tests kill a server on purpose and bring it back; if one of them fails to (a bug in the test or in
    ``ensure_up``), the rest of the session would fail on a connection refused that says nothing about them.
    A restart that fails raises here, with the server's log lines, so the cause is in the report.
    """
    if "stack_settings" not in request.fixturenames:
        yield
        return
    from infra.stack import ensure_up, healthy

    s = request.getfixturevalue("stack_settings")
    down = [svc for svc in _SERVERS if not healthy(s, svc)]
    if down:
        for svc in down:
            _REVIVED.append(f"{svc} was down before {request.node.nodeid}; its log ended with:")
            _REVIVED.extend(f"    {line}" for line in _log_tail(s, svc))
        ensure_up(s, log=lambda m: print(f"[stack, revive] {m}", file=sys.stderr))
    yield


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Servers found down between tests, and the S3 log's end when integration tests failed."""
    if _REVIVED:
        terminalreporter.section("test stack: servers restarted between tests")
        for line in _REVIVED:
            terminalreporter.write_line(line)
    failed = [r for key in ("failed", "error") for r in terminalreporter.stats.get(key, [])
              if "tests/integration" in getattr(r, "nodeid", "")]
    if failed:
        try:
            s = _test_settings()
        except Exception:  # a summary must not fail the session
            return
        terminalreporter.section("test stack: the end of the S3 log (starts and errors)")
        for line in _log_tail(s, "s3"):
            terminalreporter.write_line(line)
