"""``detloop rounds ...`` (labelling rounds) and ``detloop annotate ...`` (simulated annotators).

Heavy imports stay inside the commands so ``detloop --help`` is fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.common import ConfigOpt, get_settings, parse_now

rounds_app = typer.Typer(help="Labelling rounds: list, show, watch for completion, pull labels.", no_args_is_help=True)
annotate_app = typer.Typer(help="Simulated annotators (demo and tests): label pending tasks through the API.",
                           no_args_is_help=True)


def _ctx(config: Path | None) -> tuple[Any, Any]:
    from detloop.clients.s3 import S3Store

    s = get_settings(config)
    return s, S3Store(s)



@rounds_app.command("list")
def rounds_list(
    config: ConfigOpt = None,
    status: Annotated[str | None, typer.Option(help="open | completed | closed_partial | trained")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Round records in the data bucket, oldest first."""
    from tasks.rounds import list_rounds

    s, store = _ctx(config)
    recs = list_rounds(store, s, status)
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in recs], indent=1))
        return
    if not recs:
        typer.echo("no rounds")
        return
    typer.echo(f"{'round':<28} {'status':<15} {'as_of':<11} {'deadline':<26} {'sel':>4} {'ctl':>4} "
               f"{'lab':>4} {'skip':>4} {'pend':>4} dataset")
    for r in recs:
        c = r.counts
        typer.echo(f"{r.round_id:<28} {r.status:<15} {r.as_of:<11} {r.deadline:<26} {r.n_selected:>4} "
                   f"{r.n_control:>4} {c.get('labelled', '-'):>4} {c.get('skipped', '-'):>4} "
                   f"{c.get('pending', '-'):>4} {r.dataset_version or '-'}")


@rounds_app.command("show")
def rounds_show(
    round_id: str,
    config: ConfigOpt = None,
    live: Annotated[bool, typer.Option(help="Also count the round's tasks in Label Studio now.")] = True,
) -> None:
    """One round: its record, live progress and the labels report when pulled."""
    from detloop.errors import DataError
    from tasks.annotation import ensure_project, round_tasks
    from tasks.ls_tasks import round_progress
    from tasks.rounds import labels_report_key, load_round

    s, store = _ctx(config)
    rec = load_round(store, s, round_id)
    if rec is None:
        raise DataError(f"round {round_id!r} not found in s3://{s.s3.data_bucket}/rounds/ (see `detloop rounds list`)")
    out: dict[str, Any] = {"record": rec.to_dict()}
    if live:
        from detloop.clients.labelstudio import LabelStudioClient

        ls = LabelStudioClient(s)
        out["progress_now"] = round_progress(round_tasks(ls, ensure_project(s, ls).id, round_id, "progress"))
    key = labels_report_key(round_id)
    if store.exists(s.s3.data_bucket, key):
        rep = store.get_json(s.s3.data_bucket, key)
        rep["issues"] = rep.get("issues", [])[:20]
        if rep.get("label_outcomes"):  # the raw ledger stays in S3; people read the summary
            from detloop.label_cost import OutcomeTally

            rep["label_outcomes"] = OutcomeTally.from_dict(rep["label_outcomes"]).summary()
        out["labels_report"] = rep
    typer.echo(json.dumps(out, indent=1, default=str))


@rounds_app.command("watch")
def rounds_watch(
    config: ConfigOpt = None,
    now: Annotated[str | None, typer.Option(help="Simulated current time (ISO); default: now.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report only: write nothing, emit nothing.")] = False,
) -> None:
    """Compute progress of open rounds, close finished/overdue ones, emit the completion event once.

    Events go to the Prefect API of the config (the same call the watch-rounds flow makes).
    """
    from detloop.clients.labelstudio import LabelStudioClient
    from flows.common import announce_round_completed
    from tasks.watch import watch_rounds

    s, store = _ctx(config)
    printed: list[dict[str, Any]] = []
    emit = announce_round_completed(str(config) if config else None)

    def announce(done: Any) -> None:
        emit(done)
        printed.append(done.to_dict())

    report = watch_rounds(s, parse_now(now), announce, store, LabelStudioClient(s), dry_run=dry_run)
    typer.echo(json.dumps({**report, "events": printed}, indent=1, default=str))


@rounds_app.command("pull")
def rounds_pull(
    round_id: str,
    config: ConfigOpt = None,
    policy: Annotated[str | None, typer.Option(help="latest | consensus (default from config).")] = None,
    build: Annotated[bool, typer.Option(help="Also write the new dataset version (parent: latest train).")] = False,
) -> None:
    """Pull, validate and convert a round's labels; copy frames to content-addressed storage."""
    from detloop.clients.labelstudio import LabelStudioClient
    from tasks.annotation import pull_round
    from tasks.round_version import build_round_version

    s, store = _ctx(config)
    pulled = pull_round(s, round_id, LabelStudioClient(s), store, policy=policy)
    rep = dict(pulled.report)
    rep["issues"] = rep["issues"][:20]
    if build:
        _, _, rep["dataset"] = build_round_version(store, s, round_id, pulled.entries)
    typer.echo(json.dumps(rep, indent=1, default=str))


@annotate_app.command("simulate")
def annotate_simulate(
    config: ConfigOpt = None,
    round_id: Annotated[str | None, typer.Option("--round", help="Only this round's tasks.")] = None,
    p_skip: Annotated[float, typer.Option(help="Probability of skipping a task.")] = 0.05,
    p_miss_small: Annotated[float, typer.Option(help="Probability of missing a small box.")] = 0.2,
    small_area: Annotated[float, typer.Option(help="Small box area threshold (px^2).")] = 32 * 32,
    jitter: Annotated[float, typer.Option(help="Box edge noise, share of the box side.")] = 0.02,
    p_flip: Annotated[float, typer.Option(help="Probability of a wrong class.")] = 0.02,
    throughput: Annotated[int | None, typer.Option(help="At most this many tasks (default all).")] = None,
    seconds_per_task: Annotated[float, typer.Option(help="Pause between submissions.")] = 0.0,
    seed: int = 0,
) -> None:
    """Label pending tasks from the oracle truth with configurable noise, through the public API."""
    from detloop.sim.annotator import AnnotatorProfile, annotate_pending

    s, store = _ctx(config)
    prof = AnnotatorProfile(p_skip=p_skip, p_miss_small=p_miss_small, small_area_px=small_area, jitter=jitter,
                            p_flip=p_flip, seed=seed, throughput=throughput, seconds_per_task=seconds_per_task)
    typer.echo(json.dumps(annotate_pending(s, prof, round_id=round_id, store=store)))
