"""From the raw YOLO head to boxes in frame pixels: the one decode + NMS of detloop (numpy + OpenCV).

Production scoring (:mod:`tasks.scoring`), evaluation (:mod:`tasks.evaluation`) and the registered MLflow
model (:mod:`detloop.serving`) decode with :func:`decode_raw`, so the boxes the gate measured are the boxes
scoring and serving produce. The overlap resolution (``model.nms``: hard NMS, Gaussian or linear soft-NMS) and
the merging of a tiled frame's boxes (``model.tiling``, :mod:`detloop.tiling`) are here, once:
:func:`decode_inputs` is what all three call. A YOLO26 artifact exported NMS-free (``meta.json`` ``head:
one2one``, ``model.nms_free``) is decoded by top-k instead of NMS (:func:`for_head`), by all three alike.

The raw head of one image is ``(4 + C, A)``: per anchor ``cx, cy, w, h`` in model-input pixels followed by C
independent sigmoid class scores. :meth:`detloop.detections.Detections.from_yolo_raw` is the pure-numpy
reference the tests compare :func:`decode_raw` with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from detloop.detections import Detections
from detloop.ops import Letterbox, soft_nms, weighted_merge
from detloop.preprocess import FrameInput
from detloop.tiling import Tile, merge_tiles
from detloop.tiling import to_frame as tile_to_frame


@dataclass(frozen=True)
class DecodeParams:
    """How raw head output becomes detections.

    Attributes:
        conf_threshold: minimum top-class score of a candidate (0-1).
        iou_threshold: per-class NMS IoU threshold (0-1).
        max_det: detections kept per frame after NMS.
        max_candidates: highest-scoring candidates per frame that enter NMS.
        nms: ``hard`` (greedy NMS deletes a box overlapping a better one of its class by more than
            ``iou_threshold``), ``weighted`` (hard NMS, then each kept box becomes the score-weighted mean of
            the candidates it suppressed and itself: box voting, :func:`detloop.ops.weighted_merge`),
            ``gaussian`` (soft-NMS: scores decay by ``exp(-iou^2 / sigma)``), ``linear``
            (scores decay by ``1 - iou`` above ``iou_threshold``) or ``topk`` (no NMS: the ``max_det`` best
            candidates; the decode of a one-to-one head, set by :func:`for_head`, never configured).
        sigma: Gaussian soft-NMS decay.
        score_floor: soft-NMS drops boxes whose decayed score falls below this.
    """

    conf_threshold: float
    iou_threshold: float
    max_det: int
    max_candidates: int
    nms: str = "hard"
    sigma: float = 0.5
    score_floor: float = 0.001


TOPK = "topk"


def for_head(p: DecodeParams, head: str) -> DecodeParams:
    """The decode of an artifact whose ``meta.json`` says ``head``: a one-to-one (NMS-free) head is decoded by
    top-k (its training already suppressed duplicates), a one-to-many head with ``p`` as configured."""
    from dataclasses import replace

    if head == "one2one":
        return replace(p, nms=TOPK)
    if head != "one2many":
        raise ValueError(f"unknown head {head!r} in the artifact's meta.json (one2many or one2one)")
    return p


def flip_raw(raw: np.ndarray, size: int) -> np.ndarray:
    """Raw head output of a horizontally flipped input, mapped back: ``cx -> S - cx``. ``(B, 4+C, A)``."""
    out = np.array(raw, copy=True)
    out[:, 0, :] = size - out[:, 0, :]
    return out


def decode_raw(raw: np.ndarray, lb: Letterbox, conf_threshold: float, iou_threshold: float, max_det: int,
               max_candidates: int, nms: str = "hard", sigma: float = 0.5, score_floor: float = 0.001) -> Detections:
    """One image's raw head ``(4 + C, A)`` -> Detections with ``class_scores`` ``(N, C)``, in frame pixels.

    Candidates: top-class score above ``conf_threshold``, at most ``max_candidates`` (highest first). Hard NMS
    gives the same result as :meth:`Detections.from_yolo_raw` (per-class greedy NMS, kept by descending score) but
    runs in OpenCV's C++ ``NMSBoxesBatched`` (~2 ms for 2,000 candidates instead of ~300 ms in the numpy loop).
    Soft-NMS (``gaussian`` / ``linear``, :func:`detloop.ops.soft_nms`, per class) keeps overlapping boxes with
    decayed confidences; each kept box's ``class_scores`` row stays the model's own (undecayed) vector.
    """
    import cv2

    nc = raw.shape[0] - 4
    conf = raw[4:].max(axis=0)  # (A,)
    cand = np.flatnonzero(conf > conf_threshold)
    if cand.size == 0:
        return Detections.empty(nc)
    if cand.size > max_candidates:
        cand = cand[np.argpartition(-conf[cand], max_candidates - 1)[:max_candidates]]
    cs = np.ascontiguousarray(raw[4:, cand].T)  # (K, C)
    cid = cs.argmax(axis=1)
    cf = conf[cand]
    cx, cy, w, h = raw[0, cand], raw[1, cand], raw[2, cand], raw[3, cand]
    xywh = np.stack([cx - w / 2, cy - h / 2, w, h], axis=1).astype(np.float64)
    xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    if nms == TOPK:  # NMS-free: the best max_det candidates, highest first
        keep = np.argsort(-cf, kind="stable")[:max_det]
        score = cf[keep]
    elif nms in ("hard", "weighted"):
        # top_k=0: OpenCV applies top_k to the candidates *before* suppression (NMSFast_), so top_k=max_det
        # dropped every object whose best box ranked below the max_det-th candidate; the cap applies after
        keep = np.asarray(cv2.dnn.NMSBoxesBatched(xywh, cf, cid, 0.0, float(iou_threshold), top_k=0),
                          np.int64).reshape(-1)[:max_det]
        score = cf[keep]
    else:
        keep, decayed = soft_nms(xyxy, cf, sigma=sigma, score_threshold=score_floor, class_id=cid, method=nms,
                                 iou_threshold=iou_threshold, max_keep=max_det)
        score = decayed.astype(cf.dtype)
    # box voting: each kept box becomes its cluster's score-weighted mean (scores and classes stay NMS's)
    boxes = weighted_merge(xyxy, cf, cid, keep, iou_threshold) if nms == "weighted" else xyxy[keep]
    return Detections(xyxy=lb.to_frame(boxes), confidence=score, class_id=cid[keep], class_scores=cs[keep])


def decode_one(raw: np.ndarray, lb: Letterbox, p: DecodeParams) -> Detections:
    """:func:`decode_raw` of one image with ``p``."""
    return decode_raw(raw, lb, p.conf_threshold, p.iou_threshold, p.max_det, p.max_candidates, p.nms, p.sigma,
                      p.score_floor)


def decode_frames(raw: np.ndarray, letterboxes: Sequence[Letterbox], p: DecodeParams) -> list[Detections]:
    """Per-image :func:`decode_raw` of a batch ``(B, 4 + C, A)`` with ``p``."""
    return [decode_one(raw[i], lb, p) for i, lb in enumerate(letterboxes)]


def decode_tiled(raw: np.ndarray, letterboxes: Sequence[Letterbox], tiles: Sequence[Tile], width: int, height: int,
                 p: DecodeParams, ios_threshold: float = 0.5) -> Detections:
    """A tiled frame's raw heads ``(T, 4 + C, A)`` (one per tile) -> one set of Detections in frame pixels.

    Each tile is decoded as a frame of its own (``p``: candidates, NMS or soft-NMS), its boxes shifted to frame
    pixels, then :func:`detloop.tiling.merge_tiles` joins pieces of objects cut by tile borders and resolves
    duplicates seen by two tiles with the same ``p.nms``. ``class_scores`` rows stay aligned with the boxes.
    """
    parts = [decode_one(raw[k], lb, p) for k, lb in enumerate(letterboxes)]
    nc = raw.shape[1] - 4
    if not any(len(d) for d in parts):
        return Detections.empty(nc)
    xyxy = np.concatenate([tile_to_frame(d.xyxy, t) for d, t in zip(parts, tiles, strict=True)])
    conf = np.concatenate([d.confidence for d in parts])
    cid = np.concatenate([d.class_id for d in parts])
    cs = np.concatenate([d.class_scores if d.class_scores is not None else np.zeros((len(d), nc), np.float32)
                         for d in parts])
    tile_index = np.concatenate([np.full(len(d), k, np.int64) for k, d in enumerate(parts)])
    method = "hard" if p.nms == TOPK else p.nms  # tiles' duplicates of one object need an overlap rule
    rows, boxes, scores = merge_tiles(xyxy, conf, cid, tile_index, tiles, width, height, method=method,
                                      iou_threshold=p.iou_threshold, sigma=p.sigma, score_floor=p.score_floor,
                                      ios_threshold=ios_threshold, max_keep=p.max_det)
    boxes = boxes.copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    return Detections(xyxy=boxes.astype(np.float32), confidence=scores.astype(np.float32), class_id=cid[rows],
                      class_scores=cs[rows])


def decode_inputs(raw: np.ndarray, frames: Sequence[FrameInput], p: DecodeParams) -> list[Detections]:
    """Raw heads of the concatenated model inputs of ``frames`` (:attr:`FrameInput.parts`, in order) -> one
    Detections per frame: a whole frame is decoded as is, a tiled frame through :func:`decode_tiled`."""
    out: list[Detections] = []
    i = 0
    for f in frames:
        n = len(f.parts)
        if f.tiles is None:
            out.append(decode_one(raw[i], f.parts[0].letterbox, p))
        else:
            out.append(decode_tiled(raw[i : i + n], [m.letterbox for m in f.parts], f.tiles, f.width, f.height, p,
                                    f.ios_threshold))
        i += n
    return out
