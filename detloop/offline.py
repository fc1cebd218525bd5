"""Keep every process of detloop on this machine: all telemetry / update-check switches in one place.

``offline_env(settings)`` returns the variables; ``apply_offline_env`` sets them in ``os.environ``
(called by the CLI entry point and by subprocesses' launchers, never at import time).
"""

from __future__ import annotations

import os
from pathlib import Path

from detloop.localfs import copy_file
from detloop.settings import Settings

# Variables that switch off outbound calls of the packages detloop runs.
OFFLINE_ENV: dict[str, str] = {
    # Ultralytics: no hub / GitHub / font probes at import
    "YOLO_OFFLINE": "1",
    # Prefect
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_UI_SHOW_PROMOTIONAL_CONTENT": "false",
    # MLflow
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    # Label Studio server
    "SENTRY_DSN": "",
    "FRONTEND_SENTRY_DSN": "",
    "LATEST_VERSION_CHECK": "false",
    "COLLECT_ANALYTICS": "false",
    # Hugging Face / torch hubs, in case a dependency looks
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}


def yolo_config_dir(settings: Settings) -> Path:
    return settings.data_dir / "ultralytics"


def offline_env(settings: Settings) -> dict[str, str]:
    env = dict(OFFLINE_ENV)
    env["YOLO_CONFIG_DIR"] = str(yolo_config_dir(settings))
    return env


def ensure_ultralytics_fonts(settings: Settings) -> None:
    """Ultralytics' ``check_font('Arial.ttf')`` downloads a font on every train/val unless one is there.

    Copy matplotlib's DejaVuSans into ``$YOLO_CONFIG_DIR/Ultralytics`` (and the config dir itself) under
    the names it looks for.
    """
    import matplotlib

    src = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    base = yolo_config_dir(settings)
    for d in (base, base / "Ultralytics"):
        d.mkdir(parents=True, exist_ok=True)
        for name in ("Arial.ttf", "Arial.Unicode.ttf"):
            if not (d / name).exists():
                copy_file(src, d / name)  # whole or absent: a half-copied font would break every training


def apply_offline_env(settings: Settings) -> None:
    for k, v in offline_env(settings).items():
        os.environ.setdefault(k, v)
