"""What a frame is worth labelling beyond its uncertainty: cost, the model's regime, classes it never detects.

Pure functions over flat arrays (unit-tested); :func:`tasks.selection.select` applies them in this order:

1. **value per expected second** (:func:`per_second`): the uncertainty x class-balance score divided by the
   frame's expected labelling seconds (:func:`detloop.label_cost.expected_seconds`) to the power
   ``selection.cost.exponent``, so a frame is not favoured for holding many boxes;
2. **regime blend** (:func:`regime_weight`, :func:`blend`): a champion too weak for its uncertainty to mean
   much (low mAP50 on frames it never trained on) ranks by representativeness (:func:`typicality` on the
   embeddings, or :func:`random_representative`: a uniform random sample) instead; a good one by its
   uncertainty; in between, a linear mix of percentile ranks;
3. **seconds cap** (:func:`seconds_capped`, ``selection.cost.seconds_cap``, 1.0 by default): the ranking's top
   ``k`` frames may cost no more expected seconds per frame than ``cap`` x the pool's mean (a random sample's
   expected cost); the frames given up are those trading the least rank for the most seconds;
4. **rare-class search** (:func:`rare_search_targets`, :func:`rare_candidates`): a class with labelled examples
   but no detection in the pool cannot be found by uncertainty; frames whose embeddings are nearest to the
   labelled frames holding it are reserved a share of the budget. It stands down when the champion is weak or
   detects no labelled class at all (then a missing class is not singled out).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detloop.datasets import DatasetEntry
from detloop.settings import RareSearchSettings, RegimeSettings


def per_second(score: np.ndarray, seconds: np.ndarray, exponent: float) -> np.ndarray:
    """``score / (seconds / median(seconds)) ** exponent``: ``(F,)`` value per expected second.

    Dividing by the median keeps the scale of ``score`` (a frame of median cost keeps its score); the ranking
    is that of ``score / seconds ** exponent``.
    """
    s = np.asarray(score, np.float64)
    if exponent == 0 or s.size == 0:
        return s.copy()
    sec = np.maximum(np.asarray(seconds, np.float64), 1e-9)
    return s / (sec / float(np.median(sec))) ** exponent


def _top_mean(score: np.ndarray, cost: np.ndarray, k: int) -> float:
    """Mean of ``cost`` over the ``k`` highest ``score`` (ties: lowest index first)."""
    top = np.lexsort((np.arange(len(score)), -score))[:k]
    return float(cost[top].mean())


@dataclass(frozen=True)
class SecondsCap:
    """What :func:`seconds_capped` did: the penalty and the top-k mean expected seconds before and after, as
    multiples of the pool's mean."""

    penalty: float
    before: float
    after: float
    cap: float

    def to_dict(self) -> dict[str, Any]:
        return {"seconds_cap": self.cap, "met": self.after <= self.cap + 1e-9,
                "penalty": round(self.penalty, 4) if np.isfinite(self.penalty) else None,  # None: cheapest first
                "top_k_relative_seconds_before": round(self.before, 4),
                "top_k_relative_seconds_after": round(self.after, 4)}


def seconds_capped(score: np.ndarray, seconds: np.ndarray, k: int, cap: float,
                   iterations: int = 40) -> tuple[np.ndarray, SecondsCap]:
    """A ranking whose top ``k`` frames cost at most ``cap`` x the pool's mean expected seconds per frame.

    When the top ``k`` of ``score`` already meet the cap, ``score`` is returned unchanged (penalty 0).
    Otherwise frames rank by ``rank(score) - penalty x seconds / mean(seconds)`` (``rank``: percentile in
    [0, 1]) with the smallest penalty (bisection) whose top ``k`` meet the cap: the frames given up are those
    that trade the least rank for the most seconds. A cap below what the ``k`` cheapest frames cost cannot be
    met; the cheapest-first ranking is returned then (``after > cap`` says so).

    Args:
        score: ``(F,)`` ranking score, higher first.
        seconds: ``(F,)`` expected labelling seconds (> 0).
        k: frames the ranking's top will pay for.
        cap: allowed mean of ``seconds / mean(seconds)`` over the top ``k``.

    Returns:
        ``(F,)`` ranking score and a :class:`SecondsCap`.
    """
    s = np.asarray(score, np.float64)
    sec = np.asarray(seconds, np.float64)
    if s.shape != sec.shape:
        raise ValueError(f"score {s.shape} and seconds {sec.shape} differ in shape")
    n = len(s)
    if n == 0 or k <= 0 or k >= n:
        return s.copy(), SecondsCap(0.0, 1.0, 1.0, cap)
    rel = sec / max(float(sec.mean()), 1e-9)
    before = _top_mean(s, rel, k)
    if before <= cap:
        return s.copy(), SecondsCap(0.0, before, before, cap)
    r = percentile_rank(s)
    hi = 1.0
    while _top_mean(r - hi * rel, rel, k) > cap:
        if hi >= 1e6:  # not reachable: cheapest first
            return -rel, SecondsCap(float("inf"), before, _top_mean(-rel, rel, k), cap)
        hi *= 2.0
    lo = 0.0
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if _top_mean(r - mid * rel, rel, k) <= cap:
            hi = mid
        else:
            lo = mid
    out = r - hi * rel
    return out, SecondsCap(hi, before, _top_mean(out, rel, k), cap)


@dataclass(frozen=True)
class Regime:
    """The blend a round used: ``weight`` on uncertainty (1 - weight on typicality) and why."""

    weight: float
    quality: float | None
    rule: str

    def to_dict(self) -> dict[str, Any]:
        return {"uncertainty_weight": round(self.weight, 4), "champion_map50": self.quality, "rule": self.rule}


def regime_weight(quality: float | None, settings: RegimeSettings) -> Regime:
    """Weight on uncertainty from the champion's quality (mAP50 on frames it never trained on).

    ``w = clip((quality - weak_below) / (good_above - weak_below), 0, 1)``; ``unknown_weight`` when quality is
    None; 1 when the rule is disabled.
    """
    lo, hi = settings.weak_below, settings.good_above
    rule = f"w = clip((mAP50 - {lo:g}) / ({hi:g} - {lo:g}), 0, 1)"
    if not settings.enabled:
        return Regime(1.0, quality, "regime rule off: uncertainty only")
    if quality is None or not np.isfinite(quality):
        return Regime(settings.unknown_weight, None, f"{rule}; champion quality unknown: w = unknown_weight")
    w = float(np.clip((quality - lo) / (hi - lo), 0.0, 1.0))
    return Regime(w, round(float(quality), 4), rule)


def percentile_rank(x: np.ndarray) -> np.ndarray:
    """``(F,)`` ranks scaled to [0, 1] (ties share their mean rank); a single value gets 1."""
    x = np.asarray(x, np.float64)
    n = len(x)
    if n <= 1:
        return np.ones(n)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(n)
    ranks[order] = np.arange(n, dtype=np.float64)
    # ties: mean rank of the group
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    return (sums / counts)[inv] / (n - 1)


def blend(value: np.ndarray, typical: np.ndarray | None, weight: float) -> np.ndarray:
    """``(F,)`` ranking score: ``value`` itself when ``weight >= 1`` (or no typicality), else
    ``weight x rank(value) + (1 - weight) x rank(typical)``."""
    v = np.asarray(value, np.float64)
    if weight >= 1.0 or typical is None:
        return v.copy()
    return weight * percentile_rank(v) + (1.0 - weight) * percentile_rank(typical)


def random_representative(n: int, seed: int, round_seed: int = 0) -> np.ndarray:
    """``(n,)`` seeded uniform scores in [0, 1): the representative score of ``selection.regime.representative:
    random``. Ranking by it alone is a uniform random sample of the pool, the unbiased one (with a weak champion
    neither its uncertainty nor its embeddings say much); the same per ``(seed, round_seed)``."""
    return np.random.default_rng([seed, round_seed, 7919]).random(n)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def typicality(embeddings: np.ndarray, k: int, reference: int, seed: int = 0, block: int = 8192) -> np.ndarray:
    """Density of each frame among the pool: mean cosine similarity to its ``k`` nearest reference frames.

    The reference is a seeded uniform sample of ``min(reference, F)`` pool frames (a frame is never its own
    neighbour), so the cost is ``O(F x reference x D)``, computed ``block`` rows at a time.

    Args:
        embeddings: ``(F, D)``.

    Returns:
        ``(F,)`` float64 in [-1, 1]; higher = in a denser region (more typical of the pool).
    """
    x = _unit(embeddings)
    n = len(x)
    if n <= 1:
        return np.ones(n)
    rng = np.random.default_rng([seed, 104729])
    ref = np.sort(rng.choice(n, size=min(reference, n), replace=False))
    pos = np.full(n, -1, np.int64)  # column of each reference frame (its own similarity is left out)
    pos[ref] = np.arange(len(ref))
    kk = max(1, min(k, len(ref) - 1))
    out = np.empty(n, np.float64)
    xr = x[ref].T
    for a in range(0, n, block):  # (block, R) float32 at a time: 8,192 x 1,000 = 33 MB, not F x R
        sims = x[a : a + block] @ xr
        rows = np.arange(len(sims))
        own = pos[a : a + block]
        sims[rows[own >= 0], own[own >= 0]] = -np.inf
        out[a : a + block] = (-np.partition(-sims, kk - 1, axis=1)[:, :kk]).mean(axis=1)
    return out


def never_detected(det_class: np.ndarray, labelled_counts: Sequence[int] | np.ndarray | None,
                   num_classes: int) -> list[int]:
    """Classes with labelled examples and no detection (box above the threshold) anywhere in the pool."""
    if labelled_counts is None:
        return []
    seen = np.bincount(np.asarray(det_class, np.int64), minlength=num_classes) > 0
    n = np.asarray(labelled_counts).reshape(-1)
    return [c for c in range(num_classes) if n[c] > 0 and not seen[c]]


@dataclass(frozen=True)
class RareTargets:
    """The classes the rare-class search looks for, or none and why it stands down."""

    classes: list[int]
    stood_down: str | None = None


def rare_search_targets(det_class: np.ndarray, labelled_counts: Sequence[int] | np.ndarray | None,
                        num_classes: int, quality: float | None, weak_below: float) -> RareTargets:
    """The never-detected classes (:func:`never_detected`) when the search can single them out.

    The search is for a champion that works but misses a class. It stands down when nothing sets the missing
    classes apart from the rest:

    - the champion is weak (``quality``, its mAP50 on frames it never trained on, at or below ``weak_below``,
      the regime rule's bound): it misses most things, so "never detected" says little about a class, and its
      embeddings barely separate frames (measured at a cold start: every pool frame passed the similarity bar);
    - it detects none of the labelled classes in the pool: every class is "missing" alike.
    """
    missing = never_detected(det_class, labelled_counts, num_classes)
    if not missing:
        return RareTargets([])
    what = f"{len(missing)} class(es) never detected"
    if quality is not None and np.isfinite(quality) and quality <= weak_below:
        return RareTargets([], f"stood down: {what}, but the champion is weak (mAP50 {quality:.3f} <= "
                               f"{weak_below:g}): missing a class does not single it out")
    labelled = int((np.asarray(labelled_counts).reshape(-1) > 0).sum())
    if len(missing) >= labelled:
        return RareTargets([], f"stood down: the champion detects none of the {labelled} labelled classes in the "
                               "pool: missing a class does not single it out")
    return RareTargets(missing)


@dataclass
class RareSearch:
    """Frames reserved for never-detected classes, in pick order, and the report of the search."""

    picks: list[int] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)


def rare_candidates(embeddings: np.ndarray | None, exemplars: Mapping[int, np.ndarray] | None,
                    classes: Sequence[int], eligible: np.ndarray, n_reserved: int,
                    settings: RareSearchSettings, class_names: Sequence[str] | None = None) -> RareSearch:
    """Frames most similar to labelled examples of classes the champion never detects.

    Per class: candidates are eligible frames whose cosine similarity to the nearest exemplar is at least
    ``min_similarity``; the reserved slots are shared round-robin between classes, most similar first.

    Args:
        embeddings: ``(F, D)`` pool embeddings (None: nothing can be searched).
        exemplars: class -> ``(n_c, D)`` embeddings of labelled frames holding that class.
        classes: the never-detected classes (:func:`never_detected`).
        eligible: ``(F,)`` bool, frames that may be picked (not in the control arm).
        n_reserved: slots for all classes together.

    Returns:
        :class:`RareSearch`: ``picks`` (pool indices, distinct) and ``report`` {class name: {exemplars,
        candidates, picked, best_similarity}} plus ``notes``.
    """
    out = RareSearch(report={"classes": {}, "notes": []})
    if not classes:
        return out
    name = (lambda c: class_names[c]) if class_names else str
    if embeddings is None:
        out.report["notes"].append("rare-class search: no embeddings; nothing searched")
        return out
    x = _unit(embeddings)
    ranked: list[np.ndarray] = []
    for c in classes:
        ex = None if exemplars is None else exemplars.get(c)
        row: dict[str, Any] = {"exemplars": 0 if ex is None else len(ex), "candidates": 0, "picked": 0,
                               "best_similarity": None}
        out.report["classes"][name(c)] = row
        if ex is None or len(ex) == 0:
            ranked.append(np.zeros(0, np.int64))
            continue
        sim = (x @ _unit(ex).T).max(axis=1)
        ok = np.flatnonzero(eligible & (sim >= settings.min_similarity))
        row["candidates"] = len(ok)
        row["best_similarity"] = round(float(sim[eligible].max()), 4) if eligible.any() else None
        ranked.append(ok[np.argsort(-sim[ok], kind="stable")])
    taken: set[int] = set()
    pos = [0] * len(classes)
    while len(out.picks) < n_reserved and any(pos[j] < len(ranked[j]) for j in range(len(classes))):
        for j, c in enumerate(classes):
            while pos[j] < len(ranked[j]) and int(ranked[j][pos[j]]) in taken:
                pos[j] += 1
            if pos[j] < len(ranked[j]) and len(out.picks) < n_reserved:
                i = int(ranked[j][pos[j]])
                out.picks.append(i)
                taken.add(i)
                out.report["classes"][name(c)]["picked"] += 1
                pos[j] += 1
    return out


def exemplar_entries(entries: Sequence[DatasetEntry], classes: Sequence[int], per_class: int,
                     seed: int = 0) -> dict[int, list[DatasetEntry]]:
    """Labelled frames holding each of ``classes``, at most ``per_class`` each, for the rare-class search.

    Golden frames (evaluation only) and synthetic frames (not real imagery) are left out; a frame listed twice
    counts once. When more frames hold a class, a sample seeded by ``(seed, class)`` over the frames sorted by
    hash is taken, so the same version and seed give the same exemplars.

    Returns:
        class -> entries (possibly empty).
    """
    usable = {e.frame_sha: e for e in entries if e.split != "golden" and not e.synthetic}
    ordered = [usable[k] for k in sorted(usable)]
    out: dict[int, list[DatasetEntry]] = {}
    for c in classes:
        holding = [e for e in ordered if c < len(e.class_counts) and e.class_counts[c] > 0]
        if len(holding) > per_class:
            pick = np.sort(np.random.default_rng([seed, c]).choice(len(holding), per_class, replace=False))
            holding = [holding[i] for i in pick]
        out[c] = holding
    return out


def exemplar_embeddings(chosen: Mapping[int, Sequence[DatasetEntry]],
                        embedding_of: Mapping[str, np.ndarray]) -> dict[int, np.ndarray]:
    """class -> ``(n, D)`` embeddings of its exemplar frames (``embedding_of``: frame hash -> ``(D,)``); frames
    without an embedding (quarantined while scoring) are skipped, a class left with none is left out."""
    out: dict[int, np.ndarray] = {}
    for c, entries in chosen.items():
        rows = [embedding_of[e.frame_sha] for e in entries if e.frame_sha in embedding_of]
        if rows:
            out[c] = np.stack(rows).astype(np.float32)
    return out
