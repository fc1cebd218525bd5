"""Label-free estimates of the champion's accuracy on live traffic, calibrated on labelled control frames (pure).

Two estimators of a camera-day's mAP50 from the champion's own predictions, each calibrated once on frames
whose labels are known (the control arm):

- **ATC** (average thresholded confidence, Garg et al., ICLR 2022, adapted to detection): on the calibration
  frames pick the confidence ``t`` such that the share of detections (boxes at or above ``min_confidence``)
  scoring at least ``t`` equals the calibration mAP50; on a new day the estimate is that day's share of
  detections at least ``t``. When the champion grows unsure, its confidences fall below ``t`` and the estimate
  falls with them.
- **Flip agreement**: the share of a frame's detections that the same model finds again on the horizontally
  flipped frame (same class, IoU >= ``iou``; the flipped pass is the scoring pass's ``tta`` detections, decoded by
  the one decode), as a Dice score ``2 matched / (n + n_flipped)`` averaged over frames; the estimate is the
  calibration mAP50 scaled by the day's agreement over the calibration agreement. Unstable boxes are the ones a
  model gets wrong more often.

- **DoC** (difference of confidences, Guillory et al., ICCV 2021): the calibration mAP50 plus the change of the
  mean detection confidence from the calibration frames to the day. It moves smoothly where ATC jumps (a weak
  champion's confidences crowd around ATC's threshold, so a small shift moves many boxes across it) but moves
  less than the accuracy does.

``atc_doc`` is the mean of ATC and DoC: on good champions ATC overshoots a drop and DoC undershoots it, and the mean
tracks it. ``weighted`` is what the monitor reports by default (``drift.label_free_estimator``): ATC and DoC
weighted by the inverse of their mean squared error on the control frames, each camera's estimated from a
calibration on the other cameras (:func:`cross_validated_atc_weight`). A good champion gets about equal weights; a
weak one, whose confidences crowd around ATC's threshold so that ATC misses cameras it was not calibrated on, gets
DoC. Measured in docs/benchmarks.md. ``combined`` is the mean of ATC and flip agreement (flip needs a second, flipped pass, which
the daily monitor does not run). Nothing here reads a label except :func:`calibrate` (the control frames').
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from detloop.detections import Detections
from detloop.ops import box_iou

ESTIMATORS = ("atc", "doc", "atc_doc", "weighted", "flip", "combined")
MONITOR_ESTIMATORS = ("atc", "doc", "atc_doc", "weighted")  # from the confidences alone: what the monitor computes
ESTIMATOR_NAMES = {"atc": "ATC", "doc": "DoC", "atc_doc": "ATC+DoC", "weighted": "ATC/DoC weighted", "flip": "flip",
                   "combined": "ATC+flip"}


def detection_confidences(dets: Sequence[Detections], min_confidence: float) -> np.ndarray:
    """``(M,)`` confidences of every box at or above ``min_confidence`` over the frames ``dets``."""
    parts = [d.confidence[d.confidence >= min_confidence] for d in dets]
    return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)


def atc_threshold(confidences: np.ndarray, target: float) -> float:
    """The confidence ``t`` at which the share of ``confidences`` >= ``t`` is ``target`` (in [0, 1]).

    Args:
        confidences: ``(M,)`` detection confidences of the calibration frames.
        target: the calibration frames' labelled accuracy (mAP50).

    Returns:
        ``t``: the k-th largest confidence with ``k = round(target * M)`` (above the largest when k is 0), so that
        ``k`` of the ``M`` detections are at or above it (ties aside); NaN without detections.
    """
    c = np.sort(np.asarray(confidences, np.float64))[::-1]
    if c.size == 0:
        return float("nan")
    k = round(float(np.clip(target, 0.0, 1.0)) * c.size)
    return float(np.nextafter(c[0], np.inf)) if k == 0 else float(c[k - 1])


def atc_share(confidences: np.ndarray, threshold: float) -> float:
    """Share of ``confidences`` at or above ``threshold`` (NaN without detections or threshold)."""
    c = np.asarray(confidences, np.float64)
    if c.size == 0 or not np.isfinite(threshold):
        return float("nan")
    return float(np.mean(c >= threshold))


def doc_estimate(confidences: np.ndarray, map50: float, mean_confidence: float) -> float:
    """DoC: ``map50 + mean(confidences) - mean_confidence``, clipped to [0, 1] (NaN without detections or without
    the calibration's mean confidence)."""
    c = np.asarray(confidences, np.float64)
    if c.size == 0 or not np.isfinite(mean_confidence) or not np.isfinite(map50):
        return float("nan")
    return float(np.clip(map50 + c.mean() - mean_confidence, 0.0, 1.0))


def from_confidences(confidences: np.ndarray, estimator: str, threshold: float, map50: float,
                     mean_confidence: float, atc_weight: float | None = None) -> float:
    """One of :data:`MONITOR_ESTIMATORS` of a set of detections' ``confidences`` (NaN when undefined).

    ``atc_doc`` is ``(ATC + DoC) / 2``; ``weighted`` is ``w ATC + (1 - w) DoC`` with ``w = atc_weight`` (0.5 when
    None or NaN). Either falls back to whichever of the two is defined (ATC alone for a calibration from before
    DoC's mean confidence was kept).
    """
    if estimator not in MONITOR_ESTIMATORS:
        raise ValueError(f"label-free estimator must be one of {', '.join(MONITOR_ESTIMATORS)}, got {estimator!r}")
    atc = atc_share(confidences, threshold)
    doc = doc_estimate(confidences, map50, mean_confidence)
    if estimator == "atc":
        return atc
    if estimator == "doc":
        return doc
    w = 0.5 if estimator == "atc_doc" or atc_weight is None or not np.isfinite(atc_weight) else float(atc_weight)
    if np.isfinite(atc) and np.isfinite(doc):
        return float(w * atc + (1.0 - w) * doc)
    return atc if np.isfinite(atc) else doc


def cross_validated_atc_weight(groups: Sequence[tuple[np.ndarray, float, int]]) -> float | None:
    """ATC's weight beside DoC from leave-one-group-out errors on labelled control frames (pure).

    Args:
        groups: per camera, ``(confidences, map50, n_frames)`` of its control frames: detection confidences (at
            or above ``drift.min_confidence``), their labelled mAP50, how many frames.

    Returns:
        ``MSE_doc / (MSE_atc + MSE_doc)`` (the inverse-MSE weight of ATC), where each group is estimated by both
        estimators calibrated on the other groups pooled (their confidences; the frame-weighted mean of their
        mAP50); None with fewer than two usable groups (the caller weighs equally).
    """
    usable = [(np.asarray(c, np.float64), float(m), int(n)) for c, m, n in groups
              if np.asarray(c).size and np.isfinite(m) and n > 0]
    if len(usable) < 2:
        return None
    err_atc, err_doc = [], []
    for i, (conf, m, _) in enumerate(usable):
        rest = [g for j, g in enumerate(usable) if j != i]
        rc = np.concatenate([g[0] for g in rest])
        rm = float(np.average([g[1] for g in rest], weights=[g[2] for g in rest]))
        a = atc_share(conf, atc_threshold(rc, rm))
        d = doc_estimate(conf, rm, float(rc.mean()))
        if np.isfinite(a) and np.isfinite(d):
            err_atc.append((a - m) ** 2)
            err_doc.append((d - m) ** 2)
    if len(err_atc) < 2:
        return None
    ma, md = float(np.mean(err_atc)), float(np.mean(err_doc))
    return 0.5 if ma + md == 0 else md / (ma + md)


def flip_agreement(dets: Detections, flipped: Detections | None, min_confidence: float, iou: float = 0.5) -> float:
    """Dice agreement of one frame's detections with those on its flipped copy (mapped back).

    Boxes below ``min_confidence`` are left out on both sides; matches are greedy by IoU within a class.

    Returns:
        ``2 * matched / (n + n_flipped)`` in [0, 1]; 1 when both sides are empty; NaN without a flipped pass.
    """
    if flipped is None:
        return float("nan")
    a, b = dets.confidence >= min_confidence, flipped.confidence >= min_confidence
    na, nb = int(a.sum()), int(b.sum())
    if na + nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    ious = box_iou(dets.xyxy[a], flipped.xyxy[b])
    ious[dets.class_id[a][:, None] != flipped.class_id[b][None, :]] = 0.0
    matched = 0
    while True:
        i, j = np.unravel_index(int(np.argmax(ious)), ious.shape)
        if ious[i, j] < iou:
            break
        matched += 1
        ious[i, :] = 0.0
        ious[:, j] = 0.0
    return 2.0 * matched / (na + nb)


@dataclass(frozen=True)
class DayStats:
    """What the estimators need of a set of frames (a camera-day): no labels.

    Attributes:
        confidences: ``(M,)`` detection confidences (>= ``min_confidence``).
        flip: ``(F,)`` per-frame flip agreement (NaN where no flipped pass).
    """

    confidences: np.ndarray
    flip: np.ndarray

    @classmethod
    def of(cls, dets: Sequence[Detections], flipped: Sequence[Detections | None], min_confidence: float,
           iou: float = 0.5) -> DayStats:
        return cls(detection_confidences(dets, min_confidence),
                   np.array([flip_agreement(d, f, min_confidence, iou) for d, f in zip(dets, flipped, strict=True)],
                            np.float64))

    @property
    def mean_flip(self) -> float:
        f = self.flip[np.isfinite(self.flip)]
        return float(f.mean()) if f.size else float("nan")


@dataclass(frozen=True)
class Calibration:
    """The estimators fitted on labelled control frames.

    Attributes:
        map50: the control frames' labelled mAP50.
        threshold: ATC confidence threshold.
        flip: the control frames' mean flip agreement.
        n_frames: control frames it was fitted on.
        mean_confidence: the control frames' mean detection confidence (DoC).
        atc_weight: ATC's weight in ``weighted`` (:func:`cross_validated_atc_weight`; NaN: equal weights).
    """

    map50: float
    threshold: float
    flip: float
    n_frames: int
    mean_confidence: float = float("nan")
    atc_weight: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def calibrate(control: DayStats, control_map50: float, atc_weight: float | None = None) -> Calibration:
    """Fit the estimators on control frames whose labelled mAP50 is ``control_map50`` (``atc_weight``: from
    :func:`cross_validated_atc_weight` over their cameras; None: equal weights)."""
    c = control.confidences
    return Calibration(float(control_map50), atc_threshold(c, control_map50), control.mean_flip,
                       int(control.flip.size), float(np.mean(c)) if c.size else float("nan"),
                       float("nan") if atc_weight is None else float(atc_weight))


def estimate(day: DayStats, cal: Calibration) -> dict[str, float]:
    """Label-free mAP50 estimates of one camera-day, one per :data:`ESTIMATORS` (NaN when undefined)."""
    out = {e: from_confidences(day.confidences, e, cal.threshold, cal.map50, cal.mean_confidence, cal.atc_weight)
           for e in MONITOR_ESTIMATORS}
    f = day.mean_flip
    flip = float(np.clip(cal.map50 * f / cal.flip, 0.0, 1.0)) if np.isfinite(f) and cal.flip > 0 else float("nan")
    both = [v for v in (out["atc"], flip) if np.isfinite(v)]
    return {**out, "flip": flip, "combined": float(np.mean(both)) if both else float("nan")}


def agreement(estimates: Sequence[float], truths: Sequence[float], tolerance: float = 0.05) -> dict[str, Any]:
    """How well estimates follow the truth over camera-days: Pearson r, mean absolute error, share within
    ``tolerance`` (pairs with a NaN left out)."""
    e, t = np.asarray(estimates, np.float64), np.asarray(truths, np.float64)
    ok = np.isfinite(e) & np.isfinite(t)
    e, t = e[ok], t[ok]
    if e.size == 0:
        return {"n": 0, "pearson_r": None, "mae": None, "within": None, "tolerance": tolerance}
    r = float(np.corrcoef(e, t)[0, 1]) if e.size > 2 and e.std() > 0 and t.std() > 0 else None
    return {"n": int(e.size), "pearson_r": r, "mae": float(np.mean(np.abs(e - t))),
            "within": float(np.mean(np.abs(e - t) <= tolerance + 1e-12)), "tolerance": tolerance}
