"""Sliced inference geometry (pure): cover a frame with overlapping tiles, map boxes back, merge them.

Small objects lose resolution when a whole frame is shrunk to the model input; scoring overlapping tiles
at (or near) native resolution and merging their boxes recovers them (SAHI, Akyon et al. 2022), at a cost of
about the number of tiles. The geometry is kept here, as small pure functions, so scoring, evaluation and
the served model cut and merge frames identically.

The known failure modes of tiling, and what prevents each:

- **Duplicates along tile borders**: an object inside the overlap of two tiles is seen twice. Merged by IoU
  across tiles (hard NMS, or soft-NMS when configured) after mapping to frame coordinates.
- **A large object cut into pieces**: a tile sees only part of an object that crosses its border. A piece
  whose box touches the *inner* border of its tile (a cut, not the frame's own edge) is merged with an
  overlapping same-class box from another tile into their union, when their intersection covers most of
  the smaller one (intersection over smaller, IoS). With the optional full-frame pass the whole object is
  also seen at once, and the union is never smaller than it.
- **A small object merged into a large one**: IoS alone would swallow a small object lying inside a large
  one. Pieces are merged only across different tiles and only when one of them is cut at a tile border, so
  two real objects seen whole in the same tile are never merged.
- **The full-frame pass seeing the tiles' objects again**: at half the resolution a small object's full-frame
  box is placed a few pixels off its tile box, often below the NMS IoU, so both were kept and every such object
  was counted twice (a false positive each; measured on the soak's cameras: tiles with the full frame lost 0.04-0.08
  mAP50 to tiles alone). A full-frame box and a tile box of the same class are one object when their IoS reaches
  ``ios_threshold`` and their sizes are alike; the lower-scored is dropped (:func:`match_full_frame`). A
  full-frame box takes at most one box of each tile (each tile sees an object once), so a crowd neighbour seen
  only by the tiles is not taken for the duplicate of a full-frame box that already has its match there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from detloop.ops import box_area, box_iou, nms, soft_nms


@dataclass(frozen=True)
class TileSpec:
    """How a frame is tiled (``model.tiling``, per camera): tile side and minimum overlap in frame pixels, an
    extra whole-frame pass, and the IoS at which pieces of an object cut by a tile border are joined."""

    tile: int
    overlap: int
    full_frame: bool = True
    ios_threshold: float = 0.5


@dataclass(frozen=True)
class Tile:
    """One crop of a frame: ``[x0, x1) x [y0, y1)`` in frame pixels. ``full`` marks the whole-frame pass."""

    x0: int
    y0: int
    x1: int
    y1: int
    full: bool = False

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile starts along one axis: the fewest tiles whose neighbours overlap by >= ``overlap``, spread evenly
    from one edge to the other (so every overlap is alike, none wastefully large)."""
    if length <= tile:
        return [0]
    n = math.ceil((length - overlap) / (tile - overlap))
    step = (length - tile) / (n - 1)  # <= tile - overlap, so consecutive starts differ by <= tile - overlap
    return [round(i * step) for i in range(n)]


def tile_grid(width: int, height: int, tile: int, overlap: int, full_frame: bool = False) -> list[Tile]:
    """Tiles of side ``tile`` covering a ``width x height`` frame, neighbours overlapping by >= ``overlap`` px.

    Every pixel is covered; a frame smaller than a tile along an axis gets one tile of the frame's size
    there. With ``full_frame`` the whole frame is appended as one more tile (large objects seen whole).

    Raises:
        ValueError: a non-positive size, or an overlap outside ``[0, tile)``.
    """
    if width <= 0 or height <= 0 or tile <= 0:
        raise ValueError(f"frame {width}x{height} and tile {tile} must be positive")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile) = [0, {tile}), got {overlap}")
    out = [Tile(x, y, min(x + tile, width), min(y + tile, height))
           for y in _starts(height, tile, overlap) for x in _starts(width, tile, overlap)]
    if full_frame and len(out) > 1:
        out.append(Tile(0, 0, width, height, full=True))
    return out


def to_frame(xyxy: np.ndarray, t: Tile) -> np.ndarray:
    """``(N, 4)`` boxes in tile pixels -> frame pixels."""
    out = np.asarray(xyxy, np.float64).reshape(-1, 4).copy()
    out[:, [0, 2]] += t.x0
    out[:, [1, 3]] += t.y0
    return out


def cut_at_border(xyxy: np.ndarray, t: Tile, width: int, height: int, margin: float = 2.0) -> np.ndarray:
    """``(N,)`` bool: boxes (frame pixels) touching an inner border of tile ``t`` (within ``margin`` px).

    An inner border is a tile edge that is not the frame's own edge: an object touching it may continue in the
    next tile. Boxes of the full-frame tile are never cut.
    """
    b = np.asarray(xyxy, np.float64).reshape(-1, 4)
    if t.full or len(b) == 0:
        return np.zeros(len(b), bool)
    cut = np.zeros(len(b), bool)
    if t.x0 > 0:
        cut |= b[:, 0] <= t.x0 + margin
    if t.y0 > 0:
        cut |= b[:, 1] <= t.y0 + margin
    if t.x1 < width:
        cut |= b[:, 2] >= t.x1 - margin
    if t.y1 < height:
        cut |= b[:, 3] >= t.y1 - margin
    return cut


def intersection_over_smaller(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(N, M)`` intersection area over the smaller box's area."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    smaller = np.minimum(box_area(a)[:, None], box_area(b)[None, :])
    return np.where(smaller > 0, inter / np.maximum(smaller, 1e-12), 0.0)


def merge_cut_pieces(xyxy: np.ndarray, scores: np.ndarray, class_id: np.ndarray, tile_index: np.ndarray,
                     cut: np.ndarray, ios_threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Join pieces of objects cut by tile borders into their union box (greedy, by descending score).

    A pair is joined only when both have the same class, come from different tiles, at least one of them is
    cut at its tile's border, and their intersection over the smaller box is >= ``ios_threshold``.

    Args:
        xyxy: ``(N, 4)`` frame pixels; scores ``(N,)``; class_id ``(N,)``; tile_index ``(N,)``; cut ``(N,)`` bool.

    Returns:
        ``(keep, boxes, scores)``: indices of the surviving boxes (each the highest-scored member of its group,
        the other members dropped), their (union) boxes ``(K, 4)`` and scores ``(K,)`` (the group's maximum).
    """
    b = np.asarray(xyxy, np.float64).reshape(-1, 4)
    s = np.asarray(scores, np.float64).reshape(-1)
    n = len(b)
    if n == 0:
        return np.zeros(0, np.int64), b, s
    ios = intersection_over_smaller(b, b)
    joinable = ((class_id[:, None] == class_id[None, :]) & (tile_index[:, None] != tile_index[None, :])
                & (cut[:, None] | cut[None, :]) & (ios >= ios_threshold))
    order = np.argsort(-s, kind="stable")
    group = -np.ones(n, np.int64)
    keep: list[int] = []
    boxes: list[np.ndarray] = []
    for i in order:
        if group[i] >= 0:
            continue
        group[i] = len(keep)
        box = b[i].copy()
        members = [i]
        changed = True
        while changed:  # grow the group: a piece joins if it is joinable with any member
            changed = False
            for j in np.flatnonzero((group < 0) & joinable[members].any(axis=0)):
                group[j] = len(keep)
                members.append(int(j))
                box[:2] = np.minimum(box[:2], b[j, :2])
                box[2:] = np.maximum(box[2:], b[j, 2:])
                changed = True
        keep.append(int(i))
        boxes.append(box)
    k = np.asarray(keep, np.int64)
    return k, np.stack(boxes), s[k]


SAME_OBJECT_AREA_RATIO = 0.25  # a full-frame box and a tile box of one object: areas within 4x of each other


def match_full_frame(xyxy: np.ndarray, scores: np.ndarray, class_id: np.ndarray, tile_index: np.ndarray,
                     full: np.ndarray, ios_threshold: float = 0.5) -> np.ndarray:
    """Drop the duplicates between the full-frame pass and the tiles (pure).

    Two boxes of the same class, one from the full frame and one from a tile, are one object when the
    intersection covers ``ios_threshold`` of the smaller (intersection over smaller) and their sizes are alike (the
    smaller at least ``SAME_OBJECT_AREA_RATIO`` of the larger's area: a small object lying inside a large one is
    another object). Greedy by descending score:

    - a full-frame box is dropped when a higher-scored tile box (kept or itself dropped as a duplicate) is such a
      partner: the tiles see that object better, and the full frame's low-scored near-copies of it go too;
    - a tile box is dropped when a higher-scored kept full-frame box is such a partner and has not yet taken a box
      of this tile (an object in the tiles' overlap is seen once by each of its tiles); of several, the one with the
      highest IoU takes it. So of two overlapping objects of a crowd seen by one tile, the one the full frame did
      not see keeps its tile box.

    Args:
        xyxy: ``(N, 4)`` frame pixels; scores ``(N,)``; class_id ``(N,)``; tile_index ``(N,)``; full ``(N,)`` bool:
            from the full-frame tile.

    Returns:
        ``(K,)`` int64 indices of the kept boxes, by descending score.
    """
    b = np.asarray(xyxy, np.float64).reshape(-1, 4)
    s = np.asarray(scores, np.float64).reshape(-1)
    c = np.asarray(class_id).reshape(-1)
    ti = np.asarray(tile_index).reshape(-1)
    f = np.asarray(full, bool).reshape(-1)
    order = np.argsort(-s, kind="stable")
    if len(b) == 0 or f.all() or not f.any():
        return order.astype(np.int64)
    area = box_area(b)
    ratio = np.minimum(area[:, None], area[None, :]) / np.maximum(np.maximum(area[:, None], area[None, :]), 1e-12)
    same = ((intersection_over_smaller(b, b) >= ios_threshold) & (ratio >= SAME_OBJECT_AREA_RATIO)
            & (c[:, None] == c[None, :]) & (f[:, None] != f[None, :]))
    iou = box_iou(b, b)
    kept = np.zeros(len(b), bool)
    seen = np.zeros(len(b), bool)  # tile boxes already visited, kept or dropped
    taken: dict[int, set[int]] = {}  # kept full-frame box -> the tiles whose box it took
    out: list[int] = []
    for i in order:
        if f[i]:
            if (seen & same[i]).any():
                continue
        else:
            seen[i] = True
            cand = [int(k) for k in np.flatnonzero(kept & same[i]) if int(ti[i]) not in taken.get(int(k), ())]
            if cand:
                k = max(cand, key=lambda j: iou[i, j])
                taken.setdefault(k, set()).add(int(ti[i]))
                continue
        kept[i] = True
        out.append(int(i))
    return np.asarray(out, np.int64)


def merge_tiles(
    xyxy: np.ndarray,
    scores: np.ndarray,
    class_id: np.ndarray,
    tile_index: np.ndarray,
    tiles: Sequence[Tile],
    width: int,
    height: int,
    method: str = "hard",
    iou_threshold: float = 0.5,
    sigma: float = 0.5,
    score_floor: float = 0.001,
    ios_threshold: float = 0.5,
    max_keep: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge the boxes of all tiles of a frame (already in frame pixels) into one set of detections.

    1. with a full-frame tile, the full frame's boxes of objects the tiles also saw (and the reverse) are dropped
       (:func:`match_full_frame`);
    2. pieces cut by tile borders are joined into their union (:func:`merge_cut_pieces`);
    3. duplicates across tiles are removed by class-aware NMS (``method="hard"`` or ``"weighted"``) or decayed by soft-NMS
       (``"gaussian"`` / ``"linear"``, ``sigma``, ``score_floor``). Only boxes from *different* tiles suppress
       each other here: within a tile the per-tile NMS already ran, and a second pass would decay twice.

    Args:
        xyxy ``(N, 4)`` frame pixels, scores ``(N,)``, class_id ``(N,)``, tile_index ``(N,)`` (into ``tiles``).

    Returns:
        ``(rows, boxes, scores)``: indices into the inputs of the kept detections (by descending score), their
        boxes ``(K, 4)`` (grown to the union where pieces were joined) and final scores ``(K,)``.
    """
    b = np.asarray(xyxy, np.float64).reshape(-1, 4)
    s = np.asarray(scores, np.float64).reshape(-1)
    c = np.asarray(class_id, np.int64).reshape(-1)
    ti = np.asarray(tile_index, np.int64).reshape(-1)
    if len(b) == 0:
        return np.zeros(0, np.int64), b, s
    cut = np.zeros(len(b), bool)
    for k, t in enumerate(tiles):
        m = ti == k
        if m.any():
            cut[m] = cut_at_border(b[m], t, width, height)
    # first the full frame's duplicates of the tiles' objects: joined as "pieces" they would grow the union of two
    # placements of one object; and before any score decays (a decayed duplicate would come after a neighbour)
    first = match_full_frame(b, s, c, ti, np.array([tiles[k].full for k in ti], bool), ios_threshold)
    first.sort()
    r, boxes, s2 = merge_cut_pieces(b[first], s[first], c[first], ti[first], cut[first], ios_threshold)
    rows = first[r]
    if method in ("hard", "weighted"):  # weighted: boxes were fused within each tile; across tiles, hard NMS
        keep = nms(boxes, s2, iou_threshold, class_id=c[rows], group=ti[rows])[:max_keep]
        return rows[keep], boxes[keep], s2[keep]
    keep, new = soft_nms(boxes, s2, sigma=sigma, score_threshold=score_floor, class_id=c[rows],
                         method=method, iou_threshold=iou_threshold, max_keep=max_keep, group=ti[rows])
    return rows[keep], boxes[keep], new


def tiles_iou_coverage(tiles: Sequence[Tile], width: int, height: int) -> np.ndarray:
    """``(height, width)`` int: how many (non-full-frame) tiles cover each pixel (a diagnostic for tests/docs)."""
    cover = np.zeros((height, width), np.int32)
    for t in tiles:
        if not t.full:
            cover[t.y0:t.y1, t.x0:t.x1] += 1
    return cover

