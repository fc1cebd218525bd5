"""Offline test-time augmentation: run a batch as several views (flipped, other input scales), map every view's raw
head back to the plain view's input pixels and concatenate the anchors, so the one decode of detloop
(:func:`detloop.postprocess.decode_inputs`: candidates, then ``model.nms`` hard NMS or soft-NMS) merges all views'
boxes. This is how Ultralytics' own ``augment=True`` merges (views scaled on the input tensor, NMS over the union).

Offline only: scoring (``model.tta.scoring``) and the golden evaluation (``model.tta.evaluation``); the served model
(:mod:`detloop.serving`) never calls this. Views at a scale other than 1 need a scoring artifact with dynamic height
and width (``tasks.export.export_scoring_artifact(dynamic_hw=True)``).

Shapes: a batch is ``(B, 3, S, S)`` float32; a raw head ``(B, 4 + C, A)`` (cx, cy, w, h in input pixels, then C
sigmoid scores); a view at scale s runs at side ``S' = round(S s / stride) stride`` and its boxes are multiplied by
``S / S'``; a flipped view's ``cx`` becomes ``S' - cx``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from detloop.errors import DataError
from detloop.postprocess import flip_raw

View = tuple[float, bool]  # (scale, horizontally flipped)
Infer = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]


def views(scales: Sequence[float], flip: bool) -> list[View]:
    """The views of a TTA config: the plain view first, the flipped one (scale 1), then the other scales."""
    out: list[View] = [(1.0, False)]
    if flip:
        out.append((1.0, True))
    out += [(float(s), False) for s in scales if float(s) != 1.0]
    return out


def view_side(size: int, scale: float, stride: int) -> int:
    """Input side of a view: ``size * scale`` rounded to a multiple of ``stride`` (at least one stride)."""
    return max(int(stride), round(size * scale / stride) * int(stride))


def resize_batch(x: np.ndarray, side: int) -> np.ndarray:
    """``(B, 3, S, S)`` -> ``(B, 3, side, side)`` with bilinear interpolation (the letterbox padding scales along)."""
    import cv2

    if x.shape[-1] == side and x.shape[-2] == side:
        return x
    interp = cv2.INTER_AREA if side < x.shape[-1] else cv2.INTER_LINEAR
    out = np.empty((x.shape[0], x.shape[1], side, side), np.float32)
    for i in range(x.shape[0]):
        out[i] = cv2.resize(np.ascontiguousarray(x[i].transpose(1, 2, 0)), (side, side),
                            interpolation=interp).transpose(2, 0, 1)
    return out


def tta_infer(infer: Infer, x: np.ndarray, tta_views: Sequence[View], stride: int) -> tuple[np.ndarray, Any]:
    """Run ``infer`` on every view of ``x`` and concatenate the raw heads, mapped to ``x``'s input pixels.

    Args:
        infer: ``(B, 3, H, W) -> (raw (B, 4 + C, A), embedding (B, D) or None)``.
        x: the plain view ``(B, 3, S, S)`` float32.
        tta_views: from :func:`views`.
        stride: the model's largest stride (view sides are multiples of it).

    Returns:
        ``(raw (B, 4 + C, sum of the views' A), embedding of the plain view)``.
    """
    size = int(x.shape[-1])
    raws: list[np.ndarray] = []
    emb: Any = None
    for scale, flipped in tta_views:
        side = view_side(size, scale, stride)
        xs = resize_batch(x, side)
        if flipped:
            xs = np.ascontiguousarray(xs[..., ::-1])
        raw, e = infer(xs)
        raw = np.asarray(raw, np.float32)
        if flipped:
            raw = flip_raw(raw, side)
        if side != size:
            raw = raw.copy()
            raw[:, :4, :] *= size / side
        if scale == 1.0 and not flipped:
            emb = e
        raws.append(raw)
    return np.concatenate(raws, axis=2), emb


def check_input_shape(input_shape: Sequence[Any], tta_views: Sequence[View], where: str) -> None:
    """Refuse views at other scales on a model whose ONNX input has a fixed height and width.

    Raises:
        DataError: naming ``where`` and how to get a dynamic export.
    """
    fixed = len(input_shape) == 4 and isinstance(input_shape[2], int) and isinstance(input_shape[3], int)
    if fixed and any(s != 1.0 for s, _ in tta_views):
        raise DataError(f"{where}: test-time augmentation at scales other than 1 needs a scoring artifact exported "
                        f"with dynamic height and width (input is {list(input_shape)}); register the model again "
                        "with model.tta on (export_scoring_artifact(dynamic_hw=True)), or set model.tta.scales: [1.0]")


class TtaScorer:
    """A scorer (``tasks.scoring.Scorer``) whose :meth:`infer` is :func:`tta_infer` of another's."""

    def __init__(self, inner: Any, scales: Sequence[float], flip: bool):
        self.inner = inner
        self.meta = inner.meta
        self.name = inner.name  # the model's identity (predictions prefixes) is unchanged; caches key the settings
        self.concurrent = getattr(inner, "concurrent", False)
        self.views = views(scales, flip)
        session = getattr(inner, "session", None)
        if session is not None:
            check_input_shape(session.get_inputs()[0].shape, self.views, f"model {self.name}")

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return tta_infer(self.inner.infer, batch, self.views, int(self.meta.stride))
