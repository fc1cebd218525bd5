"""Vectorised box geometry: IoU, hard NMS, soft-NMS, letterbox. Pure numpy, no torch.

Boxes are ``xyxy`` float arrays in pixels, shape ``(N, 4)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def box_area(xyxy: np.ndarray) -> np.ndarray:
    """Areas of boxes. ``(N, 4) -> (N,)`` in square pixels (0 for degenerate boxes)."""
    xyxy = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    return np.clip(xyxy[:, 2] - xyxy[:, 0], 0, None) * np.clip(xyxy[:, 3] - xyxy[:, 1], 0, None)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU. ``(N, 4), (M, 4) -> (N, M)``; 0 where the union is empty."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou


def weighted_merge(xyxy: np.ndarray, scores: np.ndarray, class_id: np.ndarray, keep: np.ndarray,
                   iou_threshold: float) -> np.ndarray:
    """Box voting after hard NMS (merge-NMS, as YOLOv5's ``merge=True``; the coordinate half of weighted box
    fusion): each kept box becomes the score-weighted mean of its cluster, the candidates of its class that
    overlap it by IoU >= ``iou_threshold`` (itself included).

    ``xyxy (M, 4)``, ``scores (M,)``, ``class_id (M,)`` all candidates; ``keep (K,)`` indices NMS kept.
    Returns the fused ``(K, 4)`` boxes (float64); scores and classes stay NMS's.
    """
    b = np.asarray(xyxy, np.float64).reshape(-1, 4)
    k = np.asarray(keep, np.int64).reshape(-1)
    if k.size == 0:
        return np.zeros((0, 4), np.float64)
    s = np.asarray(scores, np.float64).reshape(-1)
    c = np.asarray(class_id).reshape(-1)
    member = (box_iou(b[k], b) >= iou_threshold) & (c[k][:, None] == c[None, :])
    member[np.arange(k.size), k] = True  # a kept box is always in its own cluster (even a degenerate one)
    w = member * np.maximum(s, 0.0)[None, :]
    total = w.sum(axis=1, keepdims=True)
    fused = np.where(total > 0, (w @ b) / np.where(total > 0, total, 1.0), b[k])
    return fused


def nms(xyxy: np.ndarray, scores: np.ndarray, iou_threshold: float, class_id: np.ndarray | None = None,
        group: np.ndarray | None = None) -> np.ndarray:
    """Greedy hard NMS, optionally per class.

    Args:
        xyxy: ``(N, 4)`` boxes.
        scores: ``(N,)`` scores.
        iou_threshold: boxes overlapping a kept box by more than this are removed.
        class_id: ``(N,)``; when given, boxes of different classes never suppress each other.
        group: ``(N,)``; when given, boxes of the same group never suppress each other (the tiles of a frame:
            only duplicates seen by two different tiles are removed).

    Returns:
        ``(K,)`` int64 indices of kept boxes, by descending score.
    """
    xyxy = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(xyxy) == 0:
        return np.zeros(0, dtype=np.int64)
    if class_id is not None:
        # the usual offset trick: move each class to its own region of the plane
        offset = np.asarray(class_id, dtype=np.float64).reshape(-1, 1) * (xyxy.max() + 1.0)
        xyxy = xyxy + offset
    order = np.argsort(-scores, kind="stable")
    areas = box_area(xyxy)
    grp = None if group is None else np.asarray(group).reshape(-1)
    keep: list[int] = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        if rest.size == 0:
            break
        lt = np.maximum(xyxy[i, :2], xyxy[rest, :2])
        rb = np.minimum(xyxy[i, 2:], xyxy[rest, 2:])
        wh = np.clip(rb - lt, 0, None)
        inter = wh[:, 0] * wh[:, 1]
        union = areas[i] + areas[rest] - inter
        iou = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
        if grp is not None:
            iou = np.where(grp[rest] == grp[i], 0.0, iou)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def soft_nms(
    xyxy: np.ndarray,
    scores: np.ndarray,
    sigma: float = 0.5,
    score_threshold: float = 0.001,
    class_id: np.ndarray | None = None,
    method: str = "gaussian",
    iou_threshold: float = 0.3,
    max_keep: int | None = None,
    group: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Soft-NMS (Bodla et al. 2017): decay the scores of overlapping boxes instead of deleting them.

    In crowds hard NMS deletes real neighbours; soft-NMS keeps them with a lowered score.

    Args:
        xyxy: ``(N, 4)`` boxes.
        scores: ``(N,)`` scores.
        sigma: Gaussian decay ``exp(-iou^2 / sigma)``.
        score_threshold: boxes whose decayed score falls below this are dropped.
        class_id: ``(N,)``; boxes of different classes do not decay each other.
        method: ``"gaussian"`` or ``"linear"`` (linear decays by ``1 - iou`` above ``iou_threshold``).
        max_keep: stop after this many boxes (the rest could only be kept with lower scores): bounds the cost at
            ``max_keep x N`` instead of ``N^2`` on tens of thousands of low-score candidates.
        group: ``(N,)``; boxes of the same group do not decay each other (see :func:`nms`).

    Returns:
        ``(keep, new_scores)``: indices ``(K,)`` into the input, by descending new score, and the
        decayed scores ``(K,)``.
    """
    if method not in ("gaussian", "linear"):
        raise ValueError(f"method must be 'gaussian' or 'linear', got {method!r}")
    boxes = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    s = np.asarray(scores, dtype=np.float64).reshape(-1).copy()
    n = len(boxes)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    cls = None if class_id is None else np.asarray(class_id).reshape(-1)
    grp = None if group is None else np.asarray(group).reshape(-1)
    idx = np.arange(n)
    keep: list[int] = []
    kept_scores: list[float] = []
    alive = np.ones(n, dtype=bool)
    while alive.any():
        cand = idx[alive]
        i = cand[np.argmax(s[cand])]
        if s[i] < score_threshold:
            break
        keep.append(int(i))
        kept_scores.append(float(s[i]))
        alive[i] = False
        rest = idx[alive]
        if rest.size == 0 or (max_keep is not None and len(keep) >= max_keep):
            break
        iou = box_iou(boxes[i : i + 1], boxes[rest])[0]
        if cls is not None:
            iou = np.where(cls[rest] == cls[i], iou, 0.0)
        if grp is not None:
            iou = np.where(grp[rest] == grp[i], 0.0, iou)
        if method == "gaussian":
            decay = np.exp(-(iou**2) / sigma)
        else:
            decay = np.where(iou > iou_threshold, 1.0 - iou, 1.0)
        s[rest] *= decay
        alive[rest[s[rest] < score_threshold]] = False
    return np.asarray(keep, dtype=np.int64), np.asarray(kept_scores, dtype=np.float64)


@dataclass(frozen=True)
class Letterbox:
    """How a frame was resized and padded to the square model input (Ultralytics' LetterBox).

    Attributes:
        orig_w, orig_h: original frame size in pixels.
        size: model input side in pixels.
        scale: resize gain (input pixels per frame pixel).
        pad_x, pad_y: left and top padding in input pixels.
    """

    orig_w: int
    orig_h: int
    size: int
    scale: float
    pad_x: int
    pad_y: int

    @classmethod
    def compute(cls, orig_w: int, orig_h: int, size: int) -> Letterbox:
        """Same geometry as ``ultralytics.data.augment.LetterBox(auto=False, center=True)``."""
        r = min(size / orig_h, size / orig_w)
        new_w, new_h = round(orig_w * r), round(orig_h * r)
        dw, dh = (size - new_w) / 2, (size - new_h) / 2
        return cls(orig_w, orig_h, size, r, round(dw - 0.1), round(dh - 0.1))

    @property
    def resized(self) -> tuple[int, int]:
        """(width, height) of the frame inside the input, before padding."""
        return round(self.orig_w * self.scale), round(self.orig_h * self.scale)

    def to_input(self, xyxy: np.ndarray) -> np.ndarray:
        """Frame pixels -> model input pixels. ``(N, 4) -> (N, 4)``."""
        out = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4) * self.scale
        out[:, [0, 2]] += self.pad_x
        out[:, [1, 3]] += self.pad_y
        return out

    def to_frame(self, xyxy: np.ndarray, clip: bool = True) -> np.ndarray:
        """Model input pixels -> frame pixels (undo the letterbox). ``(N, 4) -> (N, 4)``."""
        out = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4).copy()
        out[:, [0, 2]] -= self.pad_x
        out[:, [1, 3]] -= self.pad_y
        out /= self.scale
        if clip:
            out[:, [0, 2]] = out[:, [0, 2]].clip(0, self.orig_w)
            out[:, [1, 3]] = out[:, [1, 3]].clip(0, self.orig_h)
        return out


def letterbox_image(img: np.ndarray, size: int, pad_value: int = 114) -> tuple[np.ndarray, Letterbox]:
    """Resize and pad an ``(H, W, 3)`` uint8 image to ``(size, size, 3)``, as Ultralytics does.

    Uses cv2 bilinear resize (the same call Ultralytics makes), imported lazily.
    """
    import cv2

    h, w = img.shape[:2]
    lb = Letterbox.compute(w, h, size)
    new_w, new_h = lb.resized
    if (w, h) != (new_w, new_h):
        img = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    out = np.full((size, size, 3), pad_value, dtype=np.uint8)
    out[lb.pad_y : lb.pad_y + new_h, lb.pad_x : lb.pad_x + new_w] = img
    return out, lb
