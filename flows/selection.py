"""The selection pipeline, composed once: sample the production window -> score with the champion -> select.

:func:`select_frames` is a Prefect flow: the weekly ``select-for-labeling`` flow runs it as a subflow, and
``detloop select run`` runs it by hand. Its parameters are plain (config path and overrides, dates,
cameras), so it appears in the Prefect UI as its own run; it builds its settings and clients once.

Scoring is cached in S3 by content (window, frames + etags, model version, model config): a re-run reads
the stored predictions instead of scoring again. An S3 outage fails the scoring step (retried by the
flow's policy) and caches nothing; only frames that are themselves bad are quarantined.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from prefect import flow, get_run_logger

from flows import steps
from flows.common import chunks, make_task_runner, retrying, run_name, run_settings


@dataclass
class SelectionRun:
    """Everything one selection run produced (keys are in the data bucket)."""

    run_id: str
    as_of: str
    model: str  # the scoring model's label (``v<version>`` or a path)
    model_version: str | None  # registry version, None for a model given by path
    sample: Any  # tasks.sampling.SampleResult
    scoring: Any  # tasks.scoring.ScoringResult
    result: Any  # tasks.selection.SelectionResult (None when the window was empty)
    keys: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def stats(self) -> dict[str, Any]:
        s = self.sample
        return {"window": list(s.window), "sampled": len(s.frames), "quarantined": len(s.quarantined),
                "duplicates": len(s.duplicates), "scored": len(self.scoring.frames) if self.scoring else 0}


def content_key(*parts: Any) -> str:
    """A short hash of JSON-able parts (cache keys of stored predictions)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def predictions_cache_prefix(settings: Any, sample: Any, model: Any, committee: Any = None, tta: bool = False) -> str:
    """Where the predictions of ``sample`` scored by ``model`` are stored: keyed by the frames (keys and
    etags), the model's content, the committee, TTA and the model settings. A registry version is a number
    of the configured model (``mlflow.model_name``): the name is in the key, so two models sharing a data
    bucket never read each other's predictions."""
    from tasks.scoring import predictions_prefix

    model_id = model.content_id()
    parts: list[Any] = [sorted((f.key, f.etag) for f in sample.frames), model_id,
                        committee.content_id() if committee else None, tta, settings.model.model_dump(mode="json")]
    if model.version is not None or (committee is not None and committee.version is not None):
        parts.append(settings.mlflow.model_name)  # files are keyed by their hash already
    key = content_key(*parts)
    return predictions_prefix(sample.window[0], sample.window[1], model_id) + f"sample={key}/"


def score_sample(settings: Any, clients: Any, sample: Any, model: Any, committee: Any = None,
                 tta: bool = False, write: bool = True) -> Any:
    """Score the sample on the configured task runner (chunks on Dask, one task on threads); cached in S3.

    Args:
        model, committee: :class:`tasks.scoring.ModelRef` (a registry version, or a file keyed by its hash).

    Returns:
        :class:`tasks.scoring.ScoringResult`, its ``keys`` naming the stored predictions.
    """
    from tasks.scoring import ScoringResult, read_predictions, write_predictions

    store, bucket = clients.store, settings.s3.data_bucket
    prefix = predictions_cache_prefix(settings, sample, model, committee, tta)
    if store.exists(bucket, prefix + "meta.json"):
        from detloop.contracts import Quarantined

        keys = {"predictions": prefix + "predictions.jsonl", "meta": prefix + "meta.json"}
        quarantined = [Quarantined.from_dict(q) for q in store.get_json(bucket, keys["meta"]).get("quarantined", [])]
        return ScoringResult(read_predictions(store, bucket, prefix), quarantined, {"cached": 1.0}, model.label, keys)
    parts = chunks(sample.frames, settings)
    threads = settings.prefect.task_runner == "threads"
    # in this process: the run's clients and retry policy; on Dask the module-level task itself (a copy made by
    # with_options does not pickle by reference) with its default retries, and clients built on the worker
    score_chunk = retrying(steps.score_chunk, settings) if threads else steps.score_chunk
    local = clients if threads else None
    with make_task_runner(settings) as runner:
        futures = [runner.submit(score_chunk, {"settings": settings, "frames": c, "model": model,
                                               "committee": committee, "tta": tta, "clients": local})
                   for c in parts]
        results = [f.result() for f in futures]
    result = ScoringResult(
        frames=[f for r in results for f in r.frames], quarantined=[q for r in results for q in r.quarantined],
        timings={k: sum(r.timings.get(k, 0.0) for r in results) for k in {k for r in results for k in r.timings}},
        model=model.label,
    )
    result.timings["chunks"] = float(len(parts))
    if write:
        result.keys = write_predictions(store, bucket, prefix, result, settings.classes)  # meta.json last
    return result


@dataclass(frozen=True)
class LabelledSet:
    """The labelled dataset version selection weighs against, with its manifest (read once per run)."""

    version: str
    manifest: Any


def labelled_set(settings: Any, clients: Any, dataset_version: str | None) -> LabelledSet | None:
    """``dataset_version`` (the champion's training version), else the newest labelled version; None when
    nothing is labelled yet. With ``rounds.carry_labels`` its manifest also holds the labels of earlier rounds
    it lacks (what the next retrain will train on: :func:`tasks.round_version.carried_entries`), so class
    balance and the rare-class search count every label paid for."""
    from tasks.selection import labelled_version

    version = labelled_version(clients.store, settings, dataset_version)
    if version is None:
        return None
    manifest = retrying(steps.load_dataset_manifest, settings)(settings, clients, version)
    if settings.rounds.carry_labels:
        manifest = retrying(steps.with_carried_labels, settings)(settings, clients, manifest, version)
    return LabelledSet(version, manifest)


def rare_class_exemplars(settings: Any, clients: Any, model: Any, labelled: LabelledSet | None,
                         classes: list[int], notes: list[str]) -> dict[int, Any] | None:
    """Embeddings, by the scoring ``model``, of labelled frames holding each of ``classes`` (classes the model
    never detects in the sample): what the rare-class search compares the pool with.

    The frames come from ``labelled`` (:func:`labelled_set`), at most
    ``selection.rare_search.exemplars_per_class`` per class; they are scored like the sample (same model, same
    settings; not cached: a few frames). A note says what was embedded, or why nothing could be.
    """
    from detloop.contracts import FrameRef
    from detloop.datasets import blob_key
    from tasks.acquisition import exemplar_embeddings, exemplar_entries

    names = ", ".join(settings.classes[c] for c in classes)
    if labelled is None:
        notes.append(f"rare-class search: no labelled dataset version to take examples of {names} from")
        return None
    version = labelled.version
    chosen = exemplar_entries(labelled.manifest.entries, classes, settings.selection.rare_search.exemplars_per_class,
                              settings.selection.seed)
    entries = {e.frame_sha: e for es in chosen.values() for e in es}
    if not entries:
        notes.append(f"rare-class search: dataset version {version} holds no usable frame of {names}")
        return None
    bucket = settings.s3.data_bucket
    refs = [FrameRef(bucket, blob_key(e.frame_sha, e.ext), e.frame_sha, e.camera, e.date) for e in entries.values()]
    scored = retrying(steps.score_chunk, settings)(settings, refs, model, clients=clients)
    # a ref's etag is its frame hash: quarantined frames are simply absent
    embedding_of = {f.frame.etag: f.embedding for f in scored.frames if f.embedding is not None}
    out = exemplar_embeddings(chosen, embedding_of)
    notes.append(f"rare-class search: {len(embedding_of)} labelled frame(s) of {names} from dataset version "
                 f"{version} embedded by {model.label}")
    return out or None


def error_weights(settings: Any, clients: Any, champion: Any, notes: list[str]) -> dict[str, Any] | None:
    """With ``selection.error_weighting.enabled``: the weights of the champion's latest stored error breakdown
    (``errors/<model>/v<version>.json``, written by each round's evaluation), with their ``source``; None, with
    a note, when the champion has none stored (or the model is given by path) or the weighting is off."""
    from tasks.error_analysis import breakdown_key, selection_weights

    ew = settings.selection.error_weighting
    if not ew.enabled:
        return None
    if champion is None:
        notes.append("error weighting: the scoring model is given by path and has no stored error breakdown")
        return None
    stored = retrying(steps.read_errors, settings)(settings, clients, champion.version)
    if stored is None or ew.slice not in stored.get("breakdowns", {}):
        notes.append(f"error weighting: no {ew.slice} breakdown of champion v{champion.version} stored yet "
                     f"(s3://{settings.s3.data_bucket}/{breakdown_key(settings.mlflow.model_name, champion.version)}"
                     ": written by a round's evaluation of that version)")
        return None
    source = {"version": str(champion.version), "slice": ew.slice, **stored.get("source", {})}
    return {**selection_weights(stored["breakdowns"], ew), "source": source}


def outcome_rates(settings: Any, clients: Any, notes: list[str]) -> Any:
    """Labelling outcome rates fitted on the recent rounds' ledgers (``selection.cost.calibration``), or None."""
    from detloop.label_cost import fit_outcome_rates

    cal = settings.selection.cost.calibration
    if cal is None:
        return None
    tally, used = retrying(steps.outcome_ledger, settings)(settings, clients, cal.rounds)
    if not used:
        notes.append("cost calibration: no labelled round with an outcome ledger yet; expected seconds take "
                     "confidences as probabilities")
        return None
    notes.append(f"cost calibration: outcome ledgers of {len(used)} round(s) ({', '.join(used)})")
    return fit_outcome_rates(tally, cal.prior_boxes)


@flow(name="select-frames", flow_run_name=run_name("select-frames", "run_id"), log_prints=True)
def select_frames(
    as_of: date,
    run_id: str,
    config: str | None = None,
    overrides: dict[str, Any] | None = None,
    cameras: list[str] | None = None,
    dates: list[date] | None = None,
    model_path: str | None = None,
    labelled_counts: list[int] | None = None,
    write: bool = True,
    camera_dates: dict[str, list[date]] | None = None,
) -> SelectionRun:
    """Sample the window ending at ``as_of``, score it with the champion (or ``model_path``), select.

    Args:
        as_of: end of the window (exclusive).
        run_id: the round id (or a by-hand run id): manifests and reports go under ``runs/<run_id>/``, and
            the selection's random draws are seeded by it (a re-run draws the same).
        config, overrides: the settings (config file, then nested overrides such as a run's budget).
        cameras, dates: optional focus of the sample; ``camera_dates``: a named camera's own dates instead of
            ``dates`` (a drift round's re-asked camera, :func:`flows.drift.targeted_round`).
        model_path: score with this artifact directory or ``.pt`` instead of the registry's champion.
        labelled_counts: boxes per class in the labelled set; None: counted in the champion's training data.
        write: write manifests, predictions and the reports to S3 (False: look only).

    Raises:
        NotFound: no champion (and no ``model_path``), with what to do.
    """
    from detloop.clients import Clients
    from detloop.errors import NotFound
    from tasks.scoring import ModelRef
    from tasks.selection import class_counts, missing_classes, select, write_selection
    from tasks.strategies import get_strategy

    log = get_run_logger()
    settings = run_settings(config, overrides)
    clients = Clients.from_settings(settings)
    strategy = get_strategy(settings.selection.strategy)
    notes: list[str] = []

    # 1. the model that scores: the champion, or a model given by hand
    fetch = retrying(steps.fetch_champion, settings)
    champion = None
    if model_path:
        model = ModelRef(path=model_path)
    else:
        champion = fetch(settings, clients)
        if champion is None:
            raise NotFound(f"no champion in the registry ({settings.mlflow.model_name} at "
                           f"{settings.mlflow.tracking_uri}); run the bootstrap flow first (`detloop bootstrap`)")
        model = ModelRef(version=champion.version)
    committee = None
    if strategy.needs == "committee":
        previous = fetch(settings, clients, settings.selection.committee_alias)
        if previous is None:
            notes.append(f"committee: no @{settings.selection.committee_alias} model to compare with")
        else:
            committee = ModelRef(version=previous.version)

    # 2. sample production frames
    sample = retrying(steps.sample_window, settings)(settings, clients, as_of, cameras, dates,
                                                     run_id if write else None, camera_dates=camera_dates)
    notes += sample.notes + [f"{c} sampled its own days {', '.join(str(d) for d in ds)} (its drifted days since "
                             "its last round)" for c, ds in sorted((camera_dates or {}).items()) if ds]
    for note in notes:
        log.info(note)
    if settings.selection.exclude_sent and sample.frames:  # a frame is labelled (and paid for) once
        from tasks.rounds import without_sent

        sent = retrying(steps.frames_sent_before, settings)(settings, clients, run_id)
        sample.frames, n_sent = without_sent(sample.frames, sent)
        if n_sent:
            sample.stats["already_sent"] = n_sent
            notes.append(f"{n_sent} sampled frame(s) left out: already sent to labelling in an earlier round")
            log.info(notes[-1])
    if not sample.frames:
        return SelectionRun(run_id, as_of.isoformat(), model.label, model.version, sample, None, None, {}, notes)

    # 3. score
    scored = score_sample(settings, clients, sample, model, committee, tta=strategy.needs == "tta", write=write)
    if scored.quarantined:
        notes.append(f"{len(scored.quarantined)} frame(s) quarantined while scoring "
                     f"(s3://{settings.s3.data_bucket}/runs/{run_id}/selection_report.json, 'quarantined')")

    # 4. select: uncertainty x class balance, diversity, the random control arm, the rare-class search
    rare = settings.selection.rare_search
    search = rare.enabled and rare.share > 0
    trained_on = champion.dataset_version if champion is not None else None
    labelled = functools.cache(lambda: labelled_set(settings, clients, trained_on))  # read at most once
    if labelled_counts is None and (settings.selection.class_balance or search):
        labelled_counts = None if labelled() is None else class_counts(labelled().manifest, settings.classes)
        if labelled_counts is None:
            notes.append("class balance: no labelled dataset version found; all classes weigh the same")
    exemplars = None
    quality = champion.golden_map50 if champion is not None else None
    if search:
        missing = missing_classes(scored.frames, labelled_counts, settings.selection, len(settings.classes), quality)
        if missing:
            exemplars = rare_class_exemplars(settings, clients, model, labelled(), missing, notes)
    from tasks.rounds import round_seed

    slice_weights = error_weights(settings, clients, champion, notes)  # None unless error_weighting.enabled
    rates = outcome_rates(settings, clients, notes)  # None unless selection.cost.calibration
    result = select(scored.frames, labelled_counts, settings.selection, round_seed=round_seed(run_id),
                    class_names=settings.classes, num_classes=len(settings.classes), cost=settings.labelling_cost,
                    champion_quality=quality,
                    class_exemplars=exemplars, slice_weights=slice_weights, outcome_rates=rates)
    result.notes[:0] = notes
    result.report["notes"] = result.notes
    result.report.update(run_id=run_id, as_of=as_of.isoformat(), model=model.label, sample=sample.stats,
                         quarantined=[q.to_dict() for q in sample.quarantined + scored.quarantined],
                         scoring_timings={k: round(v, 3) for k, v in scored.timings.items()})
    run = SelectionRun(run_id, as_of.isoformat(), model.label, model.version, sample, scored, result, {},
                       result.notes)
    run.keys.update({f"predictions_{k}": v for k, v in scored.keys.items()})
    if sample.manifest_key:
        run.keys.update(sample_manifest=sample.manifest_key, quarantine=sample.quarantine_key or "")
    if write:  # the stored selection is what a re-run of the round resumes with (written last)
        run.keys.update(write_selection(clients.store, settings.s3.data_bucket, run_id, result,
                                        {"model_version": model.version, "stats": run.stats}))
    log.info("selected %d + %d control of %d scored frames with %s", len(result.selected), len(result.control),
             len(scored.frames), model.label)
    return run
