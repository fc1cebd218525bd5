"""``detloop drift ...``: the drift report in the terminal, the daily monitor by hand, episodes (list, ack, silence).

``detloop drift report`` runs the same ``drift-report`` subflow as the daily ``drift-monitor`` deployment (in
this process, tracked by the config's Prefect server) and prints the same markdown; its pictures are written
to ``--out``. It changes no episode: ``detloop drift monitor`` (or the deployment) does.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli.common import ConfigOpt, get_settings, use_prefect

if TYPE_CHECKING:
    from tasks.drift import Episode

drift_app = typer.Typer(help="Drift monitoring: report, run the monitor, list / acknowledge / silence episodes, "
                        "check whether tiling a camera helps.",
                        no_args_is_help=True)

AsOf = Annotated[str | None, typer.Option("--as-of", help="ISO date; the days before it are compared (default today).")]
Camera = Annotated[list[str] | None, typer.Option("--camera", help="Only this camera in the details (repeatable).")]
Days = Annotated[int | None, typer.Option("--days", min=1, max=365, help="Days shown (default drift.report_days).")]


@drift_app.command("report")
def report_cmd(
    as_of: AsOf = None,
    camera: Camera = None,
    days: Days = None,
    out: Annotated[Path | None, typer.Option("--out", help="Folder for the pictures (default <data_dir>/drift/).")] = None,
    no_live: Annotated[bool, typer.Option("--no-live", help="Skip live accuracy (no control-frame evaluation).")] = False,
    config: ConfigOpt = None,
) -> None:
    """Compare each day before AS_OF with the champion's reference, per camera; print the report."""
    from detloop.settings import parse_as_of
    from tasks.drift_records import list_episodes

    settings = get_settings(config)
    use_prefect(settings, config)  # before Prefect is imported: it reads PREFECT_API_URL once, on import
    from flows.drift import drift_report, report_markdown, report_pictures

    when = parse_as_of(as_of)
    run = drift_report(when, str(config) if config else None, None, camera or None, days, live=not no_live)
    episodes = [e for e in list_episodes(_store(settings), settings) if e.model_version == run.model_version]
    typer.echo(report_markdown(run, settings, episodes))
    folder = out or settings.data_dir / "drift" / f"report-{run.as_of}"
    for p in report_pictures(run, settings, episodes, folder):
        typer.echo(f"picture: {p}")


@drift_app.command("tiling")
def tiling_cmd(
    camera: Annotated[str, typer.Argument(help="The camera to check (e.g. one the report says shrank).")],
    since: Annotated[str | None, typer.Option("--since", help="Only frames captured on or after this ISO date "
                                              "(e.g. the drift's onset).")] = None,
    variant: Annotated[list[str] | None, typer.Option(
        "--variant", help="whole, tN (N-pixel tiles) or tNf (tiles and the whole frame); repeatable "
        "(default: whole t320 t320f).")] = None,
    dataset_version: Annotated[str | None, typer.Option("--dataset-version",
                                                        help="Labelled version to read (default the newest).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Would tiling CAMERA help? The champion scores the camera's labelled frames it never trained on (golden, val,
    control, and a targeted round's train frames) whole and tiled; prints mAP, cost and one line of advice.

    Run it when the drift report says a camera's objects shrank, before setting model.tiling.cameras.CAMERA.
    """
    import json

    from detloop.settings import parse_as_of

    settings = get_settings(config)
    use_prefect(settings, config)
    from flows.tiling import tiling_check

    r = tiling_check(camera, parse_as_of(since) if since else None, variant or None, dataset_version,
                     str(config) if config else None)
    if as_json:
        typer.echo(json.dumps(r, indent=1, default=str))
        return
    typer.echo(f"champion v{r['champion']} on {r['frames']} frames of {camera} "
               f"({', '.join(f'{k} {n}' for k, n in r['splits'].items())})\n")
    typer.echo(r["markdown"])
    typer.echo(r["advice"])


@drift_app.command("monitor")
def monitor_cmd(
    as_of: AsOf = None,
    days: Days = None,
    deployment: Annotated[bool, typer.Option("--deployment", help="Ask the runner (drift-monitor/check-production-daily).")] = False,
    config: ConfigOpt = None,
) -> None:
    """Run the monitor now: the report, then episodes (a new one is announced once and starts its round)."""
    import json

    from flows.params import DriftParams

    settings = get_settings(config)
    use_prefect(settings, config)
    params = DriftParams(config=str(config) if config else None, as_of=date.fromisoformat(as_of) if as_of else None,
                         days=days)
    if deployment:
        from prefect.deployments import run_deployment

        from flows.common import DEPLOYMENTS

        name = DEPLOYMENTS["drift"]
        fr = run_deployment(name, parameters={"params": params.model_dump(mode="json", exclude_none=True)}, timeout=0)
        typer.echo(f"created flow run {fr.name} ({fr.id}) of {name}; watch it in the Prefect UI")
        return
    from flows.drift import drift_monitor

    typer.echo(json.dumps(drift_monitor(params), indent=1, default=str))


@drift_app.command("episodes")
def episodes_cmd(
    status: Annotated[str | None, typer.Option(help="open | closed")] = None,
    config: ConfigOpt = None,
) -> None:
    """Drift episodes of the configured model, oldest first."""
    from tasks.drift_records import list_episodes

    settings = get_settings(config)
    eps = list_episodes(_store(settings), settings, status)
    if not eps:
        typer.echo("no drift episodes")
        return
    for e in eps:
        typer.echo(episode_line(e))


def episode_line(e: Episode) -> str:
    """One line of ``detloop drift episodes``: id, status, cameras, days, round, acknowledgement, silence, the
    cameras that joined it as companions and those it found later (each in the episode it opened)."""
    ack = f" acked by {e.acked_by}" if e.acked_by else ""
    silence = f" silenced until {e.silenced_until}" if e.silenced_until else ""
    joined = f" joined: {','.join(sorted(e.companions))}" if e.companions else ""
    later = f" found later: {', '.join(f'{c} ({x})' for c, x in sorted(e.joined_late.items()))}" if e.joined_late \
        else ""
    return (f"{e.episode_id:<28} {e.status:<7} {','.join(e.cameras):<14} {e.days[0]}..{e.days[-1]} "
            f"round {e.round_id or '-'}{ack}{silence}{joined}{later}")


@drift_app.command("ack")
def ack_cmd(
    episode: str,
    note: Annotated[str | None, typer.Option(help="Why / what is being done (recorded).")] = None,
    who: Annotated[str | None, typer.Option("--by", help="Who acknowledges (default: your user name).")] = None,
    silence_days: Annotated[int | None, typer.Option("--silence-days", min=1, max=3650,
                                                     help="Also silence its cameras for N days.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Acknowledge an episode (who, when, a note); optionally silence its cameras."""
    import getpass

    from tasks.drift_records import acknowledge

    settings = get_settings(config)
    until = date.today() + timedelta(days=silence_days) if silence_days else None
    e = acknowledge(_store(settings), settings, episode, who or getpass.getuser(), note, until)
    typer.echo(f"{e.episode_id}: acknowledged by {e.acked_by} at {e.acked_at}"
               + (f"; its cameras ({', '.join(e.cameras)}) open no new episode before {e.silenced_until}" if until else ""))


@drift_app.command("silence")
def silence_cmd(
    episode: str,
    until: Annotated[str, typer.Option("--until", help="ISO date: no new episode on its cameras before it.")],
    note: Annotated[str | None, typer.Option(help="Why (recorded).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Silence an episode's cameras until a date (e.g. a camera being moved on purpose)."""
    import getpass

    from detloop.settings import parse_as_of
    from tasks.drift_records import acknowledge

    settings = get_settings(config)
    e = acknowledge(_store(settings), settings, episode, getpass.getuser(), note, parse_as_of(until))
    typer.echo(f"{e.episode_id}: cameras {', '.join(e.cameras)} open no new episode before {e.silenced_until}")


def _store(settings: object) -> object:
    from detloop.clients.s3 import S3Store

    return S3Store(settings)  # type: ignore[arg-type]
