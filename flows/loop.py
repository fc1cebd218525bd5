"""The active-learning loop as Prefect flows. Each flow reads top to bottom like the step it runs.

Continuation: no parent run waits for days. The weekly cron starts ``select-for-labeling``, which
opens a Label Studio round; ``watch-rounds`` (on an interval) emits
``detloop.annotation.round.completed`` once per round; that event starts ``retrain-and-promote`` for
the round. When the cron fires while the previous round is still open, ``rounds.on_open_round``
decides: ``skip`` (default: report and select nothing) or ``open_another`` (a second round with its
own id).

The two pipelines are composed once, as subflows: :func:`flows.selection.select_frames` (sample ->
score -> select) and :func:`flows.post_training.evaluate_and_promote` (evaluate -> register -> gate ->
promote). Each flow run builds its settings and clients once and passes them down.

Idempotence: every side effect is keyed by a domain id: the round id (Label Studio tasks deduped on
S3 key + round; the round record in S3), the dataset version id (hash of content), the MLflow run
(tagged with round id and input hash, reused when finished), the registered version (found by run
before registering), the promotion log. A re-run after a crash resumes instead of redoing.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger

from flows import steps
from flows.common import (
    EVENT_GATE_FAILED,
    EVENT_MODEL_PROMOTED,
    EVENT_ROUND_READY,
    md_fields,
    md_table,
    notify,
    now_utc_minute,
    publish_report,
    retrying,
    run_name,
    run_settings,
    settings_for,
    today_utc,
)
from flows.params import (
    BootstrapParams,
    PromoteParams,
    RetrainParams,
    RollbackParams,
    SelectParams,
    WatchParams,
)
from flows.post_training import evaluate_and_promote
from flows.selection import select_frames


def _golden_version(store: Any, settings: Any) -> str:
    from detloop.datasets import latest_version
    from detloop.errors import DataError

    golden = settings.evaluation.golden_version or latest_version(store, settings, "golden")
    if golden is None:
        raise DataError("no golden dataset version; publish one first (`detloop world golden`)")
    return golden


# ================================================================================================
# select-for-labeling: one round per week
# ================================================================================================
def _check_champion(settings: Any, clients: Any, log: Any, refuse: bool) -> Any:
    """Compare the ``champion`` alias with the promotion log; say so loudly when MLflow's UI moved it.

    Raises:
        ChampionDrift: with ``refuse``, when the champion is not the one the log records.
    """
    from tasks.registry import ChampionDrift

    check = retrying(steps.check_champion, settings)(settings, clients)
    if check.drifted:
        log.error(check.message())
        publish_report("champion-drift", f"# Champion alias moved outside detloop\n\n{check.message()}\n",
                       "champion alias does not match the promotion log")
        if refuse:
            raise ChampionDrift(check.message() + "; no round is opened on an unrecorded champion")
    return check


@flow(name="select-for-labeling", flow_run_name=run_name("select", "as_of", default=today_utc), log_prints=True)
def select_for_labeling(params: SelectParams = SelectParams()) -> dict[str, Any]:  # noqa: B008
    """Sample the production window -> score with the champion -> select -> push a round to Label Studio."""
    from detloop.clients import Clients
    from detloop.settings import parse_as_of
    from tasks.rounds import WEEKLY, RoundFocus, check_as_of, list_rounds, load_round, mark_round, plan_round
    from tasks.selection import read_stored_selection

    log = get_run_logger()
    settings, overrides = settings_for(params), params.overrides()
    if params.episode_id and params.balance_cameras is None and settings.drift.round_balance_cameras:
        overrides.setdefault("selection", {})["balance_cameras"] = True  # each drifted camera gets its share
        settings = run_settings(params.config, overrides)
    clients = Clients.from_settings(settings)
    store, bucket = clients.store, settings.s3.data_bucket
    as_of = parse_as_of(params.as_of)
    check_as_of(as_of, datetime.now(UTC).date())
    focus = RoundFocus("drift", params.episode_id) if params.episode_id else WEEKLY
    log.info("%s %s: project %r, strategy %s, budget %d (config %s)", "drift episode " + params.episode_id
             if params.episode_id else "week", as_of, settings.label_studio.project_title,
             settings.selection.strategy, settings.selection.budget, settings.source)

    # 0. one round per week (unless asked otherwise); one per drift episode
    round_id, why = plan_round(list_rounds(store, settings), settings.label_studio.project_title, as_of,
                               params.cameras, params.dates, settings.rounds.on_open_round, params.force_new_round,
                               focus)
    if round_id is None:
        log.info("nothing selected: %s", why)
        publish_report("select-skipped", f"# Skipped week {as_of}\n\n{why}\n", "select-for-labeling skipped")
        return {"as_of": str(as_of), "skipped": why}
    existing = load_round(store, settings, round_id)
    if existing is not None and existing.status != "open":
        log.info("round %s already %s; nothing to do", round_id, existing.status)
        return {"as_of": str(as_of), "round_id": round_id, "status": existing.status, "resumed": True}
    # a champion that MLflow's alias buttons set, bypassing the gate: refuse to build a round on it
    _check_champion(settings, clients, log, refuse=existing is None)
    log.info("round %s (%s)", round_id, why)

    # 1. the round's selection: the stored one when resuming, else the selection subflow
    stored = read_stored_selection(store, bucket, round_id)
    if stored is not None:
        frames, model_version, stats = stored
        log.info("round %s: resuming with its stored selection of %d frames", round_id, len(frames))
        notes: list[str] = ["resumed: stored selection reused"]
        table = ""
    else:
        run = select_frames(as_of, round_id, params.config, overrides, params.cameras, params.dates,
                            camera_dates=params.camera_dates)
        if run.result is None:
            md = f"# Week {as_of}: nothing to label\n\n" + "\n".join(f"- {n}" for n in run.notes or ["empty window"])
            publish_report("select-empty", md, "select-for-labeling: empty window")
            return {"as_of": str(as_of), "round_id": None, "selected": 0}
        frames, model_version, stats = run.result.frames, run.model_version, run.stats
        notes, table = run.notes, run.result.markdown(max_rows=30)

    # 2. push the round to Label Studio (deduped on S3 key + round id)
    push = retrying(steps.push_round, settings)(settings, clients, frames, round_id, model_version, as_of)
    mark_round(store, settings, round_id, selection_report_key=f"runs/{round_id}/selection_report.json",
               reason=focus.reason, focus_key=focus.key)

    # 3. report
    summary = {"as_of": str(as_of), "round_id": round_id, "model_version": model_version, **stats,
               "selected": sum(f.arm == "selected" for f in frames), "control": sum(f.arm == "control" for f in frames),
               "imported": push.imported, "already_present": push.already_present, "project_id": push.project_id,
               "label_studio": push.view_url}
    log.info("round %s: %d selected + %d control frames, %d imported (%d already there); labellers: %s", round_id,
             summary["selected"], summary["control"], push.imported, push.already_present, push.view_url)
    md = (f"# Round {round_id} ready for labelling\n\n**Label Studio: [the round's tab]({push.view_url})**\n\n"
          + md_fields(summary) + "\n" + "\n".join(f"- {n}" for n in notes) + "\n\n" + table + "\n")
    publish_report("round-ready", md, f"select-for-labeling {round_id}")
    notify(EVENT_ROUND_READY, f"detloop.round.{round_id}",
           {"round_id": round_id, "tasks": len(frames), "url": push.view_url, "config": params.config or ""},
           f"round {round_id}: {len(frames)} frames ready in {push.view_url}")
    return summary


# ================================================================================================
# watch-rounds: close finished rounds, announce each once
# ================================================================================================
WATCH_RUN_SECONDS = 3600  # a following watch hands over to a new run after this long (one run an hour at most)


@flow(name="watch-rounds", flow_run_name=run_name("watch", "now", default=now_utc_minute), log_prints=True)
def watch_rounds(params: WatchParams = WatchParams()) -> dict[str, Any]:  # noqa: B008
    """Progress of open rounds; close finished or overdue ones; emit round-completed once per round.

    With ``follow`` (the deployment's trigger and safety schedule set it) the run keeps checking every
    ``prefect.watch_interval_seconds`` while a round is open and, after an hour, schedules the next watch run and
    ends: one run an hour while rounds are open, none otherwise, at most one scheduled ahead.
    """
    import time

    from detloop.clients import Clients
    from flows.common import announce_round_completed, retrain_waiting
    from tasks.watch import watch_rounds as watch

    log = get_run_logger()
    settings = settings_for(params)
    step = settings.prefect.watch_interval_seconds
    handover = time.monotonic() + WATCH_RUN_SECONDS
    report: dict[str, Any] | None = None
    seen: dict[str, Any] = {}
    try:
        clients = Clients.from_settings(settings)
        while True:
            now = params.now or datetime.now(UTC)
            # the config travels with the event so the triggered retrain uses the same settings
            report = watch(settings, now, announce_round_completed(params.config), clients.store, clients.labels,
                           retrain_waiting=retrain_waiting())
            seen = _log_progress(log, report, seen, settings.label_studio.project_title)
            still_open = any(r["status"] == "open" for r in report["rounds"])
            if not (params.follow and still_open and params.now is None):
                break
            if time.monotonic() + step > handover:
                _schedule_next_watch(settings, params, log)
                break
            time.sleep(step)
    except BaseException:
        if params.follow and params.now is None:  # a failed check must not end the watching
            _schedule_next_watch(settings, params, log)
        raise
    rows = [{"round": r["round_id"], "status": r["status"], **{k: r.get("progress", {}).get(k) for k in
             ("total", "labelled", "pending")}, "emitted": r.get("emitted")} for r in report["rounds"]]
    publish_report("watch-rounds", "# Open rounds\n\n" + md_table(rows), "watch-rounds")
    return report


def _log_progress(log: Any, report: dict[str, Any], seen: dict[str, Any], project: str) -> dict[str, Any]:
    """Log each round's progress when it changed since the last check; returns what was logged."""
    out = {}
    for r in report["rounds"]:
        p = r.get("progress", {})
        key = (r["status"], p.get("labelled"), p.get("pending"), r.get("emitted"))
        out[r["round_id"]] = key
        if seen.get(r["round_id"]) != key:
            log.info("round %s: %s (%s of %s labelled, %s pending)%s", r["round_id"], r["status"], p.get("labelled"),
                     p.get("total"), p.get("pending"), "; round-completed emitted" if r.get("emitted") else "")
        if r.get("reannounced"):
            log.warning("round %s is finished but its retrain died (no live lease, none waiting, not trained): "
                        "round-completed sent again (attempt %s)", r["round_id"], r["reannounced"])
        if r.get("note"):
            log.error("round %s: %s", r["round_id"], r["note"])
    if not report["rounds"] and not seen:
        log.info("no open round of project %r", project)
    return out


def _schedule_next_watch(settings: Any, params: WatchParams, log: Any) -> None:
    """One follow-up run of this watch deployment, ``watch_interval_seconds`` from now (only inside a deployment
    run; idempotent per time slot, so two watches never fork two chains)."""
    from datetime import timedelta

    from prefect.deployments import run_deployment
    from prefect.runtime import deployment, flow_run

    name = deployment.get_name()
    if not name:  # a run in this process (CLI, tests): no chain
        return
    step = settings.prefect.watch_interval_seconds
    at = datetime.now(UTC) + timedelta(seconds=step)
    slot = int(at.timestamp()) // step
    nxt_params: dict[str, Any] = {"follow": True, **({"config": params.config} if params.config else {})}
    nxt = run_deployment(f"{flow_run.get_flow_name()}/{name}", parameters={"params": nxt_params},
                         scheduled_time=at, timeout=0, as_subflow=False,
                         idempotency_key=f"watch-rounds-{settings.label_studio.project_title}-{slot}")
    log.info("a round is still open: the next watch run %s starts at %s", nxt.name, at.isoformat(timespec="seconds"))


# ================================================================================================
# retrain-and-promote: a finished round's labels -> a new champion, if the gate agrees
# ================================================================================================
@flow(name="retrain-and-promote", flow_run_name=run_name("retrain", "round_id"), log_prints=True)
def retrain_and_promote(params: RetrainParams) -> dict[str, Any]:
    """Labels of a round -> dataset version -> fine-tune -> evaluate -> register -> gate -> promote or not.

    One run per round at a time, on any host (a lease in the object store): a second run for the same round
    returns at once with ``skipped`` saying which run holds it.
    """
    from detloop.clients import Clients
    from detloop.errors import LockBusy
    from tasks.rounds import retrain_lease

    log = get_run_logger()
    settings = settings_for(params)
    clients = Clients.from_settings(settings)
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(retrain_lease(clients.store, settings, params.round_id))
        except LockBusy as err:  # another run is on this round (its lease says which and until when)
            log.info("nothing done: %s", err)
            publish_report("retrain-skipped", f"# Round {params.round_id}: nothing done\n\n{err}\n",
                           f"retrain-and-promote {params.round_id} skipped")
            return {"round_id": params.round_id, "skipped": str(err)}
        return _retrain_round(params, settings, clients, log)


def _retrain_round(params: RetrainParams, settings: Any, clients: Any, log: Any) -> dict[str, Any]:
    from types import SimpleNamespace

    from detloop.errors import DataError
    from tasks.rounds import load_round, mark_round

    store, bucket = clients.store, settings.s3.data_bucket
    round_id = params.round_id
    result_key = f"rounds/{round_id}/result.json"

    # 0. idempotent by round id
    rec = load_round(store, settings, round_id)
    if rec is None:
        raise DataError(f"round {round_id!r} not found (no s3://{bucket}/rounds/{round_id}/round.json)")
    if rec.status == "trained" and store.exists(bucket, result_key):
        done = store.get_json(bucket, result_key)
        log.info("round %s was already trained: version %s, %s", round_id, done.get("version"), done.get("outcome"))
        return {**done, "resumed": True}
    if rec.status == "open":
        raise DataError(f"round {round_id} is still open ({rec.counts}); wait for watch-rounds to close it")
    drift = _check_champion(settings, clients, log, refuse=False)  # loud, but the round's labels are in

    # 1. labels back from Label Studio, validated, frames copied to content-addressed storage; plus labels of
    #    earlier rounds corrected since their pull (they join this version: nothing edited late is lost)
    pulled = retrying(steps.pull_labels, settings)(settings, clients, round_id)
    late = retrying(steps.late_edits, settings)(settings, clients, round_id)
    if late.tasks:
        log.info("labels edited after their round was pulled: %s; they join this round's dataset version",
                 ", ".join(f"round {r} tasks {ids}" for r, ids in late.tasks.items()))
    for q in pulled.report.get("quarantined", []):
        log.info("task %s (%s) left out: %s", q["task_id"], q["key"], q["reason"])

    # 2. a new immutable dataset version: the champion's training data + this round + the labelled frames of
    #    earlier rounds it lacks (rounds whose challenger was rejected; rounds.carry_labels)
    champion = retrying(steps.fetch_champion, settings)(settings, clients)
    golden = _golden_version(store, settings)
    version_id, _manifest, ds_report = retrying(steps.build_dataset_version, settings)(
        settings, clients, round_id, [*pulled.entries, *late.entries], champion.dataset_version if champion else None,
        golden)
    if ds_report.get("carried_rounds"):
        log.info("dataset version %s also trains on %d labelled frames of rounds %s (not in the champion's data)",
                 version_id, ds_report["carried_entries"], ", ".join(ds_report["carried_rounds"]))
    if late.tasks:
        from tasks.late_edits import commit_late_edits

        commit_late_edits(store, settings, late.fingerprints)
        ds_report["late_edits"] = late.report()

    # 3. fine-tune the champion on it, unless an earlier run of this round got as far as registering (a crash
    #    after that: the champion may already be that version, and training from it would register another)
    got = retrying(steps.fetch_round_version, settings)(settings, clients, round_id)
    if got is not None:
        log.info("round %s already registered version %s (run %s): resuming from it", round_id, got.version,
                 got.run_id)
        trained = SimpleNamespace(run_id=got.run_id, weights=got.weights, train_seconds=0.0, reused=True)
        train_version = got.dataset_version or version_id
    else:
        train_version = version_id  # with copy-paste: the version plus synthetic train frames (never evaluated)
        if settings.training.copy_paste.enabled:
            train_version, _syn, ds_report["synthetic"] = retrying(steps.add_synthetic, settings)(
                settings, clients, version_id)
            log.info("copy-paste: %s synthetic train frames (%s) -> dataset version %s",
                     ds_report["synthetic"]["synthetic_frames"], ds_report["synthetic"]["pasted"], train_version)
        repeats = None  # per-frame repeats: hard-example mining, rare-class oversampling (off by default)
        if settings.training.sample_weights.mining or settings.training.sample_weights.rare_oversampling:
            repeats, ds_report["sample_weights"] = retrying(steps.sample_weights, settings)(
                settings, clients, train_version, champion)
        data_yaml = retrying(steps.materialize, settings)(settings, clients, train_version,
                                                          settings.training.oversample_factor, repeats)
        log.info("round %s: %d labelled frames -> dataset version %s; fine-tuning champion v%s", round_id,
                 len(pulled.frames), train_version, champion.version if champion else "-")
        trained = retrying(steps.train, settings)(settings, clients, data_yaml,
                                                  champion.weights if champion else None, f"round-{round_id}",
                                                  _round_tags(settings, store, round_id), train_version,
                                                  champion.version if champion else None)

    # 4. evaluate -> register -> gate -> promote (the post-training subflow); the slices come from the real
    #    version (its golden, val and control frames: never a synthetic one)
    post = evaluate_and_promote(trained.run_id, str(trained.weights), train_version, params.config, params.overrides(),
                                golden=golden, round_version=version_id, round_id=round_id,
                                reason=f"gate passed on round {round_id}", actor="detloop:retrain-and-promote")

    # 5. record and report
    summary = _round_summary(round_id, rec, pulled, ds_report, trained, post, golden)
    summary["links"] = {"mlflow_run": clients.registry.run_url(trained.run_id),
                        "mlflow_version": clients.registry.version_url(post.version),
                        "label_studio": _round_view(settings, store, round_id)}
    if drift.drifted:
        summary["champion_drift"] = drift.message()
    store.put_json(bucket, result_key, summary)
    mark_round(store, settings, round_id, status="trained", dataset_version=version_id)
    log.info("round %s: version %s %s (golden mAP50-95 %s vs champion %s); MLflow run %s", round_id, post.version,
             post.outcome, summary["golden_map_challenger"], summary["golden_map_champion"],
             summary["links"]["mlflow_run"])
    publish_report("retrain-and-promote", _round_markdown(summary, post.decision), f"retrain-and-promote {round_id}")
    if post.promoted or (post.decision is not None and not post.decision.passed):
        event = EVENT_MODEL_PROMOTED if post.promoted else EVENT_GATE_FAILED
        notify(event, f"detloop.model.{settings.mlflow.model_name}.{post.version}",
               {"version": post.version, "round_id": round_id, "outcome": post.outcome},
               f"version {post.version} from round {round_id}: {post.outcome}")
    return summary


def _golden_map(report: Any) -> float | None:
    if report is None:
        return None
    sm = report.slices.get("golden")
    return None if sm is None else sm.overall.map


def _slice_maps(post: Any) -> list[dict[str, Any]]:
    """The slices table with both models' mAP50-95 side by side (``control``: the blind random arm)."""
    out = []
    for row in post.slices:
        name = row.get("slice")
        maps = {}
        for who, rep in (("champion_map", post.champion_report), ("challenger_map", post.challenger_report)):
            sm = rep.slices.get(name) if rep is not None else None
            maps[who] = sm.overall.map if sm is not None else None
        out.append({**row, **maps})
    return out


def _round_summary(round_id: str, rec: Any, pulled: Any, ds_report: dict[str, Any], trained: Any, post: Any,
                   golden: str) -> dict[str, Any]:
    ch, cp = post.challenger_report, post.champion_report
    return {
        "round_id": round_id, "as_of": rec.as_of, "labelled_frames": len(pulled.frames),
        "labelled_boxes": int(sum(len(f.detections) for f in pulled.frames)),
        "hard_frames": int(sum(bool(f.hard) for f in pulled.frames)), "labels_report": pulled.report,
        "dataset_version": ds_report.get("version"), "dataset": ds_report, "golden_version": golden,
        "run_id": trained.run_id, "train_seconds": trained.train_seconds, "train_reused": trained.reused,
        "version": post.version, "champion_version": post.champion_version,
        "golden_map_challenger": _golden_map(ch), "golden_map_champion": _golden_map(cp),
        "latency_ms_challenger": ch.latency_ms if ch is not None else None,
        "latency_ms_champion": cp.latency_ms if cp is not None else None,
        "outcome": post.outcome, "reasons": post.decision.reasons if post.decision is not None else [],
        "promoted": post.promoted, "slices": _slice_maps(post),
        "champion_errors": cp.error_breakdown if cp is not None else {},
    }


def _round_view(settings: Any, store: Any, round_id: str) -> str:
    from tasks.rounds import round_view_url

    return round_view_url(store, settings, round_id) or settings.label_studio.url


def _round_tags(settings: Any, store: Any, round_id: str) -> dict[str, str]:
    """MLflow run tags linking a round's training to the Prefect flow run and the round's Label Studio tab."""
    from flows.common import current_flow_run_links

    return {"detloop.round_id": round_id, "detloop.label_studio_round_url": _round_view(settings, store, round_id),
            **current_flow_run_links(settings)}


def _round_markdown(s: dict[str, Any], decision: Any) -> str:
    links = s.get("links") or {}
    head = (f"# Round {s['round_id']}: {s['outcome']}\n\n"
            f"[MLflow run]({links.get('mlflow_run')}) · [model version {s.get('version')}]({links.get('mlflow_version')})"
            f" · [Label Studio round]({links.get('label_studio')})\n\n")
    if s.get("champion_drift"):
        head += f"> **{s['champion_drift']}**\n\n"
    row = {k: s.get(k) for k in ("round_id", "labelled_frames", "labelled_boxes", "hard_frames", "dataset_version",
                                 "version", "golden_map_champion", "golden_map_challenger", "outcome")}
    errors = ""
    if s.get("champion_errors"):
        from tasks.error_analysis import markdown as errors_markdown

        errors = "\n" + errors_markdown(s["champion_errors"]) + "\n"
    return (head + md_fields(row) + "\n## Slices\n\n" + md_table(s["slices"]) + "\n" + errors
            + (decision.to_markdown() if decision is not None else ""))


# ================================================================================================
# bootstrap, promote, rollback
# ================================================================================================
@flow(name="bootstrap", flow_run_name=run_name("bootstrap", "dataset_version", default=lambda: "newest seed"),
      log_prints=True)
def bootstrap(params: BootstrapParams = BootstrapParams()) -> dict[str, Any]:  # noqa: B008
    """First champion: train the model YAML on the seed dataset version, evaluate, register, gate, promote."""
    from detloop.clients import Clients
    from detloop.datasets import latest_version
    from detloop.errors import DataError

    log = get_run_logger()
    settings = settings_for(params)
    clients = Clients.from_settings(settings)
    store = clients.store

    # 0. already bootstrapped?
    champion = retrying(steps.fetch_champion, settings)(settings, clients)
    if champion is not None:
        log.info("champion v%s exists; bootstrap is not needed", champion.version)
        return {"version": champion.version, "outcome": "exists", "resumed": True}

    # 1. the seed dataset version
    seed = params.dataset_version or latest_version(store, settings, "seed")
    if seed is None:
        raise DataError("bootstrap needs a seed dataset version (`detloop world seed`)")
    golden = _golden_version(store, settings)
    data_yaml = retrying(steps.materialize, settings)(settings, clients, seed)

    # 2. train from the model YAML
    from flows.common import current_flow_run_links

    log.info("bootstrap: training %s on seed dataset version %s", settings.model.arch, seed)
    trained = retrying(steps.train, settings)(settings, clients, data_yaml, None, f"bootstrap-{seed}",
                                              {"detloop.bootstrap": "true", **current_flow_run_links(settings)}, seed,
                                              None)

    # 3. evaluate on the golden set, register, gate (absolute floor), promote
    post = evaluate_and_promote(trained.run_id, str(trained.weights), seed, params.config, params.overrides(),
                                golden=golden, reason="bootstrap passed the floor", actor="detloop:bootstrap",
                                as_of=params.as_of.isoformat() if params.as_of else None)
    summary = {"version": post.version, "seed_version": seed, "golden_version": golden, "run_id": trained.run_id,
               "train_seconds": trained.train_seconds, "golden_map": _golden_map(post.challenger_report),
               "outcome": post.outcome, "reasons": post.decision.reasons if post.decision is not None else [],
               "promoted": post.promoted, "slices": post.slices}
    summary["mlflow_run"] = clients.registry.run_url(trained.run_id)
    publish_report("bootstrap", f"# Bootstrap: {post.outcome}\n\n[MLflow run]({summary['mlflow_run']}) · "
                   f"[model version {post.version}]({clients.registry.version_url(post.version)})\n\n"
                   + md_fields({k: v for k, v in summary.items() if k not in ("slices", "mlflow_run")}) + "\n"
                   + (post.decision.to_markdown() if post.decision is not None else ""), "bootstrap")
    return summary


@flow(name="promote", flow_run_name=run_name("promote version", "version"), log_prints=True)
def promote(params: PromoteParams) -> dict[str, Any]:
    """Manually make a version champion (``override`` forces a failed gate; who and why are logged)."""
    import getpass

    from detloop.clients import Clients

    settings = settings_for(params)
    clients = Clients.from_settings(settings)
    entry = retrying(steps.promote, settings)(settings, clients, params.version, None, params.reason,
                                              params.who or getpass.getuser(), override=params.override)
    publish_report("promote", "# Promotion\n\n" + md_fields(entry), "promote")
    notify(EVENT_MODEL_PROMOTED, f"detloop.model.{settings.mlflow.model_name}.{params.version}", entry,
           f"version {params.version} promoted by {entry.get('actor')}: {params.reason}")
    return entry


@flow(name="rollback", flow_run_name=run_name("rollback"), log_prints=True)
def rollback(params: RollbackParams) -> dict[str, Any]:
    """Restore ``previous-champion`` as ``champion``."""
    import getpass

    from detloop.clients import Clients

    settings = settings_for(params)
    clients = Clients.from_settings(settings)
    entry = retrying(steps.rollback, settings)(settings, clients, params.reason, params.who or getpass.getuser())
    publish_report("rollback", "# Rollback\n\n" + md_fields(entry), "rollback")
    notify(EVENT_MODEL_PROMOTED, f"detloop.model.{settings.mlflow.model_name}.{entry['version']}", entry,
           f"rolled back to version {entry['version']}: {params.reason}")
    return entry
