"""``detloop stack up | status | down | logs SERVICE``: the embedded local stack."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from cli.common import ConfigOpt, get_settings

stack_app = typer.Typer(
    help="The local stack of real servers on loopback: S3 (SeaweedFS), MLflow, Label Studio, Prefect, runner.",
    no_args_is_help=True,
)




def _echo(msg: str) -> None:
    typer.echo(msg, err=True)


def _print_status(settings) -> bool:  # type: ignore[no-untyped-def]
    from rich.console import Console
    from rich.table import Table

    from infra.stack import status

    rows = status(settings)
    table = Table(title=f"detloop stack ({settings.data_dir})")
    for col in ("service", "URL", "pid", "state"):
        table.add_column(col)
    colors = {"healthy": "green", "stopped": "red", "unhealthy": "red"}
    for r in rows:
        c = colors.get(r.state, "yellow")
        table.add_row(r.service, r.url, str(r.pid or "-"), f"[{c}]{r.state}[/{c}]")
    Console().print(table)
    return all(r.state in ("healthy", "not installed", "disabled") for r in rows)


def _finish(settings: Any, res: Any) -> None:
    """Status table, then one line per service that failed to start (exit 1 if any)."""
    _print_status(settings)
    for name, err in res.errors.items():
        typer.secho(f"error: {name}: {err}", fg=typer.colors.RED, err=True)
    if res.errors:
        raise typer.Exit(1)


@stack_app.command("up")
def up(
    config: ConfigOpt = None,
    s3_only: Annotated[bool, typer.Option("--s3-only", help="Start only S3 and its buckets (enough for the "
                                          "scoring and selection benchmarks; a quiet machine to time on).")] = False,
) -> None:
    """Start every service that is not running (idempotent) and wait until all are healthy."""
    from infra.stack import ensure_up

    settings = get_settings(config)
    res = ensure_up(settings, log=_echo, s3_only=s3_only)
    for name, why in res.skipped.items():
        _echo(f"{name}: {why}")
    _echo(
        f"stack up in {res.seconds:.1f} s: started {', '.join(res.started) or 'nothing'}; "
        f"already running {', '.join(res.already_running) or 'nothing'}"
    )
    _finish(settings, res)


@stack_app.command("status")
def status_cmd(config: ConfigOpt = None) -> None:
    """Table of service, URL, pid and health; exit 1 when a service is not healthy."""
    ok = _print_status(get_settings(config))
    raise typer.Exit(0 if ok else 1)


@stack_app.command("down")
def down_cmd(config: ConfigOpt = None) -> None:
    """Stop the services this stack started (reverse order, verified pids, SIGKILL if needed). State is kept."""
    from infra.stack import down

    res = down(get_settings(config), log=_echo)
    _echo("stack down: " + ", ".join(f"{k} {v}" for k, v in res.items()))


@stack_app.command("restart")
def restart_cmd(
    services: Annotated[list[str] | None, typer.Argument(help="Services to restart (default: all).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Stop the given services (e.g. ``runner`` after changing flow code), then `up` again. State is kept."""
    from infra.procs import StackError
    from infra.stack import SERVICES, down, ensure_up

    chosen = tuple(services or SERVICES)
    unknown = [x for x in chosen if x not in SERVICES]
    if unknown:
        raise StackError(f"unknown service(s) {', '.join(unknown)}; known: {', '.join(SERVICES)}")
    settings = get_settings(config)
    down(settings, log=_echo, services=chosen)
    res = ensure_up(settings, log=_echo)
    _echo(f"restarted {', '.join(res.started) or 'nothing'} in {res.seconds:.1f} s")
    _finish(settings, res)


@stack_app.command("logs")
def logs_cmd(
    service: Annotated[str, typer.Argument(help="s3 | mlflow | label-studio | prefect | runner | label-studio-install")],
    lines: Annotated[int, typer.Option("-n", "--lines", min=0, help="Lines from the end.")] = 50,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines (Ctrl-C stops).")] = False,
    config: ConfigOpt = None,
) -> None:
    """Print the end of a service's log file."""
    from infra.procs import StackError, tail_lines
    from infra.stack import SERVICES, stack_paths

    known = (*SERVICES, "label-studio-install")
    if service not in known:
        raise StackError(f"unknown service {service!r}; known: {', '.join(known)}")
    path = stack_paths(get_settings(config)).log(service)
    if not path.exists():
        raise StackError(f"no log yet for {service}: {path}")
    for line in tail_lines(path, lines):
        typer.echo(line)
    if not follow:
        return
    with open(path, "rb") as f:
        f.seek(0, 2)
        try:
            while True:
                chunk = f.readline()
                if chunk:
                    typer.echo(chunk.decode(errors="replace").rstrip("\n"))
                else:
                    time.sleep(0.5)
        except KeyboardInterrupt:
            return
