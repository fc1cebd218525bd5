"""The ``detloop`` command line (Typer).

Each area registers its own sub-app here; heavy libraries are imported inside commands only, so
``detloop --help`` is fast. Errors meant for users (:class:`DetloopError`, :class:`ConfigError`)
are printed as one line and exit with status 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from detloop.errors import DetloopError
from detloop.settings import ConfigError, Settings, load_settings

app = typer.Typer(
    name="detloop",
    help=(
        "detloop keeps production object detectors good after they ship: sample production frames, "
        "select hard examples, label them in Label Studio, retrain, evaluate, promote through the MLflow "
        "registry, watch for drift. Run `detloop stack up` first for the embedded local stack."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Config YAML (default $DETLOOP_CONFIG or configs/local.yaml).",
                 envvar="DETLOOP_CONFIG"),
]


def get_settings(config: Path | None = None) -> Settings:
    """Load settings for a command and switch every library to offline mode."""
    from detloop.offline import apply_offline_env

    settings = load_settings(config)
    apply_offline_env(settings)
    return settings


# ---- config -----------------------------------------------------------------------------------
config_app = typer.Typer(help="Show and check the resolved configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("show")
def config_show(config: ConfigOpt = None, as_json: bool = typer.Option(False, "--json", help="JSON, not YAML.")) -> None:
    """Print the resolved config (file + DETLOOP_* environment overrides), secrets masked."""
    import yaml

    data = get_settings(config).masked_dump()
    typer.echo(json.dumps(data, indent=2) if as_json else yaml.safe_dump(data, sort_keys=False))


@config_app.command("check")
def config_check(config: ConfigOpt = None) -> None:
    """Validate the config; exit 2 with one line per bad field."""
    s = get_settings(config)
    typer.echo(f"ok: {s.source}")


def _register_subapps() -> None:
    """Attach the sub-apps of each area (imports are light: commands import heavy code lazily)."""
    import importlib

    for module, attr, name in [
        ("infra.cli", "stack_app", "stack"),
        ("detloop.world.cli", "world_app", "world"),
        ("detloop.datasets_cli", "dataset_app", "dataset"),
        ("detloop.select_cli", "select_app", "select"),
        ("detloop.models_cli", "models_app", None),
        ("detloop.models_cli", "champion_app", "champion"),
        ("detloop.rounds_cli", "rounds_app", "rounds"),
        ("detloop.rounds_cli", "annotate_app", "annotate"),
        ("benchmarks.cli", "bench_app", "bench"),
    ]:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name and module.startswith(err.name):
                continue  # area not built yet
            raise
        sub = getattr(mod, attr)
        app.add_typer(sub, name=name)


_register_subapps()

from detloop import flows_cli as _flows_cli  # noqa: E402, F401  (adds serve / bootstrap / run / demo)


def main() -> None:
    """Entry point with user-facing error handling."""
    try:
        app()
    except (DetloopError, ConfigError) as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
