"""Selection strategies: pure box-uncertainty functions, per-image aggregation, class balance, diversity.

Everything works on flat arrays over ALL boxes of a pool of frames (a :class:`BoxPool`), so a pool of
100,000 frames x 10 boxes is scored with a handful of vectorised numpy calls.

Box scores come from a YOLO (v8/11) head: ``class_scores`` ``(M, C)`` are **independent sigmoids**,
not a softmax; each strategy states how it treats them. Higher score = more worth labelling.

Registry: :data:`STRATEGIES` maps a name to a :class:`Strategy`; :func:`get_strategy` raises a
:class:`~detloop.errors.DataError` listing the valid names for an unknown one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from detloop.errors import DataError
from detloop.ops import box_iou

if TYPE_CHECKING:
    from detloop.detections import Detections

_EPS = 1e-12


# --------------------------------------------------------------------------------------------
# Flat box arrays of a pool of frames
# --------------------------------------------------------------------------------------------
@dataclass
class BoxPool:
    """All boxes of ``n_frames`` frames as parallel flat arrays, grouped by frame.

    Attributes:
        class_scores: float32 ``(M, C)`` per-box class-score vectors (independent sigmoids).
        confidence: float32 ``(M,)`` top-class score of each box.
        xyxy: float32 ``(M, 4)`` boxes in frame pixels.
        frame_index: int64 ``(M,)`` frame of each box, non-decreasing.
        n_frames: number of frames (frames may have no box).
        tta: per frame, detections on the horizontally flipped copy mapped back to the frame, or None.
        committee: per frame, detections of the previous champion, or None.
    """

    class_scores: np.ndarray
    confidence: np.ndarray
    xyxy: np.ndarray
    frame_index: np.ndarray
    n_frames: int
    tta: Sequence[Detections | None] | None = None
    committee: Sequence[Detections | None] | None = None

    def __post_init__(self) -> None:
        m = len(self.frame_index)
        if self.class_scores.ndim != 2 or len(self.class_scores) != m:
            raise ValueError(f"class_scores must have shape ({m}, C), got {self.class_scores.shape}")
        if self.confidence.shape != (m,) or self.xyxy.shape != (m, 4):
            raise ValueError(
                f"confidence/xyxy must have shapes ({m},)/({m}, 4), got {self.confidence.shape}/{self.xyxy.shape}"
            )
        if m and np.any(np.diff(self.frame_index) < 0):
            raise ValueError("frame_index must be non-decreasing (boxes grouped by frame)")

    @property
    def num_classes(self) -> int:
        return int(self.class_scores.shape[1])

    def offsets(self) -> np.ndarray:
        """``(n_frames + 1,)`` start offsets of each frame's boxes."""
        return np.searchsorted(self.frame_index, np.arange(self.n_frames + 1)).astype(np.int64)

    def subset(self, mask: np.ndarray) -> BoxPool:
        """The same frames with only the boxes where ``mask`` ``(M,)`` is true."""
        return BoxPool(
            class_scores=self.class_scores[mask],
            confidence=self.confidence[mask],
            xyxy=self.xyxy[mask],
            frame_index=self.frame_index[mask],
            n_frames=self.n_frames,
            tta=self.tta,
            committee=self.committee,
        )

    @classmethod
    def from_detections(
        cls,
        dets: Sequence[Detections],
        num_classes: int,
        tta: Sequence[Detections | None] | None = None,
        committee: Sequence[Detections | None] | None = None,
    ) -> BoxPool:
        """Flatten per-frame detections (with ``class_scores``) into one pool.

        Detections without ``class_scores`` get a one-hot vector scaled by their confidence.
        """
        n = len(dets)
        counts = np.fromiter((len(d.confidence) for d in dets), np.int64, count=n)
        if counts.sum() == 0:
            return cls(
                np.zeros((0, num_classes), np.float32), np.zeros(0, np.float32), np.zeros((0, 4), np.float32),
                np.zeros(0, np.int64), n, tta, committee,
            )
        cs = []
        for i, d in enumerate(dets):
            s = d.class_scores
            if s is None:
                s = np.zeros((len(d.confidence), num_classes), np.float32)
                s[np.arange(len(d.confidence)), d.class_id] = d.confidence
            elif s.shape[1] != num_classes:
                raise DataError(f"frame {i}: class_scores has {s.shape[1]} classes, expected {num_classes}")
            cs.append(s)
        return cls(
            np.concatenate(cs).astype(np.float32, copy=False),
            np.concatenate([d.confidence for d in dets]).astype(np.float32, copy=False),
            np.concatenate([d.xyxy for d in dets]).astype(np.float32, copy=False),
            np.repeat(np.arange(n, dtype=np.int64), counts),
            n,
            tta,
            committee,
        )


# --------------------------------------------------------------------------------------------
# Box uncertainty: (pool, params) -> (M,) scores, higher = more uncertain
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StrategyParams:
    """The knobs strategies read (a view of ``SelectionSettings``)."""

    ambiguous_band: tuple[float, float] = (0.25, 0.6)
    match_iou: float = 0.5


def least_confidence(pool: BoxPool, params: StrategyParams) -> np.ndarray:
    """``1 - max_c s_c``: a box whose best class score is low is uncertain. ``(M,)`` in [0, 1]."""
    del params
    if len(pool.confidence) == 0:
        return np.zeros(0, np.float32)
    return (1.0 - pool.class_scores.max(axis=1)).astype(np.float32)


def margin(pool: BoxPool, params: StrategyParams) -> np.ndarray:
    """``1 - (s_top1 - s_top2)`` over the raw sigmoid scores: two close classes = uncertain. ``(M,)``.

    With one class the margin is against 0 (``1 - s``).
    """
    del params
    s = pool.class_scores
    if len(s) == 0:
        return np.zeros(0, np.float32)
    if s.shape[1] == 1:
        return (1.0 - s[:, 0]).astype(np.float32)
    top2 = -np.partition(-s, 1, axis=1)[:, :2]
    return (1.0 - (top2[:, 0] - top2[:, 1])).astype(np.float32)


def entropy(pool: BoxPool, params: StrategyParams) -> np.ndarray:
    """Normalised Shannon entropy of the class-score vector **renormalised to sum to 1**.

    ``p = s / sum(s)``, ``H(p) / log(C)`` in [0, 1]: 1 when the classes are equally likely, 0 for a
    one-hot vector. The overall objectness level is ignored (use ``binary_entropy`` for that).
    """
    del params
    s = pool.class_scores.astype(np.float32, copy=False)
    if len(s) == 0:
        return np.zeros(0, np.float32)
    c = s.shape[1]
    if c == 1:
        return np.zeros(len(s), np.float32)
    p = s / np.maximum(s.sum(axis=1, keepdims=True), _EPS)
    h = -(p * np.log(np.maximum(p, _EPS))).sum(axis=1)
    return (h / np.log(c)).astype(np.float32)


def binary_entropy(pool: BoxPool, params: StrategyParams) -> np.ndarray:
    """Sum over classes of the per-class **binary** entropy of each independent sigmoid, in bits.

    ``sum_c H_b(s_c)`` with ``H_b(x) = -x log2 x - (1-x) log2 (1-x)``: counts both "which class" and
    "is there an object" doubt. ``(M,)`` in [0, C].
    """
    del params
    s = np.clip(pool.class_scores.astype(np.float32, copy=False), 1e-7, 1 - 1e-7)
    if len(s) == 0:
        return np.zeros(0, np.float32)
    h = -(s * np.log2(s) + (1 - s) * np.log2(1 - s))
    return h.sum(axis=1).astype(np.float32)


def ambiguous(pool: BoxPool, params: StrategyParams) -> np.ndarray:
    """1 for a box whose confidence lies in the ambiguous band ``[lo, hi)``, else 0. ``(M,)``.

    Aggregated with ``sum`` (forced for this strategy) it is the count of ambiguous boxes per frame.
    """
    lo, hi = params.ambiguous_band
    return ((pool.confidence >= lo) & (pool.confidence < hi)).astype(np.float32)


def _paired_disagreement(
    pool: BoxPool, others: Sequence[Detections | None], params: StrategyParams, use_scores: bool
) -> np.ndarray:
    """Per box of ``pool``: ``1 - IoU * (1 - TV)`` against its best same-class match in ``others``.

    ``TV`` is the total-variation distance between the renormalised class-score vectors (0 when
    ``use_scores`` is false). Unmatched boxes (best IoU below ``params.match_iou``) score 1.
    """
    out = np.ones(len(pool.confidence), np.float32)
    off = pool.offsets()
    for f in range(pool.n_frames):
        a, b = off[f], off[f + 1]
        other = others[f] if f < len(others) else None
        if a == b or other is None or len(other) == 0:
            continue
        iou = box_iou(pool.xyxy[a:b], other.xyxy)  # (n, k)
        cls_a = pool.class_scores[a:b].argmax(axis=1)
        iou = np.where(cls_a[:, None] == other.class_id[None, :], iou, 0.0)
        j = iou.argmax(axis=1)
        best = iou[np.arange(b - a), j]
        tv = np.zeros(b - a)
        if use_scores and other.class_scores is not None:
            p = pool.class_scores[a:b] / np.maximum(pool.class_scores[a:b].sum(1, keepdims=True), _EPS)
            q = other.class_scores[j] / np.maximum(other.class_scores[j].sum(1, keepdims=True), _EPS)
            tv = 0.5 * np.abs(p - q).sum(axis=1)
        score = 1.0 - best * (1.0 - tv)
        out[a:b] = np.where(best >= params.match_iou, score, 1.0)
    return out


def tta_consistency(pool: BoxPool, params: StrategyParams) -> np.ndarray:
    """Localisation consistency between a frame and its horizontally flipped copy. ``(M,)`` in [0, 1].

    Per box: ``1 - IoU`` with the best same-class box predicted on the flipped frame (mapped back);
    1 when nothing matches (IoU < ``match_iou``). Needs ``pool.tta`` (score with TTA on).
    """
    if pool.tta is None:
        raise DataError("strategy 'tta' needs detections on flipped frames: score with tta enabled")
    return _paired_disagreement(pool, pool.tta, params, use_scores=False)


def committee(pool: BoxPool, params: StrategyParams) -> np.ndarray:
    """Disagreement between the champion and the previous champion. ``(M,)`` in [0, 1].

    Per box: ``1 - IoU * (1 - TV)`` with the previous champion's best same-class box, where TV is
    the total-variation distance of the renormalised class-score vectors; 1 when unmatched.
    Needs ``pool.committee``; :func:`resolve_strategy` falls back when there is no previous champion.
    """
    if pool.committee is None:
        raise DataError("strategy 'committee' needs the previous champion's detections")
    return _paired_disagreement(pool, pool.committee, params, use_scores=True)


@dataclass(frozen=True)
class Strategy:
    """A registered box-uncertainty strategy.

    Attributes:
        name: registry key.
        fn: ``(pool, params) -> (M,)`` box scores.
        description: one line for ``detloop select strategies``.
        needs: ``"tta"`` / ``"committee"`` when extra predictions are required, else None.
        aggregation: forced per-image aggregation (None: the configured one).
        fallback: strategy used when ``needs`` is not available.
    """

    name: str
    fn: Callable[[BoxPool, StrategyParams], np.ndarray]
    description: str
    needs: str | None = None
    aggregation: str | None = None
    fallback: str | None = None


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in [
        Strategy("least_confidence", least_confidence, "1 - top class score"),
        Strategy("margin", margin, "1 - (top1 - top2) class score"),
        Strategy("entropy", entropy, "normalised entropy of the renormalised class-score vector"),
        Strategy("binary_entropy", binary_entropy, "sum of per-class binary entropies (bits) of the sigmoids"),
        Strategy("ambiguous", ambiguous, "count of boxes with confidence in the ambiguous band", aggregation="sum"),
        Strategy("tta", tta_consistency, "1 - IoU with the flipped-frame prediction (localisation)",
                 needs="tta", fallback="entropy"),
        Strategy("committee", committee, "disagreement with the previous champion (IoU x class TV)",
                 needs="committee", fallback="entropy"),
    ]
}


def get_strategy(name: str) -> Strategy:
    """The registered strategy ``name``.

    Raises:
        DataError: naming the valid strategies.
    """
    try:
        return STRATEGIES[name]
    except KeyError:
        raise DataError(f"unknown selection strategy {name!r}; valid: {', '.join(sorted(STRATEGIES))}") from None


def resolve_strategy(name: str, pool: BoxPool) -> tuple[Strategy, str | None]:
    """The strategy to run on ``pool`` and a note when it had to fall back (e.g. no previous champion)."""
    s = get_strategy(name)
    if s.needs == "committee" and (pool.committee is None or all(c is None for c in pool.committee)):
        fb = get_strategy(s.fallback or "entropy")
        return fb, f"strategy {name!r}: no previous champion to compare with; fell back to {fb.name!r}"
    if s.needs == "tta" and (pool.tta is None or all(t is None for t in pool.tta)):
        fb = get_strategy(s.fallback or "entropy")
        return fb, f"strategy {name!r}: frames were scored without TTA; fell back to {fb.name!r}"
    return s, None


# --------------------------------------------------------------------------------------------
# Image aggregation
# --------------------------------------------------------------------------------------------
AGGREGATIONS = ("max", "mean", "sum", "topk")


def aggregate(box_scores: np.ndarray, frame_index: np.ndarray, n_frames: int, how: str, k: int = 3) -> np.ndarray:
    """Per-frame score from per-box scores.

    Args:
        box_scores: ``(M,)`` box scores.
        frame_index: ``(M,)`` frame of each box (any order).
        n_frames: number of frames F.
        how: ``max`` | ``mean`` | ``sum`` | ``topk`` (mean of the k highest box scores; fewer boxes:
            mean of those there are).
        k: k of ``topk``.

    Returns:
        ``(F,)`` float64; frames with no box get 0 (see :func:`empty_frame_scores`).
    """
    if how not in AGGREGATIONS:
        raise DataError(f"unknown aggregation {how!r}; valid: {', '.join(AGGREGATIONS)}")
    s = np.asarray(box_scores, np.float64)
    fi = np.asarray(frame_index, np.int64)
    out = np.zeros(n_frames, np.float64)
    if s.size == 0:
        return out
    counts = np.bincount(fi, minlength=n_frames)
    if how == "sum":
        return np.bincount(fi, weights=s, minlength=n_frames)
    if how == "mean":
        tot = np.bincount(fi, weights=s, minlength=n_frames)
        return np.divide(tot, counts, out=out, where=counts > 0)
    if how == "max":
        out[:] = -np.inf
        np.maximum.at(out, fi, s)
        out[counts == 0] = 0.0
        return out
    # topk: sort by (frame, -score), rank inside each frame, keep rank < k
    order = np.lexsort((-s, fi))
    fs, ss = fi[order], s[order]
    starts = np.searchsorted(fs, fs, side="left")
    rank = np.arange(len(fs)) - starts
    keep = rank < k
    tot = np.bincount(fs[keep], weights=ss[keep], minlength=n_frames)
    n = np.minimum(counts, k)
    return np.divide(tot, n, out=out, where=n > 0)


def empty_frame_scores(
    candidates: BoxPool,
    strategy: Strategy,
    params: StrategyParams,
    conf_threshold: float,
    how: str,
    k: int,
) -> np.ndarray:
    """Defined score of frames with NO box above ``conf_threshold`` (they can hide misses).

    Such a frame is scored from its best sub-threshold candidates as if they were detections, each
    weighted by ``confidence / conf_threshold`` (in [0, 1)): a frame with a 0.24 candidate under a
    0.25 threshold scores almost like a frame with that detection; a frame with nothing scores 0.

    Args:
        candidates: pool restricted to sub-threshold boxes.

    Returns:
        ``(F,)`` scores (0 for frames without candidates).
    """
    if len(candidates.confidence) == 0 or conf_threshold <= 0:
        return np.zeros(candidates.n_frames)
    if strategy.needs is not None:  # paired strategies are undefined on candidates: use entropy
        strategy = STRATEGIES["entropy"]
    s = strategy.fn(candidates, params).astype(np.float64)
    s = s * np.clip(candidates.confidence / conf_threshold, 0.0, 1.0)
    return aggregate(s, candidates.frame_index, candidates.n_frames, strategy.aggregation or how, k)


# --------------------------------------------------------------------------------------------
# Class balance
# --------------------------------------------------------------------------------------------
def class_weights(labelled_class_counts: Sequence[int] | np.ndarray | None, num_classes: int,
                  power: float = 0.5) -> np.ndarray:
    """Inverse-frequency class weights ``(C,)``: rare classes in the labelled set weigh more.

    ``w_c = (mean_f / f_c) ** power`` with Laplace-smoothed frequencies ``f_c = (n_c + 1) / (N + C)``,
    then divided by the weight of the most common class, so the most common class has weight 1 and
    rarer ones more. No labelled counts (or ``power == 0``): all ones.
    """
    if labelled_class_counts is None or power == 0:
        return np.ones(num_classes)
    n = np.asarray(labelled_class_counts, np.float64).reshape(-1)
    if n.shape != (num_classes,):
        raise DataError(f"labelled_class_counts has {n.size} entries, expected {num_classes} (one per class)")
    if (n < 0).any():
        raise DataError("labelled_class_counts must be >= 0")
    f = (n + 1.0) / (n.sum() + num_classes)
    w = (1.0 / f) ** power
    return w / w.min()


def frame_class_weight(pool: BoxPool, weights: np.ndarray) -> np.ndarray:
    """Per frame: the largest class weight among its boxes' top classes; 1 for frames without boxes.

    Args:
        pool: detected boxes (already thresholded).
        weights: ``(C,)`` per-class multipliers (:func:`class_weights`, >= 1; or error weights, any > 0).

    Returns:
        ``(F,)`` float64 multipliers.
    """
    out = np.full(pool.n_frames, -np.inf)
    if len(pool.confidence):
        np.maximum.at(out, pool.frame_index, np.asarray(weights, np.float64)[pool.class_scores.argmax(axis=1)])
    out[np.isinf(out)] = 1.0
    return out


# --------------------------------------------------------------------------------------------
# Diversity
# --------------------------------------------------------------------------------------------
def kcenter_greedy(
    embeddings: np.ndarray, k: int, first: int | None = None, already: Sequence[int] | None = None
) -> np.ndarray:
    """Greedy k-center (Sener & Savarese 2018): repeatedly take the point farthest from all centres.

    Vectorised with incremental min-distance updates: one ``(N, D) @ (D,)`` product per pick, float32,
    memory ``O(N)`` beyond the embeddings.

    Args:
        embeddings: ``(N, D)`` points.
        k: number of centres to pick (``min(k, N)`` are returned).
        first: index of the first centre when ``already`` is empty (default: the point farthest from
            the mean).
        already: indices already chosen (count as centres, not returned).

    Returns:
        ``(k,)`` int64 indices in pick order, all distinct.
    """
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    n = len(x)
    k = min(int(k), n - len(already or []))
    if k <= 0:
        return np.zeros(0, np.int64)
    with _one_blas_thread():  # a (N, D) @ (D,) product is memory-bound; BLAS threads only spin
        return _kcenter(x, k, first, already)


def _one_blas_thread() -> Any:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _kcenter(x: np.ndarray, k: int, first: int | None, already: Sequence[int] | None) -> np.ndarray:
    n = len(x)
    sq = np.einsum("ij,ij->i", x, x)
    mind = np.full(n, np.inf, np.float32)

    def update(c: int) -> None:
        d = sq + sq[c] - 2.0 * (x @ x[c])
        np.minimum(mind, np.maximum(d, 0.0), out=mind)

    for c in already or []:
        update(int(c))
        mind[int(c)] = -1.0
    picks: list[int] = []
    if not already:
        if first is None:
            mu = x.mean(axis=0)
            first = int(np.argmax(((x - mu) ** 2).sum(axis=1)))
        picks.append(int(first))
        update(int(first))
        mind[int(first)] = -1.0
    while len(picks) < k:
        c = int(np.argmax(mind))
        picks.append(c)
        update(c)
        mind[c] = -1.0
    return np.asarray(picks, np.int64)


@dataclass
class ArmPlan:
    """How the budget splits between the selected arm and the random control arm."""

    budget: int
    pool: int
    n_control: int
    n_selected: int
    notes: list[str] = field(default_factory=list)


def plan_arms(budget: int, pool: int, control_share: float, control_min: int, pool_rounds: int = 1) -> ArmPlan:
    """Split ``budget`` between arms.

    ``n_control = max(round(share * budget), ceil(control_min / pool_rounds))`` when ``share > 0``:
    ``control_min`` is reached per round (``pool_rounds`` 1) or over the last ``pool_rounds`` rounds
    together, which keeps the control arm near its share at small budgets. Never more than half the
    budget unless the share says so, capped by the pool; the rest goes to the selected arm. A budget
    larger than the pool takes the whole pool (noted).
    """
    notes: list[str] = []
    take = min(budget, pool)
    if budget > pool:
        notes.append(f"budget {budget} is larger than the pool of {pool} frames: taking all of them")
    per_round_min = -(-control_min // max(1, pool_rounds))
    if control_share <= 0 or take == 0:
        n_control = 0
    else:
        want = max(round(control_share * budget), per_round_min)
        cap = max(round(control_share * budget), take // 2)
        n_control = min(want, cap, take)
        if n_control < per_round_min:
            notes.append(
                f"control arm has {n_control} frames (< {per_round_min} = control_min {control_min} over "
                f"{pool_rounds} round(s)): raise control_pool_rounds to pool it over more rounds"
            )
    return ArmPlan(budget, pool, n_control, take - n_control, notes)
