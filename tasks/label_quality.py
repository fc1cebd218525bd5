"""Label quality and consensus (pure): how a human's boxes compare with the pre-annotation and each other.

Label quality is measured per frame against the pre-annotation the annotator saw (the task's
prediction), by greedy one-to-one matching in decreasing IoU: same class and IoU >= 0.5 =
``accepted``; any remaining pair with IoU >= 0.1 (or a class change) = ``moved``; predicted boxes left
= ``deleted``; human boxes left = ``added`` (the model's misses). A frame is *hard* when anything was
moved, deleted or added: the trainer oversamples those.

Several annotations of one frame are reduced by :func:`consensus` (boxes a strict majority agree on).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from detloop.contracts import Quality
from detloop.detections import Detections
from detloop.ops import box_iou

IOU_ACCEPT = 0.5
IOU_MOVED = 0.1


def consensus(parts: Sequence[Detections], iou_threshold: float = IOU_ACCEPT) -> Detections:
    """Boxes a strict majority of annotators agree on (same class, IoU >= threshold), averaged.

    Args:
        parts: one ``Detections`` per annotation of the same frame.

    Returns:
        Detections with confidence = share of annotators supporting each box.
    """
    k = len(parts)
    if k == 0:
        return Detections.empty()
    if k == 1:
        return parts[0]
    clusters: list[dict[str, Any]] = []  # {"cls", "boxes": [(annot idx, xyxy)]}
    for ai, d in enumerate(parts):
        for j in range(len(d)):
            box, c = d.xyxy[j], int(d.class_id[j])
            best, best_iou = None, iou_threshold
            for cl in clusters:
                if cl["cls"] != c or any(a == ai for a, _ in cl["boxes"]):
                    continue
                ref = np.mean([b for _, b in cl["boxes"]], axis=0)
                iou = float(box_iou(ref[None], box[None])[0, 0])
                if iou >= best_iou:
                    best, best_iou = cl, iou
            if best is None:
                clusters.append({"cls": c, "boxes": [(ai, box)]})
            else:
                best["boxes"].append((ai, box))
    kept = [cl for cl in clusters if len(cl["boxes"]) * 2 > k]
    if not kept:
        return Detections.empty()
    return Detections(
        xyxy=np.array([np.mean([b for _, b in cl["boxes"]], axis=0) for cl in kept]),
        confidence=np.array([len(cl["boxes"]) / k for cl in kept]),
        class_id=np.array([cl["cls"] for cl in kept]),
    )


def clip_boxes(dets: Detections, width: int, height: int, min_px: float) -> tuple[Detections, int, int]:
    """Clip boxes to the frame and drop degenerate ones.

    Returns:
        (kept detections, number of boxes clipped, number dropped because narrower or lower than
        ``min_px`` pixels after clipping, zero-area and fully-outside boxes included).
    """
    if not len(dets):
        return dets, 0, 0
    xy = dets.xyxy.astype(np.float64)
    lo = np.minimum(xy[:, :2], xy[:, 2:])  # a flipped box is still the same rectangle
    hi = np.maximum(xy[:, :2], xy[:, 2:])
    xy = np.concatenate([lo, hi], axis=1)
    clipped = xy.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, width)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, height)
    w = clipped[:, 2] - clipped[:, 0]
    h = clipped[:, 3] - clipped[:, 1]
    keep = (w >= max(min_px, 1e-9)) & (h >= max(min_px, 1e-9))
    changed = np.abs(clipped - xy).max(axis=1) > 1e-3
    out = Detections(xyxy=clipped[keep], confidence=dets.confidence[keep], class_id=dets.class_id[keep])
    return out, int((changed & keep).sum()), int((~keep).sum())


def label_quality(pred: Detections, human: Detections, iou_accept: float = IOU_ACCEPT,
                  iou_moved: float = IOU_MOVED) -> Quality:
    """Match predicted to human boxes one-to-one, greedily by decreasing IoU.

    Args:
        pred: ``(P,)`` boxes of the pre-annotation, frame pixels.
        human: ``(H,)`` boxes the annotator submitted, frame pixels.

    Returns:
        accepted (IoU >= ``iou_accept``, same class), moved (IoU >= ``iou_moved`` otherwise, class
        changes included), deleted (predicted, unmatched), added (human, unmatched).
    """
    q = Quality(predicted=len(pred))
    if not len(pred) or not len(human):
        q.deleted, q.added = len(pred), len(human)
        return q
    iou = box_iou(pred.xyxy, human.xyxy)
    same = pred.class_id[:, None] == human.class_id[None, :]
    # accepted pairs first (same class, high IoU), then anything overlapping enough
    used_p: set[int] = set()
    used_h: set[int] = set()
    for stage in ("accept", "move"):
        cand = np.argwhere((iou >= iou_accept) & same) if stage == "accept" else np.argwhere(iou >= iou_moved)
        order = np.argsort(-iou[cand[:, 0], cand[:, 1]], kind="stable") if len(cand) else []
        for idx in order:
            i, j = (int(v) for v in cand[idx])
            if i in used_p or j in used_h:
                continue
            used_p.add(i)
            used_h.add(j)
            if stage == "accept":
                q.accepted += 1
            else:
                q.moved += 1
    q.deleted = len(pred) - len(used_p)
    q.added = len(human) - len(used_h)
    return q


def quality_report(q: Quality) -> dict[str, Any]:
    """Counts plus shares: accepted/moved/deleted of predicted boxes, added per human box."""
    human = q.accepted + q.moved + q.added
    return {
        **asdict(q),
        "accepted_share": q.accepted / q.predicted if q.predicted else None,
        "moved_share": q.moved / q.predicted if q.predicted else None,
        "deleted_share": q.deleted / q.predicted if q.predicted else None,
        "added_share": q.added / human if human else None,
    }
