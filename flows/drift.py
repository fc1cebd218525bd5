"""Drift monitoring: every day, production against the champion's reference; drift episodes start targeted rounds.

Two flows, composed from the same pieces:

- ``drift-report`` (:func:`drift_report`, a subflow; ``detloop drift report`` runs it by hand): the reference
  of the champion (built once per registry version), each day's statistics per camera (stored per day), the
  verdicts under the configured rule, live accuracy on the control arm. It changes no episode.
- ``drift-monitor`` (:func:`drift_monitor`, the daily deployment): the report, then the episode machine over
  the days it has not seen yet; a new episode emits ``detloop.drift.detected`` once (its event id derives
  from the episode id), which the ``select-for-labeling/open-drift-round`` deployment turns into one targeted round.
  The report goes to the run's artifact and to the monitoring experiment in MLflow.

Frames are sampled with :mod:`tasks.sampling` (per camera-day cap, no dedup: drift is about the traffic as
it is) and scored by :func:`flows.selection.score_sample`, the one scoring path (its predictions are cached in
S3 by content). The rules are the pure functions of :mod:`tasks.drift`; the records live where
:mod:`tasks.drift_records` puts them.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow, get_run_logger

from detloop.errors import DataError, NotFound
from detloop.settings import DriftSettings, Settings
from flows import steps
from flows.common import (
    EVENT_DRIFT_DETECTED,
    md_table,
    notify,
    publish_report,
    retrying,
    run_name,
    run_settings,
)
from flows.params import DriftParams
from tasks.drift import CameraDayStats, Companion, Episode, Features, Grace, MonitorState, Verdict
from tasks.label_free import ESTIMATOR_NAMES

_NS = uuid.UUID("1b0f5f0e-9d2c-4f7e-8a55-0d7c3f2e9a41")  # event ids of drift episodes


@dataclass
class DriftRun:
    """What one drift report computed (every camera; ``focus`` only narrows what is shown)."""

    as_of: str
    days: list[str]
    model_version: str
    reference: dict[str, Any]
    reference_features: Features
    stats: dict[str, dict[str, CameraDayStats]]  # day -> camera -> statistics
    verdicts: dict[str, dict[str, Verdict]]  # day -> camera -> verdict under the current rule
    features: dict[str, Features]  # day -> the day's features (all cameras)
    live: Any = None  # tasks.live_accuracy.LiveAccuracy
    focus: list[str] | None = None
    notes: list[str] = field(default_factory=list)
    recent_reference: Features | None = None  # carried cameras' rows of the ordinary reference days
    held: dict[str, set[str]] = field(default_factory=dict)  # day -> carried cameras that open no episode that day

    @property
    def cameras(self) -> list[str]:
        cams = sorted({c for day in self.stats.values() for c in day})
        return [c for c in cams if c in self.focus] if self.focus else cams

    def drifted_cameras(self) -> list[str]:
        return [c for c in self.cameras if self.last_drifted_day(c) is not None]

    def drifted_days(self, camera: str) -> list[str]:
        """The days of the window on which ``camera`` was drifted, oldest first."""
        return [x for x in self.days if self.verdicts.get(x, {}).get(camera) is not None
                and self.verdicts[x][camera].status == "drift"]

    def last_drifted_day(self, camera: str) -> str | None:
        """The latest day of the window on which ``camera`` was drifted."""
        days = self.drifted_days(camera)
        return days[-1] if days else None


# --------------------------------------------------------------------------------------------
# Reference and days
# --------------------------------------------------------------------------------------------
def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def features_key(settings: Settings) -> str:
    """What the stored features depend on (beyond the model version): thresholds, caps, the model settings."""
    d = settings.drift
    return _key(d.min_confidence, d.frames_per_camera_day, settings.model.model_dump(mode="json"))


def stats_key(settings: Settings) -> str:
    """What the stored statistics depend on (beyond the features): which tests, bins, resamples, minimums."""
    from tasks.drift import STATS_VERSION

    d = settings.drift
    return _key(STATS_VERSION, d.statistics, d.psi_bins, d.psi_moderate, d.psi_significant, d.permutations,
                d.mmd_max_frames, d.min_frames, d.min_boxes, d.seed, settings.classes, d.permutations_refine,
                *(() if d.pool_days == 1 else (("pool_days", d.pool_days),)))  # keys stored before it stay valid


def _sampling_settings(settings: Settings, days: list[date], n_cameras: int) -> Settings:
    """Sampling for drift: exactly ``days``, at most ``drift.frames_per_camera_day`` per camera-day."""
    s = settings.model_copy(deep=True)
    cap = settings.drift.frames_per_camera_day
    s.sampling.window_days = (max(days) - min(days)).days + 1
    s.sampling.max_per_camera_per_day = cap
    s.sampling.per_camera_quota = None
    s.sampling.max_frames = max(1, min(10_000_000, cap * max(1, n_cameras) * len(days)))
    return s


def score_days(settings: Settings, clients: Any, version: str, days: list[date], n_cameras: int,
               cameras: list[str] | None = None) -> Features:
    """Sample the production frames of ``days`` (capped per camera-day, no dedup; only ``cameras`` when given)
    and score them with the registry ``version`` through the one scoring path; their features."""
    from flows.selection import score_sample
    from tasks.scoring import ModelRef

    if not days:
        return Features.empty()
    s = _sampling_settings(settings, days, n_cameras)
    sample = retrying(steps.sample_window, s)(s, clients, max(days) + timedelta(days=1), cameras, sorted(days), None,
                                              dedup=False)
    if not sample.frames:
        return Features.empty()
    scored = score_sample(s, clients, sample, ModelRef(version=version))
    return Features.from_scored(scored.frames, settings.drift.min_confidence)


def ensure_reference(settings: Settings, clients: Any, version: str,
                     production: dict[str, list[date]]) -> tuple[dict[str, Any], Features]:
    """The reference of champion ``version``: read, or built once from the production days before it took over.

    Raises:
        NotFound: the version was never promoted, or no production frames precede its promotion.
    """
    from tasks.drift import reference_days
    from tasks.drift_records import load_reference, save_reference

    got = load_reference(clients.store, settings, version)
    if got is not None and got[0].get("features_key") == features_key(settings) \
            and got[0].get("reference_days") == settings.drift.reference_days:
        return got
    anchor, how = retrying(steps.drift_anchor, settings)(settings, clients, version)
    if anchor is None:
        raise NotFound(f"missing reference for champion v{version}: {how}")
    days = reference_days({d for ds_ in production.values() for d in ds_}, anchor, settings.drift.reference_days)
    if not days:
        raise NotFound(f"missing reference for champion v{version}: no production frames before {anchor} (the day it "
                       f"took over, from the {how}); its reference is the {settings.drift.reference_days} production "
                       "days before that")
    feats = score_days(settings, clients, version, days, len(production))
    if feats.n_frames == 0:
        raise NotFound(f"missing reference for champion v{version}: no readable frames on {days[0]}..{days[-1]}")
    ordinary = feats
    feats, carried = carry_unrecovered(settings, clients, version, production, feats)
    recent = ordinary.select(np.isin(ordinary.camera, list(carried))) if carried else None
    per_cam = {str(c): int((feats.camera == c).sum()) for c in sorted(set(feats.camera.tolist()))}
    meta = {"model": settings.mlflow.model_name, "version": version, "anchor": anchor.isoformat(), "anchor_from": how,
            "days": [d.isoformat() for d in days], "frames": feats.n_frames, "boxes": feats.n_boxes, "carried": carried,
            "frames_per_camera": per_cam, "reference_days": settings.drift.reference_days,
            "features_key": features_key(settings), "built_at": datetime.now(UTC).isoformat(timespec="seconds")}
    save_reference(clients.store, settings, version, meta, feats, recent)
    return meta, feats


def carry_unrecovered(settings: Settings, clients: Any, version: str, production: dict[str, list[date]],
                      feats: Features) -> tuple[Features, dict[str, dict[str, Any]]]:
    """Give each camera an earlier champion left still drifting (:func:`tasks.drift.unrecovered_cameras`) its
    reference days from before the drift began: its rows of ``feats`` are replaced by those days' frames, scored
    by ``version``. Returns the reference features and ``camera -> {"onset", "days", "from_episode",
    "episode_onset"}`` (``onset``: the first drift's first day, across champions; ``episode_onset``: the first
    drifted day of ``from_episode``, the latest drift)."""
    from tasks.drift import carried_reference_days, unrecovered_cameras
    from tasks.drift_records import list_episodes, load_reference_meta

    if not settings.drift.carry_unrecovered:
        return feats, {}
    episodes = [e for e in list_episodes(clients.store, settings) if e.model_version != version]
    before = {}
    for v in sorted({e.model_version for e in episodes}):
        prior = load_reference_meta(clients.store, settings, v) or {}
        before[v] = {c: str(x["onset"]) for c, x in (prior.get("carried") or {}).items()}
    onsets = unrecovered_cameras(episodes, version, before)
    latest = {c: e for e in episodes for c in e.cameras}  # episodes come oldest first
    parts, carried = [], {}
    for cam, cdays in carried_reference_days(production, onsets, settings.drift.reference_days).items():
        got = score_days(settings, clients, version, cdays, 1, cameras=[cam])
        if got.n_frames:
            parts.append(got)
            source = latest.get(cam)
            carried[cam] = {"onset": onsets[cam], "days": [d.isoformat() for d in cdays],
                            "from_episode": source.episode_id if source else None,
                            "episode_onset": min(source.days) if source and source.days else onsets[cam]}
    if not carried:
        return feats, {}
    return Features.concat([feats.select(~np.isin(feats.camera, list(carried))), *parts]), carried


def answered_graces(settings: Settings, store: Any, carried: Mapping[str, Mapping[str, Any]]) -> dict[str, Grace]:
    """Each carried camera's grace (:func:`tasks.drift.answered_grace`): the episode it was carried from, when its
    targeted round answered it, holds it from a new episode for ``drift.hold_days`` from its opening, doubled for
    each answered episode of the same drift before it (:func:`tasks.drift.answered_before`)."""
    from tasks.drift import answered_before, answered_grace
    from tasks.drift_records import list_episodes
    from tasks.rounds import unpromoted_rounds

    if not carried or settings.drift.hold_days <= 0:
        return {}
    episodes = list_episodes(store, settings)
    known = {e.episode_id: e for e in episodes}
    source = {cam: known.get(str(info.get("from_episode"))) for cam, info in carried.items()}
    mine = [e for e in episodes if e.round_id  # the answered episodes of the carried drifts
            and any(c in carried and e.opened_on >= str(carried[c]["onset"]) for c in e.cameras)]
    failed = unpromoted_rounds(store, settings, {e.round_id for e in mine})
    graces = {cam: answered_grace(e, settings.drift.hold_days, failed,
                                  answered_before(mine, cam, e, str(carried[cam]["onset"]), failed) if e else 0)
              for cam, e in source.items()}
    return {cam: g for cam, g in graces.items() if g is not None}


def release_carried(run: DriftRun, tolerance: float, min_boxes: int = 1, estimator: str = "atc_doc",
                    cfg: DriftSettings | None = None, class_names: Sequence[str] = (),
                    graces: Mapping[str, Grace] | None = None) -> None:
    """Verdicts of carried cameras (:func:`carry_unrecovered`): a drifted day whose label-free estimate
    (``estimator``, :func:`label_free_estimate`) is back within ``tolerance`` of the camera's estimate on its
    pre-onset reference counts as clean (in place). An estimate needs ``min_boxes`` detections on its side
    (``drift.min_boxes``, as the box-level tests do). The camera's labelled control frames since its onset
    (``run.live.carried``, :func:`tasks.live_accuracy.carried_points`) check the estimate first: where it
    over-reads their mAP50 by more than ``tolerance``, nothing of that camera is released.

    With ``cfg``, a day is also compared with the camera's recent traffic: its rows of the ordinary reference days
    (``run.recent_reference``) from the first day of the episode it was carried from (its latest drift;
    :func:`tasks.drift.since_onset`: all of them when too few). A day drifting against it too is a new drift and
    is not released (:func:`tasks.drift.release_recovered`).

    With ``graces`` (:func:`answered_graces`; needs ``cfg``), a carried camera whose latest drift an earlier
    champion's round answered, and whose day stays drifted but is like that recent traffic, is held from a new
    episode until its grace ends (``run.held``; :func:`tasks.drift.hold_answered`)."""
    from tasks.drift import (
        LabelledCheck,
        carried_recent,
        compare_day,
        hold_answered,
        pooled,
        recovered_by_estimate,
        release_recovered,
        verdict,
    )

    carried = run.reference.get("carried") or {}
    if not carried:
        return
    t = run.live.atc_threshold if run.live is not None else None
    if t is None:
        run.notes.append(f"{', '.join(carried)}: compared with their traffic from before their drift began; no "
                         "label-free estimate (no calibration on control frames), so recovery is not told from drift")

    def est(f: Features) -> float | None:  # an estimate from too few boxes says nothing
        return label_free_estimate(run, f.box_confidence, estimator) if t is not None and f.n_boxes >= min_boxes \
            else None

    point_of = getattr(run.live, "carried_point", None)
    since = run.reference.get("anchor") or ""  # the days before the champion took over are not its to hold
    for cam, info in carried.items():
        ref_est = est(run.reference_features.of_camera(cam))
        p = point_of(cam) if point_of is not None else None
        check = LabelledCheck(p.n_frames, p.map50, p.estimate) if p is not None and p.map50 is not None else None
        rows = (carried_recent(run.recent_reference, cam, info, cfg.min_frames)
                if cfg is not None and run.recent_reference is not None else Features.empty())
        grace = (graces or {}).get(cam) if cfg is not None else None
        mine = {d: f.of_camera(cam) for d, f in run.features.items()}
        for day, cams in run.verdicts.items():
            if cam in cams and day in run.features:
                v, day_est = cams[cam], est(mine[day])
                releasing = v.status == "drift" and recovered_by_estimate(ref_est, day_est, tolerance)
                holding = grace is not None and v.status == "drift" and since <= day < grace.until
                recent = None  # compared only for a drifted day it can decide (the tests cost)
                if cfg is not None and rows.n_frames >= cfg.min_frames and (releasing or holding):
                    stats = compare_day(rows, pooled(mine, day, cfg.pool_days), cfg, class_names, day, [cam]).get(cam)
                    recent = None if stats is None else verdict(stats, cfg, class_names)
                v = release_recovered(v, info["onset"], ref_est, day_est, tolerance, check, recent)
                if holding:
                    v, held = hold_answered(v, grace, recent)
                    if held:
                        run.held.setdefault(day, set()).add(cam)
                cams[cam] = v
        if t is None:
            continue
        checked = (f"; its {check.n_frames} labelled control frames since then: mAP50 {_fmt(check.map50)}, "
                   f"estimate {_fmt(check.estimate)}" if check is not None else
                   f"; {p.note}, so the estimate is not checked against labels" if p is not None and p.note else "")
        run.notes.append(f"{cam}: still drifting when v{run.model_version} took over (episode "
                         f"{info.get('from_episode')}), so compared with its traffic from before {info['onset']}; "
                         f"label-free estimate there {_fmt(ref_est)}{checked}")
    for cam in sorted({c for cams in run.held.values() for c in cams}):
        g = (graces or {})[cam]
        days = sorted(d for d, cams in run.held.items() if cam in cams)
        run.notes.append(f"{cam}: its drift was answered (episode {g.episode_id}, round {g.round_id}) and its days "
                         f"{days[0]}..{days[-1]} are like its traffic since the onset: held from a new episode until "
                         f"{g.until} (drift.hold_days) unless it drifts again")


def ensure_days(settings: Settings, clients: Any, version: str, reference: Features, days: list[date],
                production: dict[str, list[date]]) -> tuple[dict[str, dict[str, CameraDayStats]], dict[str, Features]]:
    """Statistics of each day against the reference, per camera: stored ones reused; days never scored (or
    scored under other settings) sampled and scored together; stale statistics recomputed from stored features.
    A day without any frame is not stored (its frames may still arrive). Under ``drift.pool_days`` a day's stored
    statistics record the days they pooled, and are recomputed when more of those days are stored now (the day
    before was scored after it)."""
    from tasks.drift import compare_day, pool_window, pooled
    from tasks.drift_records import load_day, load_day_features, save_day

    store, fk, sk = clients.store, features_key(settings), stats_key(settings)
    stats: dict[str, dict[str, CameraDayStats]] = {}
    feats: dict[str, Features] = {}
    pooled_then: dict[str, list[str]] = {}  # the days a stored day's statistics pooled
    to_score: list[date] = []
    for d in days:
        got = load_day(store, settings, version, d.isoformat())
        if got is not None and got[0].get("features_key") == fk:
            f = load_day_features(store, settings, version, d.isoformat())
            if f is not None:
                feats[d.isoformat()] = f
                if got[0].get("stats_key") == sk:
                    stats[d.isoformat()] = got[1]
                    pooled_then[d.isoformat()] = list(got[0].get("pooled") or [d.isoformat()])
                continue
        to_score.append(d)
    if to_score:
        scored = score_days(settings, clients, version, to_score, len(production))
        for d in to_score:
            feats[d.isoformat()] = scored.of_day(d.isoformat())
    pool = dict(feats)  # drift.pool_days: the stored days before the window that its first days are pooled with
    for day in sorted({p for d in days for p in pool_window(d.isoformat(), settings.drift.pool_days)} - set(pool)):
        got = load_day(store, settings, version, day)
        f = load_day_features(store, settings, version, day) if got and got[0].get("features_key") == fk else None
        if f is not None:
            pool[day] = f
    def pooled_now(day: str) -> list[str]:
        return [p for p in pool_window(day, settings.drift.pool_days) if p in pool]

    ref_cams = set(reference.camera.tolist())
    for d in days:
        day = d.isoformat()
        if day in stats and pooled_then.get(day) == pooled_now(day):
            continue
        cams = ref_cams | {c for c, ds_ in production.items() if d in ds_}
        stats[day] = compare_day(reference, pooled(pool, day, settings.drift.pool_days), settings.drift,
                                 settings.classes, day, cams)
        if feats[day].n_frames:  # a day without frames (yet) is looked at again next time
            save_day(store, settings, version, day, stats[day], feats[day],
                     {"features_key": fk, "stats_key": sk, "pooled": pooled_now(day)})
    return stats, feats


def check_inputs(as_of: date, cameras: list[str] | None, production: dict[str, list[date]], days: list[date],
                 today: date) -> None:
    """One line for each kind of bad input: a window in the future, an unknown camera, no frames at all."""
    if as_of > today:
        raise DataError(f"as_of {as_of} is in the future (today is {today}): the days before it have not all "
                        "happened yet; use a date up to today")
    if cameras:
        unknown = sorted(set(cameras) - set(production))
        if unknown:
            raise DataError(f"unknown camera(s) {unknown}; cameras with production frames: "
                            f"{', '.join(sorted(production)) or 'none'}")
    scope = {c: ds_ for c, ds_ in production.items() if not cameras or c in cameras}
    if not any(d in set(days) for ds_ in scope.values() for d in ds_):
        raise DataError(f"no production frames dated {days[0]}..{days[-1]}"
                        + (f" for {sorted(scope)}" if cameras else "") + "; nothing to compare")


# --------------------------------------------------------------------------------------------
# The report (a subflow: the monitor runs it, `detloop drift report` runs it by hand)
# --------------------------------------------------------------------------------------------
@flow(name="drift-report", flow_run_name=run_name("drift-report", "as_of"), log_prints=True)
def drift_report(as_of: date, config: str | None = None, overrides: dict[str, Any] | None = None,
                 cameras: list[str] | None = None, days: int | None = None, live: bool = True,
                 today: date | None = None) -> DriftRun:
    """Compare each of the ``days`` days before ``as_of`` (default ``drift.report_days``) with the champion's
    reference, per camera; the verdicts under the configured rule; live accuracy on the control arm.

    Raises:
        NotFound: no champion, or no reference for it.
        DataError: ``as_of`` after ``today``, an unknown camera, no production frames in the window.
    """
    from detloop.clients import Clients
    from tasks.drift import permutation_floor_note, verdict
    from tasks.drift_records import days_with_frames, load_recent_rows

    log = get_run_logger()
    settings = run_settings(config, overrides)
    clients = Clients.from_settings(settings)
    n = days or settings.drift.report_days
    window = [as_of - timedelta(days=k) for k in range(n, 0, -1)]
    production = days_with_frames(clients.store, settings)
    check_inputs(as_of, cameras, production, window, today or date.today())
    champion = retrying(steps.fetch_champion, settings)(settings, clients)
    if champion is None:
        raise NotFound(f"no champion in the registry ({settings.mlflow.model_name} at {settings.mlflow.tracking_uri}); "
                       "drift is measured against the champion's reference: bootstrap one first (`detloop bootstrap`)")
    meta, ref = ensure_reference(settings, clients, champion.version, production)
    log.info("champion v%s, reference %s..%s (%d frames)", champion.version, meta["days"][0], meta["days"][-1],
             meta["frames"])
    stats, feats = ensure_days(settings, clients, champion.version, ref, window, production)
    verdicts = {d: {c: verdict(s, settings.drift, settings.classes) for c, s in cams.items()}
                for d, cams in stats.items()}
    run = DriftRun(as_of.isoformat(), [d.isoformat() for d in window], champion.version, meta, ref, stats, verdicts,
                   feats, focus=list(cameras) if cameras else None)
    if live:
        run.live = retrying(steps.live_accuracy, settings)(
            settings, clients, champion, {c: str(x["onset"]) for c, x in (meta.get("carried") or {}).items()})
    run.recent_reference = load_recent_rows(clients.store, settings, champion.version) if meta.get("carried") else None
    release_carried(run, settings.drift.recovery_tolerance, settings.drift.min_boxes,
                    settings.drift.recovery_estimator, settings.drift, settings.classes,
                    answered_graces(settings, clients.store, meta.get("carried") or {}))
    new_cams = sorted({c for cams in stats.values() for c, s in cams.items() if s.reference != "camera"})
    if new_cams:
        run.notes.append(f"{', '.join(new_cams)}: no (or too few) frames in the reference: compared with every "
                         "camera's reference (a new camera)")
    deaf = permutation_floor_note(settings.drift, max((len(v.adjusted) for cams in verdicts.values()
                                                       for v in cams.values()), default=0))
    if deaf:
        log.warning(deaf)
        run.notes.append(deaf)
    for advice in shrink_notes(run, settings):
        log.warning(advice)
        run.notes.append(advice)
    log.info("drifted cameras in %s..%s: %s", window[0], window[-1], run.drifted_cameras() or "none")
    return run


def shrink_notes(run: DriftRun, settings: Settings) -> list[str]:
    """The shrink note (:func:`tasks.drift.shrink_advice`) of each drifted camera whose objects shrank, judged on
    its last drifted day, with its tiling as configured and its first drifted day (for the measuring command)."""
    from tasks.drift import shrink_advice

    out = []
    for cam in run.drifted_cameras():
        days = run.drifted_days(cam)
        spec = settings.model.tile_spec(cam)
        advice = shrink_advice(run.stats[days[-1]][cam], run.verdicts[days[-1]][cam], settings.drift,
                               spec.tile if spec is not None else None, days[0])
        if advice:
            out.append(advice)
    return out


# --------------------------------------------------------------------------------------------
# Rendering (the flow's artifact, MLflow and the CLI print the same)
# --------------------------------------------------------------------------------------------
def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None or x != x else f"{x:.{digits}f}"


def _last_sufficient(run: DriftRun, camera: str) -> str | None:
    return next((d for d in reversed(run.days) if camera in run.stats.get(d, {})
                 and run.stats[d][camera].sufficient), None)


def label_free_estimate(run: DriftRun, confidences: np.ndarray, estimator: str) -> float | None:
    """The label-free mAP50 estimate (:func:`tasks.label_free.from_confidences`) of a set of detections'
    ``confidences``, calibrated on the pooled control frames of ``run.live`` (None without a calibration or
    detections; a live record from before DoC was calibrated gives ATC alone)."""
    from tasks.live_accuracy import estimate_from

    return estimate_from(run.live, confidences, estimator)


def camera_day_estimate(run: DriftRun, camera: str, day: str | None, estimator: str = "weighted") -> float | None:
    """The label-free mAP50 estimate of one camera-day (:func:`label_free_estimate`; None without a calibration,
    the day or detections)."""
    feats = run.features.get(day) if day else None
    if feats is None:
        return None
    return label_free_estimate(run, feats.of_camera(camera).box_confidence, estimator)


def report_markdown(run: DriftRun, settings: Settings, episodes: list[Episode]) -> str:
    """The report as markdown: reference, one row per camera, the days, details of drifted cameras, live
    accuracy, episodes."""
    d = settings.drift
    ref = run.reference
    out = [f"# Drift report as of {run.as_of}: days {run.days[0]}..{run.days[-1]}\n",
           f"Champion **v{run.model_version}** of {settings.mlflow.model_name}; reference: {len(ref['days'])} production "
           f"day(s) {ref['days'][0]}..{ref['days'][-1]} before it took over on {ref['anchor']} ({ref['anchor_from']}), "
           f"{ref['frames']} frames ({', '.join(f'{c}: {n}' for c, n in ref['frames_per_camera'].items())}).\n",
           f"Rule: a camera-day is drifted with >= {d.alarm_min_signals} signal(s) among "
           f"{', '.join(d.alarm_statistics)} ({d.correction} at {d.alpha})"
           + (f", or with one below {d.alarm_strong_alpha}" if d.alarm_strong_alpha is not None else "")
           + (f"; each day is tested on its frames and those of the {d.pool_days - 1} day(s) before it"
              if d.pool_days > 1 else "") + f"; an episode opens after "
           f"{d.alarm_consecutive_days} drifted day(s) in a row and a camera leaves it after "
           f"{d.close_after_clean_days} clean day(s)"
           + (f"; a camera still drifting {d.reopen_after_days} day(s) after its answered episode opened starts a new "
              "one" if d.reopen_after_days else "")
           + (f"; a camera carried from an answered episode is held from a new one for {d.hold_days} day(s) from its "
              "opening, doubled for each earlier answer of the same drift" if d.hold_days else "") + ".\n"]
    rows = []
    for cam in run.cameras:
        last = _last_sufficient(run, cam)
        s = run.stats.get(last or run.days[-1], {}).get(cam)
        v = run.verdicts.get(last or run.days[-1], {}).get(cam)
        drifted = [x for x in run.days if run.verdicts.get(x, {}).get(cam) is not None
                   and run.verdicts[x][cam].status == "drift"]
        top = max((t for t in (s.tests if s else []) if t.statistic == "psi"),  # the most above its noise floor
                  key=lambda t: t.value - (t.scaled or 0.0), default=None)
        ep = next((e.episode_id for e in episodes if cam in e.cameras and e.status == "open"), None)
        rows.append({
            "camera": cam, "day": last or "-", "verdict": v.status if v else "-",
            "drifted days": len(drifted), "frames": s.n_frames if s else 0,
            "reference": f"{s.n_ref_frames} ({s.reference})" if s else "-",
            "brightness": f"{_fmt(s.summary['brightness'][0], 2)} -> {_fmt(s.summary['brightness'][1], 2)}" if s else "-",
            "confidence": f"{_fmt(s.summary['confidence'][0], 2)} -> {_fmt(s.summary['confidence'][1], 2)}" if s else "-",
            "dets/frame": f"{_fmt(s.summary['detections'][0], 1)} -> {_fmt(s.summary['detections'][1], 1)}" if s else "-",
            f"est. mAP50 ({ESTIMATOR_NAMES[d.label_free_estimator]})":
                _fmt(camera_day_estimate(run, cam, last, d.label_free_estimator)),
            "top PSI (noise)": f"{top.feature} {top.value:.2f} ({_fmt(top.scaled, 2)})" if top else "-",
            "signals": ", ".join(v.signals[:4]) + (" ..." if v and len(v.signals) > 4 else "") if v else "-",
            "episode": ep or "-",
        })
    out.append("## Cameras (latest day with enough data)\n\n" + md_table(rows))
    grid = []
    for cam in run.cameras:
        row: dict[str, Any] = {"camera": cam}
        for day in run.days:
            v = run.verdicts.get(day, {}).get(cam)
            row[day[5:]] = {"drift": "D", "clean": ".", "insufficient": "?"}.get(v.status, " ") if v else " "
        grid.append(row)
    out.append("\n## Days (D drift, . clean, ? not enough data)\n\n" + md_table(grid))
    for cam in run.drifted_cameras():
        day = run.last_drifted_day(cam)
        if day is None:
            continue
        s, v = run.stats[day][cam], run.verdicts[day][cam]
        trows = [{"feature": t.feature, "statistic": t.statistic, "value": _fmt(t.value, 4), "p": _fmt(t.p, 4),
                  "p adj": _fmt(v.adjusted.get(t.name), 4),
                  "band / scaled": t.band or _fmt(t.scaled, 2), "signal": "yes" if t.name in v.signals else ""}
                 for t in s.tests]
        out.append(f"\n## {cam} on {day} ({s.n_frames} frames, {s.n_boxes} boxes; reference {s.n_ref_frames} frames, "
                   f"{s.reference}; classes: {', '.join(v.classes) or '-'})\n\n" + md_table(trows))
    out.append("\n" + live_markdown(run.live))
    erows = [{"episode": e.episode_id, "status": e.status,
              "cameras": ", ".join(f"{c} (joined)" if c in e.companions else c for c in e.cameras),
              "days": f"{e.days[0]}..{e.days[-1]} ({len(e.days)})", "classes": ", ".join(e.classes) or "-",
              "signals": ", ".join(e.signals[:3]) + (" ..." if len(e.signals) > 3 else ""),
              "round": e.round_id or "-", "acked": e.acked_by or "-",
              "closed": f"{e.closed_on}: {e.close_reason}" if e.closed_on else "-"} for e in episodes]
    out.append("\n## Episodes\n\n" + md_table(erows))
    joined = [f"{c} joined {e.episode_id}: {why}" for e in episodes for c, why in sorted(e.companions.items())]
    if joined:
        out.append("\n" + "\n".join(f"- {j}" for j in joined) + "\n")
    if run.notes:
        out.append("\n" + "\n".join(f"- {n}" for n in run.notes) + "\n")
    return "\n".join(out)


def live_markdown(live: Any) -> str:
    if live is None:
        return "## Live accuracy (control arm)\n\n_(not computed)_\n"
    lvl = round(live.level * 100)
    rows = [{"frames of": p.camera, "frames": p.n_frames, "boxes": p.n_boxes, "mAP50-95": _fmt(p.map),
             f"{lvl}% interval": f"{_fmt(p.low)} .. {_fmt(p.high)}" if p.low is not None else "-",
             "mAP50": _fmt(p.map50), "note": p.note or ""} for p in live.pooled]
    srows = [{"round": p.label, "as_of": p.as_of or "-", "frames": p.n_frames, "live mAP50-95": _fmt(p.map),
              f"{lvl}% interval": f"{_fmt(p.low)} .. {_fmt(p.high)}" if p.low is not None else "-",
              "golden mAP50-95": _fmt(p.golden_map)} for p in live.series]
    head = (f"## Live accuracy of v{live.model_version} (control arm of rounds {', '.join(live.rounds) or '-'})\n\n"
            f"Golden mAP50-95 of v{live.model_version}: {_fmt(live.golden_map)}.\n\n")
    notes = "".join(f"- {n}\n" for n in live.notes)
    carried = ""
    if getattr(live, "carried", None):
        crows = [{"camera": p.camera, "frames": p.label, "n": p.n_frames, "boxes": p.n_boxes, "mAP50": _fmt(p.map50),
                  "label-free estimate": _fmt(p.estimate), "note": p.note or ""} for p in live.carried]
        carried = ("\n### Carried cameras since their onset (the labelled check of a release)\n\n"
                   + md_table(crows))
    return (head + md_table(rows) + label_free_line(live) + carried + "\n### Over rounds (rolling)\n\n"
            + md_table(srows) + notes)


WEAK_ATC_WEIGHT = 0.2  # below it the report warns that the estimate will not show drops (docs/drift.md)


def label_free_line(live: Any) -> str:
    """What the label-free estimates of the camera rows rest on (one line; empty without a calibration)."""
    if live.atc_threshold is None:
        return ""
    w = live.atc_weight
    out = (f"\nLabel-free estimates calibrated on the pooled control frames above: ATC threshold "
           f"{_fmt(live.atc_threshold)}, mean confidence {_fmt(live.mean_confidence)}; ATC's weight beside DoC "
           + (f"{w:.2f} (cross-validated over cameras).\n" if w is not None else "0.50 (fewer than two cameras "
              "with enough control frames to cross-validate).\n"))
    if w is not None and w < WEAK_ATC_WEIGHT:
        out += ("ATC missed the cameras it was not calibrated on, as it does for a weak champion, so the estimates "
                "rest on DoC, which barely moves when accuracy drops: read drops from the drift verdicts, not from "
                "the estimates.\n")
    return out


def report_pictures(run: DriftRun, settings: Settings, episodes: list[Episode], out_dir: Path) -> list[Path]:
    """``timeseries.png``, ``hist_<camera>.png`` for each drifted (or asked-for) camera, ``live.png``."""
    from tasks.drift_report import plot_histograms, plot_live, plot_timeseries

    out = [plot_timeseries(run.days, run.cameras, run.stats, run.verdicts, episodes, settings.drift.alarm_min_signals,
                           out_dir / "timeseries.png")]
    for cam in run.focus or run.drifted_cameras():
        day = _last_sufficient(run, cam)
        if day is None:
            continue
        scope = run.stats[day][cam].reference
        ref = run.reference_features if scope != "camera" else run.reference_features.of_camera(cam)
        title = (f"{cam} on {day} vs the reference of v{run.model_version} "
                 f"({'all cameras' if scope != 'camera' else cam}, {run.reference['days'][0]}..{run.reference['days'][-1]})")
        out.append(plot_histograms(ref, run.features[day].of_camera(cam), settings.classes, title,
                                   out_dir / f"hist_{cam}.png"))
    if run.live is not None and (run.live.pooled or run.live.series):
        out.append(plot_live(run.live, out_dir / "live.png"))
    return out


def metric_rows(run: DriftRun, estimator: str = "weighted") -> list[tuple[str, float, int]]:
    """MLflow metrics, step = the day's ordinal: per camera the signal count, each PSI / scaled Wasserstein and the
    label-free mAP50 estimate (``<camera>.est_map50``, ``estimator``); live mAP (overall and per camera) at the
    as_of day."""
    import re

    rows: list[tuple[str, float, int]] = []
    for day, cams in run.stats.items():
        step = date.fromisoformat(day).toordinal()
        for cam, s in cams.items():
            v = run.verdicts[day][cam]
            if v.status == "insufficient":
                continue
            rows.append((f"{cam}.signals", float(len(v.signals)), step))
            est = camera_day_estimate(run, cam, day, estimator)
            if est is not None:
                rows.append((f"{cam}.est_map50", est, step))
            for t in s.tests:
                value = t.value if t.statistic != "wasserstein" else t.scaled
                if value is not None and t.statistic in ("psi", "wasserstein"):
                    rows.append((re.sub(r"[^\w.\-/ ]", "_", f"{cam}.{t.feature}.{t.statistic}"), float(value), step))
    if run.live is not None:
        step = date.fromisoformat(run.as_of).toordinal()
        for p in run.live.pooled:
            for k in ("map", "low", "high"):
                if getattr(p, k) is not None:
                    rows.append((f"live.{p.camera}.{k}", float(getattr(p, k)), step))
    return rows


# --------------------------------------------------------------------------------------------
# Episodes and the event
# --------------------------------------------------------------------------------------------
def drift_event_id(model_name: str, episode_id: str) -> uuid.UUID:
    """The one event id of an episode's ``detloop.drift.detected`` (the same on every re-run; episode ids are
    unique per registered model, so the model's name is part of it)."""
    return uuid.uuid5(_NS, f"{EVENT_DRIFT_DETECTED}/{model_name}/{episode_id}")


def drift_resource_id(model_name: str, episode_id: str) -> str:
    return f"detloop.drift.{model_name}.{episode_id}"


def update_episodes(settings: Settings, store: Any, run: DriftRun) -> tuple[list[Episode], list[Episode]]:
    """Advance the episode machine over the days of ``run`` it has not processed; ``(to announce, all episodes)``.

    An episode that opens on a class-mix change is joined by the other cameras whose share of that class moved
    the same way, and asks the others again for ``drift.companion_days`` days (:func:`episode_companions`,
    :func:`tasks.drift.companion_day`). Open episodes of another champion's reference are closed first (a
    new champion has a new reference). Days
    before the champion took over (its reference's ``anchor``) are not its: production then was another model's,
    and its reference is built from those very days, so comparing them with it would open episodes after the fact
    (a new champion whose reference holds a drift saw the days before the drift as drifting).
    """
    from tasks.drift import advance, companion_day, supersede
    from tasks.drift_records import list_episodes, load_state, save_episodes, save_state
    from tasks.rounds import unpromoted_rounds

    known = {e.episode_id: e for e in list_episodes(store, settings)}
    old = supersede(known.values(), run.model_version, run.days[-1])
    save_episodes(store, settings, old)
    known.update({e.episode_id: e for e in old})
    state = load_state(store, settings, run.model_version)
    since = run.reference.get("anchor")  # ISO day the champion took over
    failed = unpromoted_rounds(store, settings, {e.round_id for e in known.values()  # rounds over without a
                                                 if e.status == "open" and e.round_id})  # promotion: no wait
    for day in run.days:
        if (state.last_day is not None and day <= state.last_day) or (since and day < since):
            continue
        state, changed, opened = advance(state, day, run.verdicts[day], settings.drift, known, failed,
                                         run.held.get(day, set()))
        state, joined, _ = companion_day(state, day, opened, {**known, **changed}, settings.drift,
                                         partial(episode_companions, run, settings, day))
        changed.update(joined)
        save_episodes(store, settings, changed.values())
        known.update(changed)
    save_state(store, settings, state)
    announce = [e for e in known.values() if e.model_version == run.model_version and e.status == "open"
                and e.event_id is None]
    return announce, sorted(known.values(), key=lambda e: (e.opened_on, e.episode_id))


def episode_companions(run: DriftRun, settings: Settings, day: str, episode: Episode, state: MonitorState,
                       episodes: Mapping[str, Episode]) -> tuple[dict[str, int], list[Companion]]:
    """``(classes asked, cameras found)`` of ``episode``'s ask on ``day`` (:func:`tasks.drift.companions_for`, on
    the frames of :func:`tasks.drift.companion_window`)."""
    from tasks.drift import companion_window, companions_for

    stats = run.stats.get(day, {})
    if not settings.drift.companion_alpha or not stats:  # no statistics of the day: nothing to name a class by
        return {}, []
    return companions_for(day, episode, state, episodes, stats, run.verdicts.get(day, {}),
                          companion_window(run.features, episode, day, settings.drift.pool_days),
                          run.reference_features, run.reference.get("carried") or {}, run.recent_reference,
                          settings.drift, settings.classes)


def targeted_round(settings: Settings, episode: Episode) -> dict[str, Any]:
    """What the episode's round selects: its cameras and drifted days inside the sampling window that ends the
    day after the episode opened, each re-asked camera's own days (``camera_dates``, from ``episode.round_days``),
    and each camera's weight in it (companions less; deterministic per episode)."""
    from tasks.drift import round_budget, round_camera_weights
    from tasks.rounds import RoundFocus, focused_round_id

    as_of, start = round_window(settings, episode)
    dates = [x for x in episode.days if start <= x < as_of]
    return {"round_id": focused_round_id(settings.label_studio.project_title, RoundFocus("drift", episode.episode_id)),
            "as_of": as_of, "cameras": list(episode.cameras), "dates": dates,
            "budget": round_budget(settings.drift, settings.selection.budget, len(episode.cameras)),
            "camera_weights": round_camera_weights(episode, settings.drift),
            "camera_dates": dict(episode.round_days)}


def round_window(settings: Settings, episode: Episode) -> tuple[str, str]:
    """``(as_of, start)`` of the episode's round, ISO days: its sampling window ends (exclusive) the day after the
    episode opened."""
    as_of = date.fromisoformat(episode.opened_on) + timedelta(days=1)
    return as_of.isoformat(), (as_of - timedelta(days=settings.sampling.window_days)).isoformat()


def episode_round_days(settings: Settings, episode: Episode, episodes: Sequence[Episode],
                       run: DriftRun) -> dict[str, list[str]]:
    """Re-asked cameras' days in ``episode``'s round (:func:`tasks.drift.reasked_days`) from ``run``'s verdicts;
    empty when ``drift.reasked_round_days`` is off."""
    from tasks.drift import reasked_days

    if not settings.drift.reasked_round_days:
        return {}
    as_of, start = round_window(settings, episode)
    return reasked_days(episode, episodes, {c: run.drifted_days(c) for c in episode.cameras}, start, as_of)


def announce_episode(settings: Settings, store: Any, episode: Episode, config: str | None,
                     as_of: str | None = None, round_days: Mapping[str, list[str]] | None = None) -> Episode:
    """Emit ``detloop.drift.detected`` for ``episode`` and record it (with ``as_of``, the monitor's day). The first
    event's id derives from the episode id; an episode announced again (its round never created) gets one per
    attempt, so the automation sees a new event. ``round_days`` (:func:`episode_round_days`) are recorded at the
    first announcement; one announced again keeps its recorded days."""
    from tasks.drift_records import mark_episode

    if round_days and not episode.event_id:
        episode = mark_episode(store, settings, episode.episode_id, round_days=dict(round_days))
    target = targeted_round(settings, episode)
    attempt = max(episode.announcements, 1) if episode.event_id else 0  # records before the count: 1 sent
    eid = drift_event_id(settings.mlflow.model_name,
                         episode.episode_id if attempt == 0 else f"{episode.episode_id}#{attempt}")
    payload = {"episode_id": episode.episode_id, "model": settings.mlflow.model_name,
               "model_version": episode.model_version, "classes": episode.classes, "days": episode.days,
               "statistics": episode.signals, **target, "config": config or ""}
    own = "".join(f"; {c} also its drifted days since its last round ({len(d)} days from {d[0]})"
                  for c, d in episode.round_days.items() if d)
    message = (f"drift on {', '.join(episode.cameras)} since {episode.days[0]} (v{episode.model_version}: "
               f"{', '.join(episode.signals[:4])}{' ...' if len(episode.signals) > 4 else ''}); "
               f"targeted round {target['round_id']}{own}")
    notify(EVENT_DRIFT_DETECTED, drift_resource_id(settings.mlflow.model_name, episode.episode_id), payload, message,
           event_id=eid)
    return mark_episode(store, settings, episode.episode_id, event_id=str(eid), round_id=target["round_id"],
                        emitted_at=datetime.now(UTC).isoformat(timespec="seconds"),
                        announcements=attempt + 1, announced_for=as_of)


# --------------------------------------------------------------------------------------------
# drift-monitor: the daily deployment
# --------------------------------------------------------------------------------------------
@flow(name="drift-monitor", flow_run_name=run_name("drift-monitor", "as_of"), log_prints=True)
def drift_monitor(params: DriftParams = DriftParams()) -> dict[str, Any]:  # noqa: B008
    """Report on the days before ``as_of``; open / extend / close episodes; announce each new one once."""
    from detloop.clients import Clients
    from detloop.settings import parse_as_of

    log = get_run_logger()
    as_of = parse_as_of(params.as_of)
    settings = run_settings(params.config, params.overrides())
    clients = Clients.from_settings(settings)

    # 1. the report (the same subflow as `detloop drift report`)
    run = drift_report(as_of, params.config, params.overrides(), params.cameras, params.days)

    # 2. episodes: the days not seen yet, in order; each new episode announced once
    to_announce, episodes = update_episodes(settings, clients.store, run)
    announced = [announce_episode(settings, clients.store, e, params.config, run.as_of,
                                  episode_round_days(settings, e, episodes, run)) for e in to_announce]
    for e in announced:
        log.info("episode %s opened on %s: event emitted, round %s", e.episode_id, ", ".join(e.cameras), e.round_id)
    # 2b. an episode announced on an earlier day whose targeted round was never created (the run its event started
    #     failed, e.g. a service down longer than its retries): announced again, under a new event id
    from tasks.drift import unanswered
    from tasks.rounds import list_rounds

    just = {a.episode_id for a in announced}
    known = [e for e in episodes if e.episode_id not in just]
    again = [announce_episode(settings, clients.store, e, params.config, run.as_of)
             for e in unanswered(known, run.model_version, [r.round_id for r in list_rounds(clients.store, settings)],
                                 run.as_of)]
    for e in again:
        log.warning("episode %s: its targeted round %s was never created (announced %d times); event emitted again",
                    e.episode_id, e.round_id, e.announcements)
    by_id = {e.episode_id: e for e in episodes} | {e.episode_id: e for e in [*announced, *again]}
    episodes = sorted(by_id.values(), key=lambda e: (e.opened_on, e.episode_id))

    # 3. the report: the run's artifact and the monitoring experiment
    md = report_markdown(run, settings, [e for e in episodes if e.model_version == run.model_version])
    out_dir = settings.data_dir / "drift" / f"report-{run.as_of}"
    pictures = report_pictures(run, settings, episodes, out_dir)
    publish_report("drift-report", md, f"drift-monitor {run.as_of}")
    monitoring = settings.model_copy(deep=True)
    monitoring.mlflow.experiment = settings.drift.experiment
    mlflow_run = retrying(steps.log_monitoring, settings)(
        settings, Clients.from_settings(monitoring).registry, run.model_version,
        metric_rows(run, settings.drift.label_free_estimator),
        {"report.md": md}, pictures, f"reports/{run.as_of}")
    return {"as_of": run.as_of, "model_version": run.model_version, "days": [run.days[0], run.days[-1]],
            "drifted_cameras": run.drifted_cameras(), "opened": [e.episode_id for e in announced],
            "open_episodes": [e.episode_id for e in episodes if e.status == "open"],
            "rounds": [e.round_id for e in announced], "announced_again": [e.episode_id for e in again],
            "held": {d: sorted(c) for d, c in sorted(run.held.items())}, "notes": list(run.notes),
            "mlflow_run": mlflow_run,
            "live_map": run.live.overall.map if run.live is not None and run.live.overall else None,
            "label_free": None if run.live is None or run.live.atc_threshold is None else {
                "estimator": settings.drift.label_free_estimator, "atc_threshold": run.live.atc_threshold,
                "mean_confidence": run.live.mean_confidence, "atc_weight": run.live.atc_weight}}
