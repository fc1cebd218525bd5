"""Per-frame repeats of the train list: hard-example mining and rare-class oversampling, one mechanism.

A fine-tune samples its train list uniformly; a frame listed k times is seen k times as often. Two reasons to list
a frame more than once (``training.sample_weights``), added as *extra* repeats:

- **mining**: the champion got the frame wrong. Its error score (:func:`frame_error_scores`) is the frame's
  errors per ground-truth box (missed, confused, badly localised boxes, confident false alarms: the TIDE types of
  :mod:`tasks.error_analysis`) plus a loss proxy, ``mean over its boxes of 1 - IoU x confidence`` of the best
  same-class prediction; extra repeats ``round(mining_strength x score)``;
- **rare-class oversampling**: the frame holds a class whose share of the train boxes is below ``rare_share``;
  extra repeats ``round((rare_share / share) ^ rare_power) - 1`` for its rarest class.

Two caps keep them from crowding out the rest: no frame is listed more than ``max_repeats`` times, and all extra
repeats together are at most ``max_extra_share`` x the train frames (the frames with the most extra repeats keep
theirs, ties by order). :func:`repeat_counts` is pure; :func:`train_repeats` computes them for a dataset
version (running the champion over its train split when mining) and :func:`detloop.datasets.materialize` writes
the list.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from detloop.detections import Detections


def frame_error_scores(
    gts: Sequence[Detections], preds: Sequence[Detections], min_confidence: float = 0.25, fg_iou: float = 0.5,
    bg_iou: float = 0.1,
) -> np.ndarray:
    """How wrong a model is on each labelled frame: ``(F,)`` float >= 0 (0: every box found, nothing else).

    ``errors / max(1, boxes) + mean(1 - IoU x confidence)`` where errors counts the boxes missed and the
    predictions at >= ``min_confidence`` of type cls, loc, both or bkg (duplicates are NMS's business), and the
    mean runs over the frame's boxes with their best same-class prediction (0 when the frame has no box).
    """
    from detloop.ops import box_iou
    from tasks.error_analysis import classify_image

    out = np.zeros(len(gts), np.float64)
    for i, (g, p) in enumerate(zip(gts, preds, strict=True)):
        e = classify_image(g, p, fg_iou, bg_iou)
        conf_ok = p.confidence >= min_confidence
        wrong = int(e.gt_missed.sum()) + int((np.isin(e.pred_type, ("cls", "loc", "both", "bkg")) & conf_ok).sum())
        loss = 0.0
        if len(g):
            if len(p):
                q = box_iou(g.xyxy, p.xyxy) * p.confidence[None, :]
                q = np.where(g.class_id[:, None] == p.class_id[None, :], q, 0.0)
                loss = float(np.mean(1.0 - q.max(axis=1)))
            else:
                loss = 1.0
        out[i] = wrong / max(1, len(g)) + loss
    return out


def rare_extra(class_counts: np.ndarray, rare_share: float, power: float) -> np.ndarray:
    """Extra repeats per frame for rare classes: ``(F, C)`` boxes per frame and class -> ``(F,)`` int.

    A class is rare when its share of all boxes is below ``rare_share``; a frame with boxes of rare classes gets
    ``round((rare_share / share) ^ power) - 1`` extra repeats for the rarest of them (0 otherwise).
    """
    counts = np.asarray(class_counts, np.float64).reshape(len(class_counts), -1)
    total = counts.sum()
    if total <= 0:
        return np.zeros(len(counts), np.int64)
    share = counts.sum(axis=0) / total
    factor = np.where((share > 0) & (share < rare_share), (rare_share / np.maximum(share, 1e-12)) ** power, 1.0)
    per_frame = np.where(counts > 0, factor[None, :], 1.0).max(axis=1)
    return np.maximum(np.round(per_frame).astype(np.int64) - 1, 0)


def repeat_counts(
    n_frames: int, mining_scores: np.ndarray | None = None, rare: np.ndarray | None = None,
    mining_strength: float = 1.0, max_repeats: int = 4, max_extra_share: float = 0.5,
) -> np.ndarray:
    """Times each train frame is listed: ``(F,)`` int in ``[1, max_repeats]``.

    Args:
        n_frames: F.
        mining_scores: ``(F,)`` error scores (:func:`frame_error_scores`), or None (no mining).
        rare: ``(F,)`` extra repeats for rare classes (:func:`rare_extra`), or None.
        mining_strength: extra repeats per unit of error score.
        max_repeats: cap per frame.
        max_extra_share: cap of all extra repeats, as a share of ``n_frames``; the frames with the most extra
            repeats keep theirs (ties: earlier frames first), the rest are cut.
    """
    extra = np.zeros(n_frames, np.float64)
    if mining_scores is not None:
        extra += np.round(mining_strength * np.asarray(mining_scores, np.float64))
    if rare is not None:
        extra += np.asarray(rare, np.float64)
    extra = np.clip(extra, 0, max_repeats - 1).astype(np.int64)
    budget = int(np.floor(max_extra_share * n_frames + 1e-9))
    if extra.sum() > budget:
        order = np.argsort(-extra, kind="stable")
        kept = np.zeros(n_frames, np.int64)
        left = budget
        for i in order:
            if left <= 0:
                break
            kept[i] = min(int(extra[i]), left)
            left -= kept[i]
        extra = kept
    return 1 + extra


def train_repeats(store: Any, settings: Any, version_id: str, champion_artifact: Any | None = None,
                  ) -> tuple[dict[str, int], dict[str, Any]]:
    """Per-frame repeats of ``version_id``'s train split (``training.sample_weights``).

    Args:
        champion_artifact: the champion's scoring artifact directory (mining runs it over the train frames);
            None: no mining.

    Returns:
        ``({frame_sha: times} for frames listed more than once, report)``.
    """
    from detloop import datasets as ds
    from tasks.evaluation import predict_items
    from tasks.slices import items_from_version

    sw = settings.training.sample_weights
    manifest = ds.load_manifest(store, settings, version_id)
    train = manifest.by_split("train")
    report: dict[str, Any] = {"frames": len(train), "mining": False, "rare_oversampling": False}
    if not train or not (sw.mining or sw.rare_oversampling):
        return {}, report
    mining = rare = None
    if sw.rare_oversampling:
        counts = np.array([e.class_counts or [0] * len(settings.classes) for e in train], np.int64)
        rare = rare_extra(counts, sw.rare_share, sw.rare_power)
        report["rare_oversampling"] = True
    if sw.mining and champion_artifact is not None:
        items = items_from_version(store, settings, version_id, "train", manifest=manifest)
        preds = predict_items(champion_artifact, items, settings, settings.model.batch_size)
        mining = frame_error_scores([it.gt for it in items], preds, settings.error_analysis.count_min_confidence,
                                    settings.error_analysis.fg_iou, settings.error_analysis.bg_iou)
        report.update(mining=True, mean_error_score=float(mining.mean()))
    reps = repeat_counts(len(train), mining, rare, sw.mining_strength, sw.max_repeats, sw.max_extra_share)
    out = {e.frame_sha: int(r) for e, r in zip(train, reps, strict=True) if r > 1}
    report.update(repeated_frames=len(out), extra_listings=int(reps.sum() - len(reps)))
    return out, report
