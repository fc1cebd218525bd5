"""The active-learning loop as Prefect flows. Each flow reads top to bottom like the step it runs.

Continuation: no parent run waits for days. The weekly cron starts ``select-for-labeling``, which
opens a Label Studio round; ``watch-rounds`` (on an interval) emits
``detloop.annotation.round.completed`` once per round; that event starts ``retrain-and-promote`` for
the round. When the cron fires while the previous round is still open, ``rounds.on_open_round``
decides: ``skip`` (default: report and select nothing) or ``open_another`` (a second round with its
own id).

Idempotence: every side effect is keyed by a domain id: the round id (Label Studio tasks deduped on
S3 key + round; the round record in S3), the dataset version id (hash of content), the MLflow run
(tagged with round id and input hash, reused when finished), the registered version (found by run
before registering), the promotion log. A re-run after a crash resumes instead of redoing.
Expensive results are cached in S3 under content keys (window + model version + config hash).
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from flows.common import (
    EVENT_GATE_FAILED,
    EVENT_MODEL_PROMOTED,
    EVENT_ROUND_READY,
    NETWORK_RETRIES,
    NETWORK_RETRY_DELAYS,
    chunks,
    make_task_runner,
    md_table,
    notify,
    publish_report,
    retry_on_network,
    settings_for,
)
from flows.params import (
    BootstrapParams,
    PromoteParams,
    RetrainParams,
    RollbackParams,
    SelectParams,
    WatchParams,
)


def round_id_for(project: str, as_of: date, cameras: list[str] | None = None, dates: list[date] | None = None,
                 attempt: int = 0) -> str:
    """Deterministic round id: the Label Studio project, the as_of date, a hash of any focus, a counter.

    The project slug keeps ids unique when several detloop projects share a data bucket.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", project.lower()).strip("-") or "detloop"
    rid = f"{slug}-{as_of.isoformat()}"
    if cameras or dates:
        focus = json.dumps({"cameras": sorted(cameras or []), "dates": sorted(str(d) for d in dates or [])})
        rid += "-" + hashlib.sha256(focus.encode()).hexdigest()[:6]
    if attempt:
        rid += f"-{attempt + 1}"
    return rid


def config_hash(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ================================================================================================
# Tasks: units worth retrying (network) or caching (expensive). Plain work lives in tasks/.
# ================================================================================================
_NET = {"retries": NETWORK_RETRIES, "retry_delay_seconds": NETWORK_RETRY_DELAYS, "retry_condition_fn": retry_on_network}


def _no_cache() -> Any:
    from prefect.cache_policies import NO_CACHE

    return NO_CACHE


@task(name="fetch-champion", cache_policy=_no_cache(), **_NET)
def fetch_champion(settings: Any) -> tuple[Any, str | None, str | None]:
    """Champion files from the registry (``models:/<name>@champion``).

    Returns:
        (local dir, registry version, dataset version it was trained on), or (None, None, None).
    """
    from tasks.registry import champion_version, load_champion

    mv = champion_version(settings)
    if mv is None:
        return None, None, None
    dataset = (mv.tags or {}).get("detloop.dataset_version") or None
    return load_champion(settings), str(mv.version), dataset


def _golden_version(store: Any, settings: Any) -> str:
    from detloop.datasets import latest_version
    from detloop.errors import DataError

    golden = settings.evaluation.golden_version or latest_version(store, settings, "golden")
    if golden is None:
        raise DataError("no golden dataset version; publish one first (`detloop world golden`)")
    return golden


@task(name="sample-window", cache_policy=_no_cache(), **_NET)
def sample_window(settings: Any, as_of: date, cameras: list[str] | None, dates: list[date] | None, run_id: str) -> Any:
    from tasks.sampling import sample

    return sample(settings, as_of, cameras=cameras, dates=dates, run_id=run_id)


@task(name="score-chunk", cache_policy=_no_cache(), **_NET)
def score_chunk(settings: Any, frames: list[Any], model_version: str) -> Any:
    """Score one chunk of the sample with registry version ``model_version``.

    Runs wherever the task runner puts it (a Dask worker on another host included): the model is fetched
    from the registry into that machine's ``data_dir`` once per version, and frames are read from S3.
    """
    from detloop.clients.s3 import S3Store
    from tasks.registry import load_champion
    from tasks.scoring import load_scorer, score

    model_dir = load_champion(settings, version=model_version)
    scorer = load_scorer(Path(model_dir) / "scoring", settings.model, settings.classes)
    return score(frames, scorer, S3Store(settings), settings.model)


def score_sample(settings: Any, sample: Any, model_version: str) -> Any:
    """Score the sample with the champion on the configured task runner (chunks on Dask, one task on threads).

    Cached in S3 by (window, frames + etags, model version, model config): a re-run reads the stored
    predictions instead of scoring again.
    """
    from detloop.clients.s3 import S3Store
    from tasks.scoring import ScoringResult, predictions_prefix, read_predictions, write_predictions

    store = S3Store(settings)
    bucket = settings.s3.data_bucket
    key = config_hash(sorted((f.key, f.etag) for f in sample.frames), model_version,
                      settings.model.model_dump(mode="json"))
    prefix = predictions_prefix(sample.window[0], sample.window[1], model_version) + f"sample={key}/"
    if store.exists(bucket, prefix + "meta.json"):
        return ScoringResult(read_predictions(store, bucket, prefix), [], {"cached": 1.0}, model_version)
    parts = chunks(sample.frames, settings)
    with make_task_runner(settings) as runner:
        futures = [runner.submit(score_chunk, {"settings": settings, "frames": c, "model_version": model_version})
                   for c in parts]
        results = [f.result() for f in futures]
    result = ScoringResult(
        frames=[f for r in results for f in r.frames], quarantined=[q for r in results for q in r.quarantined],
        timings={k: sum(r.timings.get(k, 0.0) for r in results) for k in {k for r in results for k in r.timings}},
        model=results[0].model if results else model_version,
    )
    result.timings["chunks"] = float(len(parts))
    write_predictions(store, bucket, prefix, result, settings.classes)
    return result


@task(name="push-round", cache_policy=_no_cache(), **_NET)
def push_round_task(settings: Any, frames: list[Any], round_id: str, model_version: str | None, as_of: date) -> Any:
    from tasks.annotation import push_round

    return push_round(settings, frames, round_id, model_version, as_of.isoformat())


@task(name="pull-labels", cache_policy=_no_cache(), **_NET)
def pull_labels(settings: Any, round_id: str) -> Any:
    from tasks.annotation import pull_round

    return pull_round(settings, round_id)


@task(name="train", cache_policy=_no_cache())
def train_task(settings: Any, data_yaml: Any, init_weights: Any, run_name: str, tags: dict[str, str],
               dataset_version: str, parent_version: str | None, epochs: int | None = None) -> Any:
    """Training is idempotent by input hash (a finished MLflow run with the same inputs is reused).

    One training at a time (a file lock): a second one waits for the first, up to the training timeout.
    """
    import time

    from tasks.registry import PromotionError
    from tasks.training import train

    deadline = time.monotonic() + settings.training.timeout_minutes * 60
    while True:
        try:
            return train(data_yaml, settings, init_weights, run_name, tags=tags, dataset_version=dataset_version,
                         parent_version=parent_version, epochs=epochs)
        except PromotionError as err:
            if "another training" not in str(err) or time.monotonic() > deadline:
                raise
            get_run_logger().info("%s; waiting", err)
            time.sleep(15)


@task(name="evaluate", cache_policy=_no_cache(), **_NET)
def evaluate_task(settings: Any, weights: Any, champion_dir: Any, golden: str, round_version: str | None,
                  round_id: str | None, work: Path) -> tuple[Any, Any, list[dict[str, Any]]]:
    from detloop.clients.s3 import S3Store
    from tasks.evaluation import evaluate_pair
    from tasks.slices import build_slices, slice_summary

    slices = build_slices(S3Store(settings), settings, golden, round_version, round_id)
    champ = Path(champion_dir) / "scoring" if champion_dir else None
    ch, cp = evaluate_pair(weights, champ, slices, settings, work_dir=work)
    return ch, cp, slice_summary(slices)


@task(name="register-and-gate", cache_policy=_no_cache(), **_NET)
def register_and_gate(settings: Any, train_result: Any, ch_report: Any, cp_report: Any, dataset_version: str,
                      champion_version: str | None, round_id: str | None) -> tuple[str, Any]:
    """Register the challenger (idempotent per MLflow run) and record the gate decision on it."""
    from tasks.evaluation import gate_scores
    from tasks.promotion import GatePolicy, decide
    from tasks.registry import record_gate, register_challenger

    tags = {"detloop.round_id": round_id} if round_id else {}
    version = register_challenger(settings, train_result.run_id, train_result.weights, ch_report, dataset_version,
                                  champion_version, extra_tags=tags)
    decision = decide(gate_scores(ch_report), gate_scores(cp_report) if cp_report is not None else None,
                      GatePolicy.from_settings(settings.gate))
    record_gate(settings, version, decision, train_result.run_id, champion_version)
    return version, decision


@task(name="promote", cache_policy=_no_cache(), **_NET)
def promote_task(settings: Any, version: str, decision: Any, reason: str, actor: str, override: bool = False) -> Any:
    """Move ``champion`` (idempotent: a version that already is champion is reported, not re-promoted)."""
    from tasks.registry import champion_version, promote

    cur = champion_version(settings)
    if cur is not None and str(cur.version) == str(version):
        return {"action": "noop", "version": str(version), "reason": "already champion"}
    return promote(settings, version, decision, override=override, reason=reason, actor=actor)


# ================================================================================================
# Flows
# ================================================================================================
def _next_round(store: Any, settings: Any, as_of: date, params: SelectParams) -> tuple[str | None, str]:
    """The round id this run works on, or (None, why) when the weekly run should select nothing."""
    from tasks.rounds import list_rounds

    project = settings.label_studio.project_title
    base = round_id_for(project, as_of, params.cameras, params.dates)
    rounds = list_rounds(store, settings)
    mine = sorted(r.round_id for r in rounds if r.round_id == base or r.round_id.startswith(base + "-"))
    open_other = [r.round_id for r in rounds if r.status == "open" and r.round_id not in mine]
    if base in mine and not params.force_new_round:
        return base, "resume"  # a re-run of the same week resumes its round (push is idempotent)
    if open_other and settings.rounds.on_open_round == "skip" and not params.force_new_round:
        return None, f"round(s) {open_other} still open; rounds.on_open_round=skip"
    if not mine:
        return base, "new"
    return round_id_for(project, as_of, params.cameras, params.dates, attempt=len(mine)), "another"


@flow(name="select-for-labeling", log_prints=True)
def select_for_labeling(params: SelectParams = SelectParams()) -> dict[str, Any]:  # noqa: B008
    """Sample the production window -> score with the champion -> select -> push a round to Label Studio."""
    from detloop.clients.s3 import S3Store
    from detloop.settings import parse_as_of
    from tasks.rounds import load_round, mark_round

    log = get_run_logger()
    settings = settings_for(params)
    as_of = parse_as_of(params.as_of)
    store = S3Store(settings)

    # 0. one round per week (unless asked otherwise)
    round_id, why = _next_round(store, settings, as_of, params)
    if round_id is None:
        log.info("nothing selected: %s", why)
        publish_report("select-skipped", f"# Skipped week {as_of}\n\n{why}\n", "select-for-labeling skipped")
        return {"as_of": str(as_of), "skipped": why}
    existing = load_round(store, settings, round_id)
    if existing is not None and existing.status != "open":
        log.info("round %s already %s; nothing to do", round_id, existing.status)
        return {"as_of": str(as_of), "round_id": round_id, "status": existing.status, "resumed": True}

    # 1. the round's selection: the stored one when resuming, else sample -> score -> select
    stored = _stored_selection(store, settings, round_id)
    if stored is not None:
        frames, model_version, stats = stored
        log.info("round %s: resuming with its stored selection of %d frames", round_id, len(frames))
        notes: list[str] = ["resumed: stored selection reused"]
        table = ""
    else:
        made = _make_selection(settings, store, as_of, params, round_id)
        if made is None:
            return {"as_of": str(as_of), "round_id": None, "selected": 0}
        frames, model_version, stats, notes, table = made

    # 2. push the round to Label Studio (deduped on S3 key + round id)
    push = push_round_task(settings, frames, round_id, model_version, as_of)
    mark_round(store, settings, round_id, selection_report_key=f"runs/{round_id}/selection_report.json")

    # 3. report
    summary = {"as_of": str(as_of), "round_id": round_id, "model_version": model_version, **stats,
               "selected": sum(f.arm == "selected" for f in frames), "control": sum(f.arm == "control" for f in frames),
               "imported": push.imported, "already_present": push.already_present, "project_id": push.project_id}
    md = (f"# Round {round_id} ready for labelling\n\n" + md_table([summary]) + "\n"
          + "\n".join(f"- {n}" for n in notes) + "\n\n" + table
          + f"\n\nLabel Studio: {settings.label_studio.url}/projects/{push.project_id}\n")
    publish_report("round-ready", md, f"select-for-labeling {round_id}")
    notify(EVENT_ROUND_READY, f"detloop.round.{round_id}", {"round_id": round_id, "tasks": len(frames)},
           f"round {round_id}: {len(frames)} frames ready in {settings.label_studio.url}")
    return summary


def _stored_selection(store: Any, settings: Any, round_id: str) -> tuple[list[Any], str | None, dict[str, Any]] | None:
    """The selection written by an earlier run of this round (a re-run never re-selects)."""
    from detloop.contracts import SelectedFrame

    bucket, prefix = settings.s3.data_bucket, f"runs/{round_id}/"
    if not (store.exists(bucket, prefix + "selected_frames.json") and store.exists(bucket, prefix + "selection_meta.json")):
        return None
    frames = [SelectedFrame.from_dict(d) for d in store.get_json(bucket, prefix + "selected_frames.json")]
    meta = store.get_json(bucket, prefix + "selection_meta.json")
    return frames, meta.get("model_version"), meta.get("stats", {})


def _make_selection(settings: Any, store: Any, as_of: date, params: SelectParams, round_id: str
                    ) -> tuple[list[Any], str | None, dict[str, Any], list[str], str] | None:
    """Champion scores the sampled window; select; store the selection. None when there is nothing to label."""
    from detloop.datasets import latest_version, load_manifest
    from detloop.errors import DataError
    from tasks.selection import select, write_selection_report

    log = get_run_logger()
    # the champion
    model_dir, model_version, champion_data = fetch_champion(settings)
    if model_dir is None:
        raise DataError(f"no champion in the registry ({settings.mlflow.model_name} at {settings.mlflow.tracking_uri}); "
                        "run the bootstrap flow first (`detloop bootstrap`)")

    # sample production frames
    sample = sample_window(settings, as_of, params.cameras, params.dates, round_id)
    for note in sample.notes:
        log.info(note)
    if not sample.frames:
        md = f"# Week {as_of}: nothing to label\n\n" + "\n".join(f"- {n}" for n in sample.notes or ["empty window"])
        publish_report("select-empty", md, "select-for-labeling: empty window")
        return None

    # score
    scored = score_sample(settings, sample, model_version)

    # select (class balance against what the champion was trained on)
    train_version = champion_data or latest_version(store, settings, "train") or latest_version(store, settings, "seed")
    counts = None
    if train_version and settings.selection.class_balance:
        boxes = load_manifest(store, settings, train_version).box_counts(split="train")
        counts = [int(boxes.get(c, 0)) for c in settings.classes]
    result = select(scored.frames, counts, settings.selection, round_seed=int(config_hash(round_id)[:8], 16),
                    class_names=settings.classes, num_classes=len(settings.classes))
    stats = {"window": list(sample.window), "sampled": len(sample.frames), "quarantined": len(sample.quarantined),
             "duplicates": len(sample.duplicates), "scored": len(scored.frames)}
    store.put_json(settings.s3.data_bucket, f"runs/{round_id}/selection_meta.json",
                   {"model_version": model_version, "stats": stats, "notes": result.notes})
    write_selection_report(store, settings.s3.data_bucket, round_id, result)  # selected_frames.json last of all
    return result.frames, model_version, stats, result.notes, result.markdown(max_rows=30)


@flow(name="watch-rounds", log_prints=True)
def watch_rounds(params: WatchParams = WatchParams()) -> dict[str, Any]:  # noqa: B008
    """Progress of open rounds; close finished or overdue ones; emit round-completed once per round."""
    from prefect.events import emit_event

    from tasks.rounds import watch_rounds as watch

    settings = settings_for(params)
    now = params.now or datetime.now(UTC)
    def emit(**kw: Any) -> Any:
        # the config travels with the event so the triggered retrain uses the same settings
        kw["payload"] = {**(kw.get("payload") or {}), "config": params.config or ""}
        return emit_event(**kw)

    report = watch(settings, now, emit)
    rows = [{"round": r["round_id"], "status": r["status"], **{k: r.get("progress", {}).get(k) for k in
             ("total", "labelled", "skipped", "pending")}, "emitted": r.get("emitted")} for r in report["rounds"]]
    publish_report("watch-rounds", "# Open rounds\n\n" + md_table(rows), "watch-rounds")
    return report


@flow(name="retrain-and-promote", log_prints=True)
def retrain_and_promote(params: RetrainParams) -> dict[str, Any]:
    """Labels of a round -> dataset version -> fine-tune -> evaluate -> register -> gate -> promote or not."""
    from detloop.clients.s3 import S3Store
    from detloop.datasets import materialize
    from detloop.errors import DataError
    from tasks.annotation import build_round_version
    from tasks.rounds import load_round, mark_round

    log = get_run_logger()
    settings = settings_for(params)
    store = S3Store(settings)
    round_id = params.round_id
    result_key = f"rounds/{round_id}/result.json"

    # 0. idempotent by round id
    rec = load_round(store, settings, round_id)
    if rec is None:
        raise DataError(f"round {round_id!r} not found (no s3://{settings.s3.data_bucket}/rounds/{round_id}/round.json)")
    if rec.status == "trained" and store.exists(settings.s3.data_bucket, result_key):
        done = store.get_json(settings.s3.data_bucket, result_key)
        log.info("round %s was already trained: version %s, %s", round_id, done.get("version"), done.get("outcome"))
        return {**done, "resumed": True}
    if rec.status == "open":
        raise DataError(f"round {round_id} is still open ({rec.counts}); wait for watch-rounds to close it")

    # 1. labels back from Label Studio, validated, frames copied to content-addressed storage
    pulled = pull_labels(settings, round_id)

    # 2. a new immutable dataset version: the champion's training data + this round
    champion_dir, champion_version, champion_data = fetch_champion(settings)
    golden = _golden_version(store, settings)
    version_id, _manifest, ds_report = build_round_version(store, settings, round_id, pulled.entries,
                                                           parent_id=champion_data or "latest", golden_id=golden)

    # 3. fine-tune the champion on it
    init = Path(champion_dir) / "weights" / "best.pt" if champion_dir else None
    data_yaml = materialize(store, settings, version_id, oversample=settings.training.oversample_factor)
    trained = train_task(settings, data_yaml, init, f"round-{round_id}", {"detloop.round_id": round_id},
                         version_id, champion_version)

    # 4. evaluate challenger and champion on the same slices
    ch, cp, slices = evaluate_task(settings, trained.weights, champion_dir, golden, version_id, round_id,
                                   settings.data_dir / "eval" / f"round-{round_id}")

    # 5. register and gate
    version, decision = register_and_gate(settings, trained, ch, cp, version_id, champion_version, round_id)

    # 6. promote, or not
    promotion = None
    if decision.promote:
        promotion = promote_task(settings, version, decision, reason=f"gate passed on round {round_id}",
                                 actor="detloop:retrain-and-promote")

    # 7. record and report
    summary = _round_summary(round_id, rec, pulled, ds_report, trained, ch, cp, version, champion_version, decision,
                             promotion, golden, slices)
    store.put_json(settings.s3.data_bucket, result_key, summary)
    mark_round(store, settings, round_id, status="trained", dataset_version=version_id)
    publish_report("retrain-and-promote", _round_markdown(summary, decision), f"retrain-and-promote {round_id}")
    if promotion or not decision.passed:
        event = EVENT_MODEL_PROMOTED if promotion else EVENT_GATE_FAILED
        notify(event, f"detloop.model.{settings.mlflow.model_name}.{version}",
               {"version": version, "round_id": round_id, "outcome": decision.outcome},
               f"version {version} from round {round_id}: {decision.outcome}")
    return summary


def _golden_map(report: Any) -> float | None:
    if report is None:
        return None
    sm = report.slices.get("golden")
    return None if sm is None else sm.overall.map


def _round_summary(round_id: str, rec: Any, pulled: Any, ds_report: dict[str, Any], trained: Any, ch: Any, cp: Any,
                   version: str, champion_version: str | None, decision: Any, promotion: Any, golden: str,
                   slices: list[dict[str, Any]]) -> dict[str, Any]:
    rep = pulled.report
    return {
        "round_id": round_id, "as_of": rec.as_of, "labelled_frames": len(pulled.frames),
        "labelled_boxes": int(sum(len(f.detections) for f in pulled.frames)),
        "hard_frames": int(sum(bool(f.hard) for f in pulled.frames)), "labels_report": rep,
        "dataset_version": ds_report.get("version"), "dataset": ds_report, "golden_version": golden,
        "run_id": trained.run_id, "train_seconds": trained.train_seconds, "train_reused": trained.reused,
        "version": version, "champion_version": champion_version,
        "golden_map_challenger": _golden_map(ch), "golden_map_champion": _golden_map(cp),
        "latency_ms_challenger": ch.latency_ms, "latency_ms_champion": cp.latency_ms if cp is not None else None,
        "outcome": decision.outcome, "reasons": decision.reasons, "promoted": bool(promotion and
                                                                                  promotion.get("action") != "noop"),
        "slices": slices,
    }


def _round_markdown(s: dict[str, Any], decision: Any) -> str:
    row = {k: s.get(k) for k in ("round_id", "labelled_frames", "labelled_boxes", "hard_frames", "dataset_version",
                                 "version", "golden_map_champion", "golden_map_challenger", "outcome")}
    return (f"# Round {s['round_id']}: {s['outcome']}\n\n" + md_table([row]) + "\n## Slices\n\n"
            + md_table(s["slices"]) + "\n" + decision.to_markdown())


@flow(name="bootstrap", log_prints=True)
def bootstrap(params: BootstrapParams = BootstrapParams()) -> dict[str, Any]:  # noqa: B008
    """First champion: train the model YAML on the seed dataset version, evaluate, register, gate, promote."""
    from detloop.clients.s3 import S3Store
    from detloop.datasets import latest_version, materialize
    from detloop.errors import DataError

    log = get_run_logger()
    settings = settings_for(params)
    store = S3Store(settings)

    # 0. already bootstrapped?
    champion_dir, champion_version, _ = fetch_champion(settings)
    if champion_dir is not None:
        log.info("champion v%s exists; bootstrap is not needed", champion_version)
        return {"version": champion_version, "outcome": "exists", "resumed": True}

    # 1. the seed dataset version
    seed = params.dataset_version or latest_version(store, settings, "seed")
    if seed is None:
        raise DataError("bootstrap needs a seed dataset version (`detloop world seed`)")
    golden = _golden_version(store, settings)
    data_yaml = materialize(store, settings, seed)

    # 2. train from the model YAML
    trained = train_task(settings, data_yaml, None, f"bootstrap-{seed}", {"detloop.bootstrap": "true"}, seed, None)

    # 3. evaluate on the golden set, register, gate (absolute floor), promote
    ch, _cp, slices = evaluate_task(settings, trained.weights, None, golden, None, None,
                                    settings.data_dir / "eval" / f"bootstrap-{seed}")
    version, decision = register_and_gate(settings, trained, ch, None, seed, None, None)
    promotion = None
    if decision.promote:
        promotion = promote_task(settings, version, decision, reason="bootstrap passed the floor",
                                 actor="detloop:bootstrap")
    summary = {"version": version, "seed_version": seed, "golden_version": golden, "run_id": trained.run_id,
               "train_seconds": trained.train_seconds, "golden_map": _golden_map(ch), "outcome": decision.outcome,
               "reasons": decision.reasons, "promoted": promotion is not None, "slices": slices}
    publish_report("bootstrap", "# Bootstrap\n\n" + md_table([{k: v for k, v in summary.items() if k != "slices"}])
                   + "\n" + decision.to_markdown(), "bootstrap")
    return summary


@flow(name="promote", log_prints=True)
def promote(params: PromoteParams) -> dict[str, Any]:
    """Manually make a version champion (``override`` forces a failed gate; who and why are logged)."""
    import getpass

    settings = settings_for(params)
    entry = promote_task(settings, params.version, None, params.reason, params.who or getpass.getuser(),
                         override=params.override)
    publish_report("promote", "# Promotion\n\n" + md_table([entry]), "promote")
    notify(EVENT_MODEL_PROMOTED, f"detloop.model.{settings.mlflow.model_name}.{params.version}", entry,
           f"version {params.version} promoted by {entry.get('actor')}: {params.reason}")
    return entry


@flow(name="rollback", log_prints=True)
def rollback(params: RollbackParams) -> dict[str, Any]:
    """Restore ``previous-champion`` as ``champion``."""
    import getpass

    from tasks.registry import rollback as do_rollback

    settings = settings_for(params)
    entry = do_rollback(settings, reason=params.reason, actor=params.who or getpass.getuser())
    publish_report("rollback", "# Rollback\n\n" + md_table([entry]), "rollback")
    notify(EVENT_MODEL_PROMOTED, f"detloop.model.{settings.mlflow.model_name}.{entry['version']}", entry,
           f"rolled back to version {entry['version']}: {params.reason}")
    return entry
