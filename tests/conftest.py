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

os.environ.setdefault("DETLOOP_CONFIG", str(_REPO / "configs" / "test.yaml"))
os.environ.setdefault("PREFECT_API_URL", _CFG["prefect"]["api_url"])
os.environ.setdefault("MLFLOW_TRACKING_URI", _CFG["mlflow"]["tracking_uri"])
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")
