"""The loop's Prefect tasks: the units worth retrying (they call a service) or running apart (scoring chunks).

Each wraps one ``tasks/`` function, passing the run's settings and clients down. Retries are the flows'
one retry layer: only :class:`~detloop.errors.ServiceUnavailable` is retried (``flows.common.retry_on_network``),
with ``prefect.retries`` / ``prefect.retry_delays_seconds`` (see :func:`flows.common.retrying`). Nothing
is cached by Prefect: the expensive results have their own content keys in S3 and MLflow.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from flows.common import NETWORK_RETRIES, NETWORK_RETRY_DELAYS, retry_on_network

NET: dict[str, Any] = {"retries": NETWORK_RETRIES, "retry_delay_seconds": NETWORK_RETRY_DELAYS,
                       "retry_condition_fn": retry_on_network, "cache_policy": NO_CACHE}


@task(name="fetch-champion", **NET)
def fetch_champion(settings: Any, clients: Any, alias: str = "champion") -> Any:
    """The model behind ``alias`` (:class:`tasks.registry.Champion`), fetched once per version; None when none."""
    from tasks.registry import fetch_champion as fetch

    return fetch(settings, clients.registry, alias)


@task(name="check-champion", **NET)
def check_champion(settings: Any, clients: Any) -> Any:
    """The ``champion`` alias against the promotion log (:class:`tasks.registry.ChampionCheck`); a promotion of
    detloop's own whose log line an outage lost is logged now (not mistaken for a move in MLflow's UI)."""
    from tasks.registry import check_champion as check
    from tasks.registry import log_promotion_if_missing

    got = check(settings, clients.registry, clients.store)
    if got.unlogged and got.alias_version is not None:
        mv = clients.registry.get_version(got.alias_version)
        log_promotion_if_missing(settings, clients.registry, clients.store, got.alias_version,
                                 "promoted by detloop; its promotion-log line was lost to an outage",
                                 (mv.tags or {}).get("detloop.promoted_by") or "detloop")
        got = check(settings, clients.registry, clients.store)
    return got


@task(name="fetch-round-version", **NET)
def fetch_round_version(settings: Any, clients: Any, round_id: str) -> Any:
    """The version an earlier run of ``round_id`` registered, fetched (:class:`tasks.registry.Champion`), or None."""
    from tasks.registry import Champion, load_champion
    from tasks.rounds import version_of_round

    mv = version_of_round(clients.registry, round_id)
    if mv is None:
        return None
    local = load_champion(settings, clients.registry, version=str(mv.version))
    return Champion(str(mv.version), local, getattr(mv, "run_id", None),
                    (mv.tags or {}).get("detloop.dataset_version") or None)


@task(name="sample-window", **NET)
def sample_window(settings: Any, clients: Any, as_of: date, cameras: list[str] | None, dates: list[date] | None,
                  run_id: str | None, dedup: bool = True, camera_dates: dict[str, list[date]] | None = None) -> Any:
    from tasks.sampling import sample

    return sample(settings, as_of, clients.store, cameras=cameras, dates=dates, run_id=run_id, dedup=dedup,
                  camera_dates=camera_dates)


@task(name="frames-sent-before", **NET)
def frames_sent_before(settings: Any, clients: Any, round_id: str) -> set[str]:
    """Keys of the frames this project's other rounds sent to labelling."""
    from tasks.rounds import sent_keys

    return sent_keys(clients.store, settings, exclude_round=round_id)


@task(name="outcome-ledger", **NET)
def outcome_ledger(settings: Any, clients: Any, last: int) -> tuple[Any, list[str]]:
    """The labelling-outcome ledger of the ``last`` most recent pulled rounds (:func:`tasks.rounds.outcome_ledger`)."""
    from tasks.rounds import outcome_ledger as ledger

    return ledger(clients.store, settings, last)


@task(name="score-chunk", **NET)
def score_chunk(settings: Any, frames: list[Any], model: Any, committee: Any = None, tta: bool = False,
                clients: Any = None) -> Any:
    """Score one chunk of the sample (:class:`tasks.scoring.ScoringResult`).

    ``model`` / ``committee`` are :class:`tasks.scoring.ModelRef`. Runs wherever the task runner puts it: in the
    flow's process it uses the run's ``clients``; on a Dask worker (``clients`` None: clients do not travel
    between processes) it builds its own, and fetches the registry version into that machine's ``data_dir``
    once per version.
    """
    from detloop.clients import Clients
    from tasks.scoring import score_with

    return score_with(settings, clients or Clients.from_settings(settings), frames, model, committee, tta)


@task(name="push-round", **NET)
def push_round(settings: Any, clients: Any, frames: list[Any], round_id: str, model_version: str | None,
               as_of: date) -> Any:
    """Push the round's tasks to Label Studio; idempotent, so a retry after a lost answer duplicates nothing."""
    from tasks.annotation import push_round as push

    return push(settings, frames, round_id, model_version, as_of.isoformat(), clients.labels, clients.store)


@task(name="pull-labels", **NET)
def pull_labels(settings: Any, clients: Any, round_id: str) -> Any:
    from tasks.annotation import pull_round

    return pull_round(settings, round_id, clients.labels, clients.store)


@task(name="late-edits", **NET)
def late_edits(settings: Any, clients: Any, round_id: str) -> Any:
    """Annotations of earlier, trained rounds edited since their pull (:class:`tasks.late_edits.LateEdits`)."""
    from tasks.annotation import ensure_project, read_round_tasks
    from tasks.late_edits import collect_late_edits

    project = ensure_project(settings, clients.labels)
    return collect_late_edits(settings, clients.store, lambda rid: read_round_tasks(
        settings, rid, clients.labels, clients.store, project.id), exclude=round_id)


@task(name="build-dataset-version", **NET)
def build_dataset_version(settings: Any, clients: Any, round_id: str, entries: list[Any], parent_id: str | None,
                          golden_id: str) -> Any:
    """The round's immutable dataset version (content-addressed: a re-run finds the same id)."""
    from tasks.round_version import build_round_version

    return build_round_version(clients.store, settings, round_id, entries, parent_id=parent_id or "latest",
                               golden_id=golden_id)


@task(name="with-carried-labels", **NET)
def with_carried_labels(settings: Any, clients: Any, manifest: Any, version_id: str) -> Any:
    """``manifest`` plus the labelled frames of this project's rounds it lacks (in memory; nothing is written)."""
    from detloop.datasets import build_version
    from tasks.round_version import carried_for

    carried, rounds = carried_for(clients.store, settings, "", manifest, version_id)
    if not carried:
        return manifest
    return build_version(manifest.kind, manifest.classes, carried, parent=manifest, parent_id=version_id,
                         rounds=rounds)


@task(name="load-dataset-manifest", **NET)
def load_dataset_manifest(settings: Any, clients: Any, version_id: str) -> Any:
    """The manifest of a dataset version (:class:`detloop.datasets.DatasetManifest`)."""
    from detloop.datasets import load_manifest

    return load_manifest(clients.store, settings, version_id)


@task(name="unseen-camera-frames", **NET)
def unseen_camera_frames(settings: Any, clients: Any, camera: str, trained_version: str | None,
                         since: str | None = None, version: str | None = None) -> tuple[list[Any], dict[str, int]]:
    """A camera's labelled frames a model trained on ``trained_version`` never saw (:func:`tasks.tiling_check.
    camera_items`), downloaded, with their count per split."""
    from tasks.tiling_check import camera_items

    return camera_items(clients.store, settings, camera, trained_version, since, version)


@task(name="add-synthetic", **NET)
def add_synthetic(settings: Any, clients: Any, version_id: str) -> tuple[str, Any, dict[str, Any]]:
    """The version plus copy-paste train frames of its rare classes (``training.copy_paste``; deterministic)."""
    from tasks.copy_paste import add_synthetic as add

    return add(clients.store, settings, version_id)


@task(name="sample-weights", **NET)
def sample_weights(settings: Any, clients: Any, version_id: str, champion: Any) -> tuple[dict[str, int], dict[str, Any]]:
    """Per-frame repeats of the train list (``training.sample_weights``: mining runs the champion over it)."""
    from tasks.sample_weights import train_repeats

    mine = settings.training.sample_weights.mining and champion is not None
    return train_repeats(clients.store, settings, version_id, champion.scoring_dir if mine else None)


@task(name="materialize", **NET)
def materialize(settings: Any, clients: Any, version_id: str, oversample: int = 1,
                repeats: dict[str, int] | None = None) -> Path:
    from detloop.datasets import materialize as mat

    return mat(clients.store, settings, version_id, oversample=oversample, repeats=repeats)


@task(name="train", retry_condition_fn=retry_on_network, retries=NETWORK_RETRIES,
      retry_delay_seconds=NETWORK_RETRY_DELAYS, cache_policy=NO_CACHE)
def train(settings: Any, clients: Any, data_yaml: Path, init_weights: Path | None, run_name: str,
          tags: dict[str, str], dataset_version: str, parent_version: str | None, epochs: int | None = None) -> Any:
    """Train (idempotent by input hash: a finished MLflow run with the same inputs is reused).

    One training at a time per model (a lease in the object store, on any host): a second one waits for the first,
    up to the training timeout.
    """
    import time

    from prefect import get_run_logger

    from detloop.errors import LockBusy
    from tasks.training import train as do_train

    deadline = time.monotonic() + settings.training.timeout_minutes * 60
    while True:
        try:
            return do_train(data_yaml, settings, clients.registry, init_weights, run_name, tags=tags,
                            dataset_version=dataset_version, parent_version=parent_version, epochs=epochs,
                            store=clients.store)
        except LockBusy as err:
            if time.monotonic() > deadline:
                raise
            get_run_logger().info("%s; waiting", err)
            time.sleep(15)


@task(name="evaluate", **NET)
def evaluate(settings: Any, clients: Any, weights: Path, champion: Any, golden: str, round_version: str | None,
             round_id: str | None, work: Path) -> tuple[Any, Any, list[dict[str, Any]]]:
    """Challenger and champion on the same slices: ``(challenger report, champion report or None, slices)``."""
    from tasks.eval_plots import plots_for_report
    from tasks.evaluation import evaluate_pair
    from tasks.slices import build_slices, drift_focus, slice_summary

    focus = drift_focus(clients.store, settings, round_id)  # a drift round adds its drifted cameras' slice
    slices = build_slices(clients.store, settings, golden, round_version, round_id, focus)
    ch, cp = evaluate_pair(weights, champion.scoring_dir if champion else None, slices, settings, work_dir=work)
    plots_for_report(ch, slices, settings.classes, Path(work) / "plots")  # logged to the run by `register`
    from tasks.error_analysis import write_pair_breakdowns

    # the champion's (logged to the run by `log_errors`) and, when the selection weighs by errors, the
    # challenger's; both stored per version by `store_errors`
    write_pair_breakdowns(ch, cp, slices, settings, Path(work) / "errors")
    return ch, cp, slice_summary(slices)


@task(name="log-errors", **NET)
def log_errors(settings: Any, clients: Any, run_id: str, report: Any) -> None:
    """The champion's error breakdown (metrics ``champion_errors.*``, a table and a plot) on the round's MLflow run."""
    from tasks.error_analysis import log_breakdown

    log_breakdown(clients.registry, run_id, report)


@task(name="store-errors", **NET)
def store_errors(settings: Any, clients: Any, reports: dict[str, Any], source: dict[str, Any]) -> list[str]:
    """Store each evaluated model version's error breakdown (``reports``: version -> its EvalReport) as that
    version's latest (``errors/<model>/v<version>.json``), where the selection's error weighting finds the
    champion's; reports without a breakdown are skipped. Returns the keys written."""
    from tasks.error_analysis import store_breakdown

    return [store_breakdown(clients.store, settings.s3.data_bucket, settings.mlflow.model_name, v, rep.error_breakdown,
                            {**source, "role": role})
            for v, (role, rep) in reports.items() if rep is not None and rep.error_breakdown]


@task(name="read-errors", **NET)
def read_errors(settings: Any, clients: Any, version: str) -> dict[str, Any] | None:
    """Model ``version``'s latest stored error breakdown (what :func:`store_errors` wrote), or None."""
    from tasks.error_analysis import read_breakdown

    return read_breakdown(clients.store, settings.s3.data_bucket, settings.mlflow.model_name, version)


@task(name="register", **NET)
def register(settings: Any, clients: Any, run_id: str, weights: Path, report: Any, dataset_version: str | None,
             parent_version: str | None, extra_tags: dict[str, str]) -> str:
    """Register the evaluated artifact (``report.artifact``) as a version; idempotent per MLflow run."""
    from tasks.registry import register_challenger

    return register_challenger(settings, clients.registry, run_id, weights, Path(report.artifact), report,
                               dataset_version, parent_version, extra_tags)


@task(name="record-gate", **NET)
def record_gate(settings: Any, clients: Any, version: str, decision: Any, run_id: str,
                champion_version: str | None) -> None:
    from tasks.registry import record_gate as record

    record(clients.registry, version, decision, run_id, champion_version)


@task(name="promote", **NET)
def promote(settings: Any, clients: Any, version: str, decision: Any, reason: str, actor: str,
            override: bool = False) -> dict[str, Any]:
    """Move ``champion`` (idempotent: a version that already is champion is reported, not re-promoted)."""
    from tasks.registry import champion_version, logged_champion
    from tasks.registry import promote as do_promote

    cur = champion_version(clients.registry)
    if cur is not None and str(cur.version) == str(version):
        recorded = logged_champion(clients.store, settings, clients.registry.model_name) == str(version)
        if not override or recorded:
            # a gated re-run finding its version in place: a crash lost the log line after the alias moved
            # (an override instead records, below, a champion someone set in MLflow's UI)
            from tasks.registry import log_promotion_if_missing

            if not recorded:
                log_promotion_if_missing(settings, clients.registry, clients.store, str(version), reason, actor)
            return {"action": "noop", "version": str(version), "reason": "already champion"}
    return do_promote(settings, clients.registry, clients.store, version, decision, override=override,
                      reason=reason, actor=actor)


@task(name="rollback", **NET)
def rollback(settings: Any, clients: Any, reason: str, actor: str) -> dict[str, Any]:
    from tasks.registry import rollback as do_rollback

    return do_rollback(settings, clients.registry, clients.store, reason=reason, actor=actor)


# ---- drift monitoring ------------------------------------------------------------------------------------------
@task(name="drift-anchor", **NET)
def drift_anchor(settings: Any, clients: Any, version: str) -> tuple[date | None, str]:
    """The production day champion ``version`` took over, and how it was found (its reference ends there)."""
    from tasks.drift_records import champion_anchor

    return champion_anchor(clients.store, settings, clients.registry, version)


@task(name="live-accuracy", **NET)
def live_accuracy(settings: Any, clients: Any, champion: Any, carried: dict[str, str] | None = None) -> Any:
    """The champion on the labelled control frames of recent rounds (:class:`tasks.live_accuracy.LiveAccuracy`);
    ``carried`` (camera -> onset) adds each carried camera's frames since its onset."""
    from tasks.live_accuracy import live_accuracy as live

    mv = clients.registry.get_version(champion.version)
    golden = (getattr(mv, "tags", None) or {}).get("detloop.golden_map")
    return live(settings, clients.store, champion.version, champion.scoring_dir,
                float(golden) if golden not in (None, "", "-") else None, carried=carried)


@task(name="log-monitoring", **NET)
def log_monitoring(settings: Any, registry: Any, version: str, rows: list[tuple[str, float, int]],
                   texts: dict[str, str], files: list[Path], folder: str) -> str:
    """Log a drift report to the monitoring experiment: one MLflow run per champion version (metrics with
    step = the day's ordinal, so each is a time series), the report and its pictures under ``folder``."""
    name = settings.mlflow.model_name
    runs = registry.find_runs(f"tags.`detloop.drift.model` = '{name}' and tags.`detloop.drift.version` = '{version}'", 1)
    run_id = (runs[0].info.run_id if runs else
              registry.create_run(f"drift {name} v{version}", {"detloop.drift.model": name,
                                                               "detloop.drift.version": str(version)}))
    registry.log_metrics(run_id, rows)
    for path, text in texts.items():
        registry.log_text(run_id, text, f"{folder}/{path}")
    for f in files:
        registry.log_artifact(run_id, f, folder)
    registry.end_run(run_id)
    return str(run_id)
