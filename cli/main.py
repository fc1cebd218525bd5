"""The ``detloop`` command: one Typer app, each command group added explicitly below.

Errors meant for users (any :class:`~detloop.errors.DetloopError`, configuration errors included) are
printed as one line and exit with status 2.
"""

from __future__ import annotations

import json
import sys

import typer

from cli import bench, dataset, drift, models, rounds, run, select, stack, world
from cli.common import ConfigOpt, get_settings
from detloop.errors import DetloopError

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

config_app = typer.Typer(help="Show and check the resolved configuration.", no_args_is_help=True)


@config_app.command("show")
def config_show(config: ConfigOpt = None, as_json: bool = typer.Option(False, "--json", help="JSON, not YAML.")) -> None:
    """Print the resolved config (file + DETLOOP_* environment overrides), secrets masked."""
    import yaml

    data = get_settings(config).masked_dump()
    typer.echo(json.dumps(data, indent=2) if as_json else yaml.safe_dump(data, sort_keys=False))


@config_app.command("check")
def config_check(config: ConfigOpt = None) -> None:
    """Validate the config; exit 2 with one line per bad field. Valid settings that switch a feature off for good
    (a control arm too small for live accuracy, say) are printed as notes."""
    from tasks.live_accuracy import calibration_advisory

    s = get_settings(config)
    typer.echo(f"ok: {s.source}")
    for note in filter(None, [calibration_advisory(s)]):
        typer.secho(f"note: {note}", fg=typer.colors.YELLOW)


app.add_typer(config_app, name="config")
app.add_typer(stack.stack_app, name="stack")
app.add_typer(world.world_app, name="world")
app.add_typer(dataset.dataset_app, name="dataset")
app.add_typer(select.select_app, name="select")
app.add_typer(models.models_app)
app.add_typer(models.champion_app, name="champion")
app.add_typer(rounds.rounds_app, name="rounds")
app.add_typer(rounds.annotate_app, name="annotate")
app.add_typer(run.run_app, name="run")
app.add_typer(drift.drift_app, name="drift")
app.add_typer(run.loop_app)
app.command("bench", context_settings=bench.PASS_THROUGH)(bench.bench)
app.command("soak", context_settings=bench.PASS_THROUGH)(bench.soak)


def main() -> None:
    """Entry point with user-facing error handling."""
    try:
        app()
    except DetloopError as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
