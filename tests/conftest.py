"""Session-wide test environment.

Prefect reads ``PREFECT_API_URL`` when it is first imported, and test modules import it at collection
time (before any fixture runs): point every client at the test stack's servers here, once, before
anything is collected. No work is done: only environment variables are set (the stack itself is
started by ``tests/integration/conftest.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

_REPO = Path(__file__).resolve().parents[1]
_CFG = yaml.safe_load((_REPO / "configs" / "test.yaml").read_text())


def _shift_ports(offset: int) -> None:
    """``DETLOOP_TEST_PORT_OFFSET=N``: a second test stack beside the first (ports + N, its own data dir), so
    two checkouts can run their integration tests at once. Every setting is passed as an environment override,
    which every ``load_settings`` of the session (and of the flows it runs in-process) picks up."""
    ports = {k: int(v) + offset for k, v in _CFG["stack"]["ports"].items()}
    env = {f"DETLOOP_STACK__PORTS__{k.upper()}": str(v) for k, v in ports.items()}
    env.update({
        "DETLOOP_S3__ENDPOINT_URL": f"http://127.0.0.1:{ports['s3']}",
        "DETLOOP_MLFLOW__TRACKING_URI": f"http://127.0.0.1:{ports['mlflow']}",
        "DETLOOP_LABEL_STUDIO__URL": f"http://127.0.0.1:{ports['label_studio']}",
        "DETLOOP_PREFECT__API_URL": f"http://127.0.0.1:{ports['prefect']}/api",
        "DETLOOP_DATA_DIR": str(_REPO / f".detloop-test-{offset}"),
    })
    for k, v in env.items():
        os.environ.setdefault(k, v)
    _CFG["prefect"]["api_url"] = env["DETLOOP_PREFECT__API_URL"]
    _CFG["mlflow"]["tracking_uri"] = env["DETLOOP_MLFLOW__TRACKING_URI"]


if os.environ.get("DETLOOP_TEST_PORT_OFFSET"):
    _shift_ports(int(os.environ["DETLOOP_TEST_PORT_OFFSET"]))

os.environ.setdefault("DETLOOP_CONFIG", str(_REPO / "configs" / "test.yaml"))
os.environ.setdefault("PREFECT_API_URL", _CFG["prefect"]["api_url"])
os.environ.setdefault("MLFLOW_TRACKING_URI", _CFG["mlflow"]["tracking_uri"])
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")
