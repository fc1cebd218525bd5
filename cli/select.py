"""``detloop select``: list strategies; run sample -> score -> select for an ``as_of`` date.

``detloop select run`` runs the same selection subflow as the weekly flow
(:func:`flows.selection.select_frames`), in this process, tracked by the config's Prefect server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cli.common import ConfigOpt, get_settings

select_app = typer.Typer(help="Sample production frames, score them with the champion, select hard examples.",
                         no_args_is_help=True)


@select_app.command("strategies")
def strategies_cmd() -> None:
    """List the registered selection strategies."""
    from typing import get_args

    from detloop.settings import DiversityName
    from tasks.strategies import AGGREGATIONS, STRATEGIES

    for s in STRATEGIES.values():
        extra = f" [needs {s.needs}; falls back to {s.fallback}]" if s.needs else ""
        agg = f" [aggregation forced: {s.aggregation}]" if s.aggregation else ""
        typer.echo(f"{s.name:18s} {s.description}{extra}{agg}")
    typer.echo(f"\naggregations: {', '.join(AGGREGATIONS)}; diversity: {', '.join(get_args(DiversityName))}")


@select_app.command("run")
def run_cmd(
    as_of: Annotated[str | None, typer.Option("--as-of", help="ISO date; the window ends here (default today).")] = None,
    model: Annotated[Path | None, typer.Option("--model", help="Scoring artifact dir or .pt (default: @champion).")] = None,
    camera: Annotated[list[str] | None, typer.Option("--camera", help="Only this camera (repeatable).")] = None,
    day: Annotated[list[str] | None, typer.Option("--date", help="Only this date in the window (repeatable).")] = None,
    budget: Annotated[int | None, typer.Option("--budget", help="Override selection.budget.")] = None,
    strategy: Annotated[str | None, typer.Option("--strategy", help="Override selection.strategy.")] = None,
    labelled_counts: Annotated[str | None, typer.Option("--labelled-counts",
                                                        help="Comma-separated boxes per class in the labelled set.")] = None,
    run_id: Annotated[str | None, typer.Option("--run-id", help="runs/<run_id>/ prefix (default generated).")] = None,
    no_write: Annotated[bool, typer.Option("--no-write", help="Do not write anything to S3.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Sample -> score -> select for AS_OF and print the selection report."""
    import uuid

    from cli.common import use_prefect
    from detloop.errors import DataError
    from detloop.settings import parse_as_of
    from flows.selection import select_frames

    over: dict[str, Any] = {}
    if budget is not None:
        over["budget"] = budget
    if strategy is not None:
        over["strategy"] = strategy
    overrides = {"selection": over} if over else None
    settings = get_settings(config, overrides)  # refuses a bad --strategy / --budget before anything runs
    use_prefect(settings, config)
    counts = None
    if labelled_counts:
        try:
            counts = [int(x) for x in labelled_counts.split(",")]
        except ValueError as err:
            raise DataError(f"--labelled-counts: expected integers like 120,40,3, got {labelled_counts!r}") from err
    when = parse_as_of(as_of)
    dates = [parse_as_of(d) for d in day] if day else None
    rid = run_id or f"select-{when.isoformat()}-{uuid.uuid4().hex[:6]}"
    run = select_frames(when, rid, str(config) if config else None, overrides, camera or None, dates,
                        str(model) if model else None, counts, write=not no_write)
    if run.result is not None:
        typer.echo(run.result.markdown())
    else:
        for note in run.notes:
            typer.echo(note)
    typer.echo("")
    scored = len(run.scoring.frames) if run.scoring is not None else 0
    total = run.scoring.timings.get("total", 0) if run.scoring is not None else 0.0
    typer.echo(f"run {run.run_id}: sampled {run.sample.stats.get('sampled', 0)} of {run.sample.stats.get('eligible', 0)} "
               f"frames in {run.sample.window[0]}..{run.sample.window[1]} (end exclusive), scored "
               f"{scored} in {total:.1f} s with {run.model}")
    for k, v in run.keys.items():
        typer.echo(f"  {k}: s3://{settings.s3.data_bucket}/{v}")
