"""What every command group shares: the ``--config`` option, settings loading, one-line error parsing.

Heavy libraries are imported inside commands only, so ``detloop --help`` stays fast.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from detloop.errors import DataError
from detloop.settings import Settings

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Config YAML (default $DETLOOP_CONFIG or configs/local.yaml).",
                 envvar="DETLOOP_CONFIG"),
]


def get_settings(config: Path | None = None, overrides: dict | None = None) -> Settings:  # type: ignore[type-arg]
    """Settings for a command: file + environment (+ ``overrides``), secret blocks filled, libraries offline."""
    from detloop.offline import apply_offline_env
    from detloop.settings import load_settings

    settings = load_settings(config, overrides=overrides)
    if settings.s3.secret_block or settings.label_studio.secret_block:
        from flows.common import load_secret_block

        settings.fill_secret_blocks(load_secret_block)
    apply_offline_env(settings)
    return settings


def parse_now(now: str | None, option: str = "--now") -> datetime:
    """An ISO date or datetime (naive = UTC), or the current time when None."""
    if now is None:
        return datetime.now(UTC)
    try:
        dt = datetime.fromisoformat(now)
    except ValueError as err:
        raise DataError(f"{option}: expected an ISO date or datetime like 2026-01-17T09:00, got {now!r}") from err
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def use_prefect(settings: Settings, config: Path | None = None) -> None:
    """Point Prefect at the config's server (flows run in this process are tracked there) and pass the config
    on to them (``DETLOOP_CONFIG``)."""
    import os

    os.environ.setdefault("PREFECT_API_URL", settings.prefect.api_url)
    if config is not None:
        os.environ["DETLOOP_CONFIG"] = str(config)
