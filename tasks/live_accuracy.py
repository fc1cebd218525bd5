"""Live accuracy: the champion's mAP on the control-arm frames labelled in recent rounds.

Control frames are drawn uniformly at random from each round's pool and never trained on (split
``control`` of the dataset versions), so the champion's mAP on them estimates its accuracy on live traffic
without the bias of the selected (hard) frames. The interval is a percentile bootstrap over **frames**
(``scipy.stats.bootstrap``; the boxes of a frame stay together).

- pooled: the control frames of the last ``drift.live_rounds`` weekly rounds, overall and per camera where
  there are at least ``drift.live_min_frames`` frames. Rounds focused on drifted cameras (drift rounds) draw
  their control arm from those cameras only: those of the last ``live_rounds`` rounds count for their cameras,
  not for the overall number. Weekly rounds are counted on their own (:func:`live_sources`), so a burst of drift
  rounds does not push every weekly control frame out of the window; retirement into training counts the same
  way (:func:`tasks.round_version.retire_controls`);
- a series: for each round, the same pooled number over that round and the ``live_rounds - 1`` before it,
  beside the golden mAP of the champion after that round (from the round's result);
- carried cameras (still drifting when the champion took over, :func:`flows.drift.carry_unrecovered`): their
  control frames in the live window dated on or after the drift's onset, with the label-free estimate on the same
  frames beside their mAP50 (:func:`carried_points`): the labelled check of a release
  (:func:`tasks.drift.release_recovered`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from detloop.settings import Settings


@dataclass
class LivePoint:
    """mAP50-95 of the champion on one set of control frames, with its bootstrap interval."""

    label: str  # "pooled", or the last round of the rolling window
    camera: str  # "all" or a camera id
    n_frames: int
    n_boxes: int
    map: float | None = None
    low: float | None = None
    high: float | None = None
    map50: float | None = None
    golden_map: float | None = None  # the golden mAP of the champion after that round (series only)
    as_of: str | None = None
    note: str = ""
    estimate: float | None = None  # the label-free mAP50 estimate on the same frames (carried cameras' points)


@dataclass
class LiveAccuracy:
    """The live-accuracy part of a drift report."""

    model_version: str
    golden_map: float | None  # the champion's golden mAP50-95 (version tag)
    level: float
    rounds: list[str] = field(default_factory=list)  # rounds pooled (oldest first)
    pooled: list[LivePoint] = field(default_factory=list)  # overall first, then per camera
    series: list[LivePoint] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    atc_threshold: float | None = None  # label-free estimate (tasks.label_free, ATC) calibrated on the pooled frames
    mean_confidence: float | None = None  # the same frames' mean detection confidence (DoC)
    atc_weight: float | None = None  # ATC's weight beside DoC, cross-validated over cameras (None: equal weights)
    carried: list[LivePoint] = field(default_factory=list)  # per carried camera, its frames since the onset

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LiveAccuracy:
        d = dict(d)
        d["pooled"] = [LivePoint(**p) for p in d.get("pooled", [])]
        d["series"] = [LivePoint(**p) for p in d.get("series", [])]
        d["carried"] = [LivePoint(**p) for p in d.get("carried", [])]
        return cls(**d)

    @property
    def overall(self) -> LivePoint | None:
        return next((p for p in self.pooled if p.camera == "all"), None)


    def carried_point(self, camera: str) -> LivePoint | None:
        return next((p for p in self.carried if p.camera == camera), None)


# --------------------------------------------------------------------------------------------
# Pure
# --------------------------------------------------------------------------------------------
def estimate_from(live: Any, confidences: np.ndarray, estimator: str) -> float | None:
    """The label-free mAP50 estimate (:func:`tasks.label_free.from_confidences`) of a set of detections'
    ``confidences``, calibrated on ``live`` (a :class:`LiveAccuracy`): None without a calibration or detections; a
    record from before DoC was calibrated gives ATC alone."""
    from tasks.label_free import from_confidences

    t = live.atc_threshold if live is not None else None
    if live is None or t is None:
        return None
    m50 = live.overall.map50 if live.overall is not None else None
    mc = live.mean_confidence
    v = from_confidences(confidences, estimator, t, float("nan") if m50 is None else m50,
                         float("nan") if mc is None else mc, live.atc_weight)
    return v if v == v else None


def carried_points(items: Sequence[Any], dates: Sequence[str], sources: Sequence[str], preds: Sequence[Any],
                   settings: Settings, round_order: Sequence[str], focused: set[str], carried: Mapping[str, str],
                   estimate: Callable[[Sequence[Any]], float | None]) -> list[LivePoint]:
    """For each carried camera (``carried``: camera -> onset day), the live point of its control frames in the live
    window (:func:`live_sources`) dated on or after the onset, at least ``drift.release_check_min_frames`` of
    them, with ``estimate`` (the label-free estimate of their predictions) beside their mAP50; fewer frames give
    a point with a note and no numbers."""
    d = settings.drift
    recent = live_sources(round_order, focused, d.live_rounds)
    gts = [it.gt for it in items]
    out = []
    for cam, onset in sorted(carried.items()):
        idx = [i for i, s in enumerate(sources) if s in recent and items[i].camera == cam and dates[i] >= onset]
        p = _point(f"since {onset}", cam, idx, gts, preds, settings, d.release_check_min_frames, d.seed,
                   "drift.release_check_min_frames")
        if p.map50 is not None:
            p.estimate = estimate([preds[i] for i in idx])
        out.append(p)
    return out


def map_with_interval(gts: Sequence[Any], preds: Sequence[Any], class_names: Sequence[str], resamples: int,
                      level: float, seed: int) -> tuple[float | None, float | None, float | None, float | None]:
    """``(mAP50-95, low, high, mAP50)`` of ``preds`` against ``gts``; the interval resamples whole frames.

    Args:
        gts, preds: per frame :class:`~detloop.detections.Detections` (frame pixels).

    Returns:
        Nones when there is no ground truth.
    """
    from scipy.stats import bootstrap

    from tasks.evaluation import compute_metrics

    def metric(idx: np.ndarray) -> tuple[float | None, float | None]:
        m = compute_metrics("live", [gts[i] for i in idx], [preds[i] for i in idx], class_names, None, 1).overall
        return m.map, m.map50

    full, full50 = metric(np.arange(len(gts)))
    if full is None:
        return None, None, None, None

    def stat(idx: np.ndarray) -> float:
        v = metric(np.asarray(idx, np.int64))[0]
        return float("nan") if v is None else float(v)

    if len(gts) < 2:
        return full, None, None, full50
    res = bootstrap((np.arange(len(gts)),), stat, n_resamples=resamples, confidence_level=level,
                    method="percentile", vectorized=False, rng=np.random.default_rng(seed))
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return full, (lo if np.isfinite(lo) else None), (hi if np.isfinite(hi) else None), full50


def rolling_windows(rounds: Sequence[str], n: int) -> list[tuple[str, list[str]]]:
    """For each round (oldest first), the round and the ``n - 1`` before it."""
    return [(r, list(rounds[max(0, i - n + 1) : i + 1])) for i, r in enumerate(rounds)]


def _point(label: str, camera: str, idx: Sequence[int], gts: Sequence[Any], preds: Sequence[Any],
           settings: Settings, min_frames: int, seed: int, min_name: str = "drift.live_min_frames") -> LivePoint:
    n_boxes = int(sum(len(gts[i]) for i in idx))
    p = LivePoint(label, camera, len(idx), n_boxes)
    if len(idx) < min_frames:
        p.note = f"not enough control frames ({len(idx)} < {min_name} = {min_frames})"
        return p
    d = settings.drift
    p.map, p.low, p.high, p.map50 = map_with_interval([gts[i] for i in idx], [preds[i] for i in idx],
                                                      settings.classes, d.bootstrap_resamples,
                                                      d.confidence_level, seed)
    return p


def live_sources(round_order: Sequence[str], focused: set[str] | frozenset[str], n: int) -> set[str]:
    """The sources (``round:<id>``) whose control frames are live (pure): the last ``n`` rounds that are not
    focused (weekly rounds), and the focused (drift) rounds among the last ``n`` rounds of any kind.

    The window of :func:`tasks.round_version.retire_controls`: frames outside it have retired into training."""
    weekly = [s for s in round_order if s not in focused]
    return set(weekly[-n:]) | {s for s in round_order[-n:] if s in focused} if n > 0 else set()


def summarize(items: Sequence[Any], sources: Sequence[str], preds: Sequence[Any], settings: Settings,
              round_order: Sequence[str], focused: set[str], golden_after: dict[str, float | None],
              round_as_of: dict[str, str]) -> tuple[list[LivePoint], list[LivePoint]]:
    """Pooled points (overall, per camera) and the rolling series, from predictions on every control item.

    Args:
        items: :class:`~tasks.evaluation.EvalItem` (ground truth + camera) of every control frame.
        sources: ``round:<id>`` of each item; ``round_order``: sources oldest first.
        focused: sources of drift rounds (their frames count per camera, not overall).
    """
    d = settings.drift
    gts = [it.gt for it in items]
    recent = live_sources(round_order, focused, d.live_rounds)
    pooled = [_point("pooled", "all", [i for i, s in enumerate(sources) if s in recent and s not in focused],
                     gts, preds, settings, d.live_min_frames, d.seed)]
    for cam in sorted({it.camera for it in items}):
        idx = [i for i, s in enumerate(sources) if s in recent and items[i].camera == cam]
        if len(idx) >= d.live_min_frames:
            pooled.append(_point("pooled", cam, idx, gts, preds, settings, d.live_min_frames, d.seed))
    series = []
    unfocused = [r for r in round_order if r not in focused]
    for last, window in rolling_windows(unfocused, d.live_rounds):
        idx = [i for i, s in enumerate(sources) if s in set(window)]
        p = _point(last.removeprefix("round:"), "all", idx, gts, preds, settings, d.live_min_frames, d.seed)
        p.golden_map = golden_after.get(last)
        p.as_of = round_as_of.get(last)
        series.append(p)
    return pooled, series


def atc_calibration(preds: Sequence[Any], sources: Sequence[str], round_order: Sequence[str], focused: set[str],
                    overall: LivePoint | None, settings: Settings, cameras: Sequence[str] | None = None,
                    per_camera: Sequence[LivePoint] = ()) -> tuple[float | None, float | None, float | None]:
    """``(threshold, mean confidence, ATC weight)`` of the label-free estimators (:mod:`tasks.label_free`) on the
    frames of the pooled overall live mAP: ATC's threshold at that point's mAP50 and DoC's mean confidence, over the
    detections at or above ``drift.min_confidence``; ATC's weight beside DoC cross-validated over the cameras with
    a pooled live point (``per_camera``; ``cameras``: each prediction's camera), None with fewer than two.
    ``(None, None, None)`` without the overall point or detections."""
    from tasks.label_free import atc_threshold, cross_validated_atc_weight, detection_confidences

    if overall is None or overall.map50 is None:
        return None, None, None
    mc_ = settings.drift.min_confidence
    recent = live_sources(round_order, focused, settings.drift.live_rounds)
    idx = [i for i, s in enumerate(sources) if s in recent and s not in focused]
    conf = detection_confidences([preds[i] for i in idx], mc_)
    t = atc_threshold(conf, overall.map50)
    if not np.isfinite(t):
        return None, None, None
    groups = []
    for p in per_camera:
        if cameras is None or p.camera == "all" or p.map50 is None:
            continue
        own = [i for i, s in enumerate(sources) if s in recent and cameras[i] == p.camera]
        groups.append((detection_confidences([preds[i] for i in own], mc_), p.map50, len(own)))
    return float(t), float(conf.mean()), cross_validated_atc_weight(groups)


def calibration_advisory(settings: Settings) -> str | None:
    """One line when the configured control arm can never give a live mAP, and so no label-free calibration: the
    weekly rounds of ``drift.live_rounds`` draw fewer control frames together than ``drift.live_min_frames``
    (:func:`tasks.strategies.plan_arms` on a pool larger than the budget); None when they can (pure).

    Without a calibration the drift report has no label-free estimate, and a carried camera
    (``drift.carry_unrecovered``) is never released: every new champion watches it against its pre-onset traffic
    and pays a round for it. The soaks of issue 21 ran this way (docs/benchmarks.md).
    """
    from tasks.strategies import plan_arms

    sel, d = settings.selection, settings.drift
    per_round = plan_arms(sel.budget, sel.budget + 1, sel.control_share, sel.control_min,
                          sel.control_pool_rounds).n_control
    most = per_round * d.live_rounds
    if most >= d.live_min_frames:
        return None
    return (f"no live accuracy and no label-free estimate will ever exist: a round of selection.budget {sel.budget} "
            f"draws {per_round} control frame(s) (control_share {sel.control_share:g}, control_min {sel.control_min} "
            f"over control_pool_rounds {sel.control_pool_rounds}), at most {most} over drift.live_rounds "
            f"{d.live_rounds}, below drift.live_min_frames {d.live_min_frames}; carried cameras are then never "
            "released (drift.carry_unrecovered). Raise selection.control_min or control_share")


# --------------------------------------------------------------------------------------------
# With the store
# --------------------------------------------------------------------------------------------
def control_items(store: Any, settings: Settings, rounds: Sequence[str]) -> tuple[list[Any], list[Any]]:
    """``(items, entries)``: the control frames of ``rounds`` (``round:<id>`` sources) as evaluation items
    (:class:`~tasks.evaluation.EvalItem`) and their dataset entries, found in the ``train`` dataset versions.

    A frame is taken once, from the newest version that holds it (versions of a rejected challenger's branch
    still hold the control frames of their round). A frame a newer version has retired into training (``arm``
    control, split train or val) is not taken from an older one: a champion may have trained on it.
    """
    from detloop import datasets as ds
    from tasks.slices import items_from_version

    wanted = set(rounds)
    taken: set[str] = set()
    retired: set[str] = set()
    items: list[Any] = []
    entries: list[Any] = []
    ids = {r.removeprefix("round:") for r in wanted}
    for v in reversed(ds.list_versions(store, settings, "train")):
        manifest = ds.load_manifest(store, settings, v["id"])
        retired |= {e.frame_sha for e in manifest.entries if e.arm == "control" and e.split != "control"}
        if not ids & set(v.get("rounds") or []):  # the index says which rounds a version holds
            continue
        mine = [e for e in manifest.by_split("control") if e.source in wanted and e.frame_sha not in retired]
        new = {e.frame_sha for e in mine} - taken
        if not new:
            continue
        srcs = {e.source for e in mine}
        got = items_from_version(store, settings, v["id"], "control", source=srcs, manifest=manifest)
        for it, e in zip(got, mine, strict=True):  # same entries, same order (the split filtered by source)
            if e.frame_sha in new:
                items.append(it)
                entries.append(e)
        taken |= new
    return items, entries


def live_accuracy(settings: Settings, store: Any, version: str, scoring_dir: Any, golden_map: float | None,
                  predict: Callable[..., list[Any]] | None = None,
                  carried: Mapping[str, str] | None = None) -> LiveAccuracy:
    """The champion ``version`` (its scoring artifact ``scoring_dir``) on the control frames of this project's
    rounds; cached in S3 per (version, control frames, model settings, carried cameras).

    Args:
        predict: ``predict(artifact, items, settings) -> [Detections]`` (default
            :func:`tasks.evaluation.predict_items`: the ONNX artifact as served).
        carried: camera -> onset day of the cameras the champion's reference carries (:func:`carried_points`).
    """
    from tasks.drift_records import live_key
    from tasks.evaluation import predict_items
    from tasks.rounds import list_rounds

    d = settings.drift
    records = list_rounds(store, settings)
    source_of = {f"round:{r.round_id}": r for r in records}
    items, entries = control_items(store, settings, list(source_of))
    out = LiveAccuracy(version, golden_map, d.confidence_level)
    if not items:
        out.notes.append("no labelled control frames yet: live accuracy starts after the first round is labelled")
        out.notes += filter(None, [calibration_advisory(settings)])
        return out
    sources = [e.source for e in entries]
    newest: dict[str, str] = {}
    for e in entries:
        newest[e.source] = max(newest.get(e.source, ""), e.date)
    order = sorted(newest, key=lambda s: (source_of[s].as_of, newest[s], s))
    carried = dict(carried or {})
    key = hashlib.sha256(json.dumps([version, sorted(e.frame_sha for e in entries), order,
                                     d.model_dump(mode="json"), settings.model.model_dump(mode="json")]
                                    + ([sorted(carried.items())] if carried else []),
                                    sort_keys=True).encode()).hexdigest()[:16]
    cache = live_key(settings, version, key)
    if store.exists(settings.s3.data_bucket, cache):
        return LiveAccuracy.from_dict(store.get_json(settings.s3.data_bucket, cache))
    preds = (predict or predict_items)(scoring_dir, items, settings)
    focused = {s for s, r in source_of.items() if getattr(r, "reason", "weekly") != "weekly"}
    golden_after, as_of = {}, {}
    for s, r in source_of.items():
        as_of[s] = r.as_of
        res = f"rounds/{r.round_id}/result.json"
        if store.exists(settings.s3.data_bucket, res):
            doc = store.get_json(settings.s3.data_bucket, res)
            golden_after[s] = doc.get("golden_map_challenger") if doc.get("promoted") else doc.get("golden_map_champion")
    live = live_sources(order, focused, d.live_rounds)
    out.rounds = [s.removeprefix("round:") for s in order if s in live]
    out.pooled, out.series = summarize(items, sources, preds, settings, order, focused, golden_after, as_of)
    out.atc_threshold, out.mean_confidence, out.atc_weight = atc_calibration(
        preds, sources, order, focused, out.overall, settings, [it.camera for it in items], out.pooled)
    if carried:
        from tasks.label_free import detection_confidences

        def est(dets: Sequence[Any]) -> float | None:
            return estimate_from(out, detection_confidences(dets, d.min_confidence), d.recovery_estimator)

        out.carried = carried_points(items, [e.date for e in entries], sources, preds, settings, order, focused,
                                     carried, est)
    if focused & set(order):
        out.notes.append(f"{len(focused & set(order))} drift round(s): their control frames count for their cameras "
                         "only (their pool was focused on those cameras)")
    if out.atc_threshold is None:
        out.notes += filter(None, [calibration_advisory(settings)])
    store.put_json(settings.s3.data_bucket, cache, out.to_dict())
    return out
