"""The flow-logic tier: the real Prefect flows on a temporary Prefect server (``prefect_test_harness``),
with the in-memory fakes of :mod:`tests.fakes` in place of S3, Label Studio and MLflow.

These tests check how the flows compose the tasks (rounds, resume, skip, retries, aliases); the clients
and the services themselves are tested against the real stack in ``tests/integration``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="package", autouse=True)
def prefect_server() -> Iterator[None]:
    """A temporary Prefect server for this package only (the integration tests after it use the test stack's)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def config(tmp_path: Path) -> str:
    """The test config with its own data dir and immediate retries (the policy is what is tested, not the wait)."""
    data = yaml.safe_load((REPO / "configs" / "test.yaml").read_text())
    data["data_dir"] = str(tmp_path / "data")
    data["prefect"]["retries"] = 2
    data["prefect"]["retry_delays_seconds"] = [0]
    p = tmp_path / "config.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """One fake bundle that every flow run of the test gets from ``Clients.from_settings``."""
    from detloop.clients import Clients
    from tests.fakes import fake_clients

    bundle = fake_clients("detloop-detector", tmp_path / "registry")
    monkeypatch.setattr(Clients, "from_settings", classmethod(lambda cls, settings: bundle))
    return bundle
