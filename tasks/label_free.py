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

``combined`` is their mean. Nothing here reads a label except :func:`calibrate` (the control frames').
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from detloop.detections import Detections
from detloop.ops import box_iou

ESTIMATORS = ("atc", "flip", "combined")


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
    """

    map50: float
    threshold: float
    flip: float
    n_frames: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def calibrate(control: DayStats, control_map50: float) -> Calibration:
    """Fit the estimators on control frames whose labelled mAP50 is ``control_map50``."""
    return Calibration(float(control_map50), atc_threshold(control.confidences, control_map50), control.mean_flip,
                       int(control.flip.size))


def estimate(day: DayStats, cal: Calibration) -> dict[str, float]:
    """Label-free mAP50 estimates of one camera-day: ``{"atc", "flip", "combined"}`` (NaN when undefined)."""
    atc = atc_share(day.confidences, cal.threshold)
    f = day.mean_flip
    flip = float(np.clip(cal.map50 * f / cal.flip, 0.0, 1.0)) if np.isfinite(f) and cal.flip > 0 else float("nan")
    both = [v for v in (atc, flip) if np.isfinite(v)]
    return {"atc": atc, "flip": flip, "combined": float(np.mean(both)) if both else float("nan")}


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
