"""``detloop select``: list strategies; run sample -> score -> select for an ``as_of`` date.

:func:`run_selection` is the plain composition the CLI runs (the Prefect flow wraps the same task
functions with retries and caching). Heavy libraries are imported inside functions.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import typer

from detloop.settings import Settings

select_app = typer.Typer(help="Sample production frames, score them with the champion, select hard examples.",
                         no_args_is_help=True)


@dataclass
class SelectionRun:
    """Everything one selection run produced (keys are in the data bucket)."""

    run_id: str
    as_of: str
    model: str
    sample: Any
    scoring: Any
    result: Any
    keys: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def run_selection(
    settings: Settings,
    as_of: date,
    model: str | Path | None = None,
    cameras: list[str] | None = None,
    dates: list[date] | None = None,
    run_id: str | None = None,
    labelled_class_counts: list[int] | None = None,
    store: Any | None = None,
    write: bool = True,
) -> SelectionRun:
    """Sample the window before ``as_of``, score with the champion (or ``model``), select, write reports.

    Args:
        settings: full settings.
        as_of: end of the window (exclusive).
        model: scoring artifact dir / ``.pt``; None: ``models:/<name>@champion`` from MLflow.
        cameras / dates: optional focus of the sample.
        run_id: prefix ``runs/<run_id>/`` for manifests and the report (default: generated).
        labelled_class_counts: ``(C,)`` boxes per class in the labelled set (None: no class balance).
        store: ``S3Store`` (default: new).
        write: write manifests, predictions and the report to S3.

    Raises:
        DataError: no champion and no ``model`` (clear message), unknown strategy (lists valid ones).
    """
    from detloop.clients.s3 import S3Store
    from detloop.errors import DataError
    from tasks import sampling, scoring, selection
    from tasks.strategies import get_strategy

    store = store or S3Store(settings)
    strategy = get_strategy(settings.selection.strategy)  # fail fast, listing valid names
    run_id = run_id or f"select-{as_of.isoformat()}-{uuid.uuid4().hex[:6]}"
    notes: list[str] = []
    model_path = Path(model) if model else scoring.resolve_model(settings, "champion")
    scorer = scoring.load_scorer(model_path, settings.model, settings.classes)
    if list(scorer.meta.class_names) != list(settings.classes):
        raise DataError(f"model classes {scorer.meta.class_names} differ from configured classes {settings.classes}")
    committee = None
    if strategy.needs == "committee":
        try:
            committee = scoring.load_scorer(scoring.resolve_model(settings, settings.selection.committee_alias),
                                            settings.model, settings.classes)
        except DataError as err:
            notes.append(f"committee: {err}")
    smp = sampling.sample(settings, as_of, store, cameras, dates, run_id=run_id if write else None)
    notes += smp.notes
    res = scoring.score(smp.frames, scorer, store, settings.model, tta=strategy.needs == "tta", committee=committee)
    keys: dict[str, str] = {}
    if smp.manifest_key:
        keys["sample_manifest"] = smp.manifest_key
        keys["quarantine"] = smp.quarantine_key or ""
    if write and res.frames:
        prefix = scoring.predictions_prefix(smp.window[0], smp.window[1], scorer.name)
        keys.update({f"predictions_{k}": v for k, v in scoring.write_predictions(
            store, settings.s3.data_bucket, prefix, res, settings.classes).items()})
    if res.quarantined:
        notes.append(f"{len(res.quarantined)} frame(s) quarantined while scoring")
    if labelled_class_counts is None and settings.selection.class_balance:
        notes.append("class balance: no labelled class counts given; all classes weigh the same")
    sel = selection.select(res.frames, labelled_class_counts, settings.selection,
                           round_seed=_seed_of(as_of), class_names=settings.classes,
                           num_classes=len(settings.classes))
    sel.notes[:0] = notes
    sel.report["notes"] = sel.notes
    sel.report.update(run_id=run_id, as_of=as_of.isoformat(), model=scorer.name,
                      sample=smp.stats, quarantined=[q.to_dict() for q in smp.quarantined + res.quarantined],
                      scoring_timings={k: round(v, 3) for k, v in res.timings.items()})
    if write:
        keys.update(selection.write_selection_report(store, settings.s3.data_bucket, run_id, sel))
    return SelectionRun(run_id, as_of.isoformat(), scorer.name, smp, res, sel, keys, sel.notes)


def _seed_of(as_of: date) -> int:
    """Round seed derived from the date (reproducible reruns of the same week)."""
    return as_of.toordinal()


@select_app.command("strategies")
def strategies_cmd() -> None:
    """List the registered selection strategies."""
    from tasks.strategies import AGGREGATIONS, STRATEGIES

    for s in STRATEGIES.values():
        extra = f" [needs {s.needs}; falls back to {s.fallback}]" if s.needs else ""
        agg = f" [aggregation forced: {s.aggregation}]" if s.aggregation else ""
        typer.echo(f"{s.name:18s} {s.description}{extra}{agg}")
    typer.echo(f"\naggregations: {', '.join(AGGREGATIONS)}; diversity: none, kcenter, filter_kcenter")


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
    config: Annotated[Path | None, typer.Option("--config", "-c", envvar="DETLOOP_CONFIG",
                                                help="Config YAML.")] = None,
) -> None:
    """Sample -> score -> select for AS_OF and print the selection report."""
    from detloop.cli import get_settings
    from detloop.errors import DataError
    from detloop.settings import load_settings, parse_as_of

    settings = get_settings(config)
    over: dict[str, Any] = {}
    if budget is not None:
        over["budget"] = budget
    if strategy is not None:
        over["strategy"] = strategy
    if over:
        settings = load_settings(config, overrides={"selection": over})
    counts = None
    if labelled_counts:
        try:
            counts = [int(x) for x in labelled_counts.split(",")]
        except ValueError as err:
            raise DataError(f"--labelled-counts: expected integers like 120,40,3, got {labelled_counts!r}") from err
    when = parse_as_of(as_of)
    dates = [parse_as_of(d) for d in day] if day else None
    run = run_selection(settings, when, model, camera or None, dates, run_id, counts, write=not no_write)
    typer.echo(run.result.markdown())
    typer.echo("")
    typer.echo(f"run {run.run_id}: sampled {run.sample.stats.get('sampled', 0)} of {run.sample.stats.get('eligible', 0)} "
               f"frames in {run.sample.window[0]}..{run.sample.window[1]} (end exclusive), scored "
               f"{len(run.scoring.frames)} in {run.scoring.timings.get('total', 0):.1f} s with {run.model}")
    for k, v in run.keys.items():
        typer.echo(f"  {k}: s3://{settings.s3.data_bucket}/{v}")
