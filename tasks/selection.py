"""Hard-example selection: uncertainty x class balance, diversity, and a random control arm.

Pure: :func:`select` takes scored frames and the selection settings and returns
:class:`SelectionResult` with ``SelectedFrame`` records (arm ``selected`` or ``control``) and a report
(lower level: :func:`score_frames` on a :class:`~tasks.strategies.BoxPool`, then :func:`select_indices`). Writing the report to S3 and drawing the plot are thin
helpers at the bottom.

Order of operations (all vectorised):

1. the random **control arm** is drawn first, uniformly from the whole pool, seeded by
   ``(settings.seed, round_seed)``: its labels estimate live accuracy without bias, so control frames
   must never be trained on;
2. box uncertainty (the configured strategy) on boxes above ``conf_threshold``, aggregated per frame;
   frames with no such box get a defined score from their best sub-threshold candidates;
3. multiplied by the class-balance weight (rare predicted classes weigh more) and, with
   ``error_weighting.enabled``, by the error weight (:func:`frame_error_weights`: the classes and cameras
   where the champion fails most weigh more);
4. diversity: ``none`` (top scores), ``kcenter`` (k-center greedy on all embeddings) or
   ``filter_kcenter`` (top ``filter_factor x n`` by score, then k-center among them). The budget is
   met exactly (or the whole pool when it is smaller).
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detloop.contracts import ScoredFrame, SelectedFrame
from detloop.detections import Detections
from detloop.label_cost import OutcomeRates, expected_seconds
from detloop.settings import LabellingCostSettings, SelectionSettings
from tasks.acquisition import (
    RareSearch,
    blend,
    per_second,
    random_representative,
    rare_candidates,
    rare_search_targets,
    regime_weight,
    seconds_capped,
    typicality,
)
from tasks.strategies import (
    STRATEGIES,
    BoxPool,
    StrategyParams,
    aggregate,
    class_weights,
    empty_frame_scores,
    frame_class_weight,
    get_strategy,
    kcenter_greedy,
    plan_arms,
    resolve_strategy,
)

REPORT_VERSION = 1


@dataclass
class SelectionResult:
    """What :func:`select` returns.

    Attributes:
        frames: chosen frames, selected arm first (by pick order), then control.
        report: JSON-able dict: settings, notes, counts, ``chosen`` (one row per chosen frame: arm, rank,
            reason, scores per strategy) and ``pool`` (every pool frame, columnar: key, arm, rank, final
            score, class weight, scores per strategy).
        final_scores: ``(F,)`` final score of every pool frame (uncertainty x class weight).
        cutoff: lowest final score among the selected arm (None when nothing was selected).
        notes: user-facing lines (empty window, budget larger than pool, fallbacks).
    """

    frames: list[SelectedFrame]
    report: dict[str, Any]
    final_scores: np.ndarray
    cutoff: float | None
    notes: list[str] = field(default_factory=list)

    @property
    def selected(self) -> list[SelectedFrame]:
        return [f for f in self.frames if f.arm == "selected"]

    @property
    def control(self) -> list[SelectedFrame]:
        return [f for f in self.frames if f.arm == "control"]

    def markdown(self, max_rows: int = 50) -> str:
        """Markdown summary + table of chosen frames (for a Prefect artifact or the CLI)."""
        r = self.report
        lines = [
            f"**Selection** strategy `{r['strategy']}` ({r['aggregation']}), diversity `{r['diversity']}`, "
            f"pool {r['counts']['pool']} frames, selected {r['counts']['selected']}, "
            f"control {r['counts']['control']}",
            "",
        ]
        lines += [f"- {n}" for n in self.notes]
        if self.notes:
            lines.append("")
        if not self.frames:
            lines.append("_nothing selected_")
            return "\n".join(lines)
        lines += ["| rank | arm | camera | date | key | score | reason |", "|---:|---|---|---|---|---:|---|"]
        for f in self.frames[:max_rows]:
            lines.append(
                f"| {f.rank} | {f.arm} | {f.frame.camera} | {f.frame.date} | `{f.frame.key.rsplit('/', 1)[-1]}` "
                f"| {f.uncertainty:.4f} | {f.reason} |"
            )
        if len(self.frames) > max_rows:
            lines.append(f"| … | | | | {len(self.frames) - max_rows} more | | |")
        return "\n".join(lines)


def _params(settings: SelectionSettings) -> StrategyParams:
    return StrategyParams(ambiguous_band=tuple(settings.ambiguous_band))  # type: ignore[arg-type]


def pool_from_frames(frames: Sequence[ScoredFrame], num_classes: int) -> tuple[BoxPool, np.ndarray | None]:
    """Flatten scored frames into a :class:`BoxPool` and an ``(F, D)`` float32 embedding matrix (or None)."""
    tta = [f.tta for f in frames] if any(f.tta is not None for f in frames) else None
    com = [f.committee for f in frames] if any(f.committee is not None for f in frames) else None
    pool = BoxPool.from_detections([f.detections for f in frames], num_classes, tta=tta, committee=com)
    emb = None
    if frames and all(f.embedding is not None for f in frames):
        emb = np.empty((len(frames), len(frames[0].embedding)), np.float32)  # type: ignore[arg-type]
        for i, f in enumerate(frames):
            emb[i] = f.embedding
    return pool, emb


def score_frames(
    pool: BoxPool,
    settings: SelectionSettings,
    labelled_class_counts: Sequence[int] | np.ndarray | None = None,
    all_strategies: bool = True,
) -> dict[str, Any]:
    """Per-frame scores of the configured strategy (+ every other applicable one, for the report).

    Returns:
        dict with ``uncertainty`` ``(F,)``, ``class_weight`` ``(F,)``, ``final`` ``(F,)``,
        ``n_detected`` ``(F,)``, ``per_strategy`` {name: ``(F,)``}, ``strategy`` (name actually
        used), ``notes``.
    """
    params = _params(settings)
    notes: list[str] = []
    strat, note = resolve_strategy(settings.strategy, pool)
    if note:
        notes.append(note)
    det_mask = pool.confidence >= settings.conf_threshold
    det = pool.subset(det_mask)
    cand = pool.subset(~det_mask)
    n_det = np.bincount(det.frame_index, minlength=pool.n_frames)

    def frame_scores(s: Any) -> np.ndarray:
        agg = s.aggregation or settings.aggregation
        f = aggregate(s.fn(det, params), det.frame_index, pool.n_frames, agg, settings.topk)
        empty = n_det == 0
        if empty.any():
            f[empty] = empty_frame_scores(cand, s, params, settings.conf_threshold, agg, settings.topk)[empty]
        return f

    unc = frame_scores(strat)
    per: dict[str, np.ndarray] = {strat.name: unc}
    if all_strategies:
        for name, s in STRATEGIES.items():
            if name in per:
                continue
            if (s.needs == "tta" and pool.tta is None) or (s.needs == "committee" and pool.committee is None):
                continue
            per[name] = frame_scores(s)
    if settings.class_balance:
        w = frame_class_weight(det, class_weights(labelled_class_counts, pool.num_classes,
                                                  settings.class_balance_power))
    else:
        w = np.ones(pool.n_frames)
    return {"uncertainty": unc, "class_weight": w, "final": unc * w, "n_detected": n_det,
            "per_strategy": per, "strategy": strat.name, "notes": notes}


def weighted_quotas(sizes: Sequence[int], weights: Sequence[float], k: int) -> list[int]:
    """Split ``k`` picks among groups of ``sizes`` frames in proportion to ``weights`` (> 0; pure): no group gets
    more than it has, a group's spare share goes to the groups with room (in proportion to theirs), and the
    remainder of the rounding goes to the largest fractions, ties to the groups listed first (with equal weights:
    an equal split, its remainder to the groups listed first). ``sum(result) == min(k, sum(sizes))``.

    >>> weighted_quotas([100, 100], [1, 1], 24), weighted_quotas([5, 100, 100], [1, 1, 1], 24)
    ([12, 12], [5, 10, 9])
    >>> weighted_quotas([100, 100, 100], [2, 1, 1], 24), weighted_quotas([5, 100, 100], [2, 1, 1], 24)
    ([12, 6, 6], [5, 10, 9])
    """
    if len(weights) != len(sizes) or any(not w > 0 for w in weights):
        raise ValueError(f"weights must be one positive number per group, got {list(weights)} for {len(sizes)}")
    quota = [0] * len(sizes)
    left = min(max(k, 0), sum(max(n, 0) for n in sizes))
    while left > 0:
        room = [i for i, n in enumerate(sizes) if quota[i] < n]
        total = sum(weights[i] for i in room)
        ideal = {i: left * weights[i] / total for i in room}
        base = {i: int(ideal[i]) for i in room}
        extra = left - sum(base.values())
        # the rounding's remainder: largest fractional part first, ties in listing order
        for i in sorted(room, key=lambda i: (-(ideal[i] - base[i]), i))[:extra]:
            base[i] += 1
        for i in room:
            add = min(base[i], sizes[i] - quota[i])
            quota[i] += add
            left -= add
    return quota


def _pick(order: np.ndarray, k: int, embeddings: np.ndarray | None, diversity: str,
          filter_factor: float) -> np.ndarray:
    """The ``k`` picks among ``order`` (frame indices ranked best first): the top, or k-center on embeddings."""
    if k <= 0 or diversity == "none" or k >= len(order):
        return order[:max(k, 0)]
    if diversity == "kcenter":
        return order[kcenter_greedy(embeddings[order], k, first=0)]  # type: ignore[index]
    top = order[:min(len(order), max(k, int(np.ceil(filter_factor * k))))]  # filter_kcenter
    return top[kcenter_greedy(embeddings[top], k, first=0)]  # type: ignore[index]


def select_indices(
    final: np.ndarray,
    embeddings: np.ndarray | None,
    settings: SelectionSettings,
    round_seed: int = 0,
    reserve: Any = None,
    groups: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Choose frame indices for both arms from final scores (pure, vectorised).

    Args:
        final: ``(F,)`` final scores.
        embeddings: ``(F, D)`` or None (diversity then falls back to top scores).
        settings: selection settings (budget, control share, diversity).
        round_seed: mixed with ``settings.seed`` for the control draw and tie breaks.
        reserve: optional ``(eligible (F,) bool, k) -> list[int]`` called with the frames left after the
            control draw and the selected arm's size;
            the indices it returns are selected first (the rare-class search), the rest as usual.
        groups: ``(F,)`` group (camera) of each frame; with ``settings.balance_cameras`` the picks after the
            reserved ones are split among the groups in proportion to ``settings.camera_weights`` (1 for a camera
            not named: equally, :func:`weighted_quotas`), each group ranked and made
            diverse on its own, and listed round-robin (pick order alternates between groups).

    Returns:
        dict with ``control`` ``(n_c,)``, ``selected`` ``(n_s,)`` (pick order), ``plan``, ``notes``.
    """
    n = len(final)
    plan = plan_arms(settings.budget, n, settings.control_share, settings.control_min, settings.control_pool_rounds)
    notes = list(plan.notes)
    rng = np.random.default_rng([settings.seed, round_seed])
    control = np.sort(rng.choice(n, size=plan.n_control, replace=False)) if plan.n_control else np.zeros(0, np.int64)
    rest = np.setdiff1d(np.arange(n), control, assume_unique=True)
    k = plan.n_selected
    if k == 0:
        return {"control": control, "selected": np.zeros(0, np.int64), "plan": plan, "notes": notes}
    first = np.zeros(0, np.int64)
    if reserve is not None:
        eligible = np.zeros(n, bool)
        eligible[rest] = True
        first = np.asarray(list(reserve(eligible, k))[:k], np.int64)
        rest = np.setdiff1d(rest, first)
        k -= len(first)
        if k == 0:
            return {"control": control, "selected": first, "plan": plan, "notes": notes}
    # rank by score, ties broken by a seeded permutation (not by listing order)
    tie = rng.permutation(len(rest))
    order = rest[np.lexsort((tie, -final[rest]))]
    diversity = settings.diversity
    if diversity != "none" and embeddings is None:
        notes.append(f"diversity {diversity!r}: no embeddings; took the top scores")
        diversity = "none"
    if settings.balance_cameras and groups is not None:
        g = np.asarray(groups, dtype=object)
        names = sorted({str(x) for x in g[order]})
        members = [order[g[order] == name] for name in names]  # each keeps the overall ranking's order
        weights = [settings.camera_weights.get(name, 1.0) for name in names]
        quotas = weighted_quotas([len(m) for m in members], weights, k)
        picks = [_pick(m, q, embeddings, diversity, settings.filter_factor) for m, q in zip(members, quotas, strict=True)]
        sel = np.asarray([p[j] for j in range(max(quotas, default=0)) for p in picks if j < len(p)], np.int64)
        notes.append("cameras balanced: " + ", ".join(
            f"{n} {q}" + (f" (weight {w:g})" if w != 1.0 else "") for n, q, w in zip(names, quotas, weights, strict=True)))
    else:
        sel = np.asarray(_pick(order, k, embeddings, diversity, settings.filter_factor), np.int64)
    sel = np.concatenate([first, sel])
    return {"control": control, "selected": sel, "plan": plan, "notes": notes}


def _reason(i: int, sc: dict[str, Any], settings: SelectionSettings, diversity: str) -> str:
    """One line: why frame ``i`` was selected (strategy, aggregation, class weight, diversity step)."""
    strat = sc["strategy"]
    u, w = float(sc["uncertainty"][i]), float(sc["class_weight"][i])
    if sc["n_detected"][i] == 0:
        base = f"no detection >= {settings.conf_threshold:g}; sub-threshold candidates score {u:.3f}"
    else:
        base = f"{strat} {settings.aggregation} {u:.3f} over {int(sc['n_detected'][i])} boxes"
    if w > 1.0 + 1e-9:
        base += f" x class weight {w:.2f}"
    e = float(sc["error_weight"][i]) if "error_weight" in sc else 1.0
    if abs(e - 1.0) > 1e-9:
        base += f" x error weight {e:.2f}"
    if diversity != "none":
        base += f" ({diversity})"
    return base


def select(
    frames: Sequence[ScoredFrame],
    labelled_class_counts: Sequence[int] | np.ndarray | None,
    settings: SelectionSettings,
    round_seed: int = 0,
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
    cost: LabellingCostSettings | None = None,
    champion_quality: float | None = None,
    class_exemplars: Mapping[int, np.ndarray] | None = None,
    slice_weights: Mapping[str, Any] | None = None,
    outcome_rates: OutcomeRates | None = None,
) -> SelectionResult:
    """Select frames for labelling.

    Args:
        frames: scored pool (``ScoredFrame.detections`` carry ``class_scores`` ``(N, C)``).
        labelled_class_counts: ``(C,)`` boxes per class in the labelled set (None: no class balance).
        settings: ``settings.selection``.
        round_seed: seed of this round (mixed with ``settings.seed``).
        class_names: names for the report (optional).
        num_classes: C when no frame has a box (default: from the frames / ``class_names``).
        cost: labelling prices; with ``settings.cost.per_second`` frames rank by value per expected second
            (None: cost not used).
        champion_quality: the champion's mAP50 on frames it never trained on (control arm, else golden set),
            for the regime blend (``settings.regime``); None: ``unknown_weight``.
        class_exemplars: class index -> ``(n, D)`` embeddings of labelled frames holding that class, for the
            rare-class search (``settings.rare_search``); None: no search.
        slice_weights: ``{"class": {name: w}, "camera": {id: w}}`` from the champion's error breakdown
            (:func:`tasks.error_analysis.selection_weights`), optionally with ``"source"`` (where it came from, for
            the report); used when ``settings.error_weighting.enabled`` (None then: every frame weighs 1, a note).
        outcome_rates: labelling outcome rates per confidence bin fitted on earlier rounds
            (:func:`detloop.label_cost.fit_outcome_rates`; ``settings.cost.calibration``); None: expected seconds
            take confidences as probabilities.

    Returns:
        :class:`SelectionResult`. An empty pool gives an empty result with a note, not an error.

    Raises:
        DataError: unknown strategy (listing the valid ones) or inconsistent class counts.
    """
    get_strategy(settings.strategy)  # unknown name -> error listing the valid ones, even on an empty pool
    if num_classes is None:
        num_classes = next((f.detections.num_classes for f in frames if f.detections.num_classes), None)
        num_classes = num_classes or (len(class_names) if class_names else 1)
    if not frames:
        return _empty_result(settings, "empty window: no frames to score; nothing selected")
    pool, emb = pool_from_frames(frames, num_classes)
    sc = score_frames(pool, settings, labelled_class_counts)
    ew_report = _apply_error_weights(pool, frames, sc, settings, slice_weights, class_names)
    acq = _acquisition(pool, emb, sc, settings, cost, champion_quality, class_exemplars, labelled_class_counts,
                       class_names, round_seed, outcome_rates)
    # a weak champion with representative 'random': the seeded draw is the sample, not diversified
    picking = settings.model_copy(update={"diversity": "none"}) if acq["random_sample"] else settings
    picked = select_indices(acq["rank_score"], emb, picking, round_seed, reserve=acq["reserve"],
                            groups=[f.frame.camera for f in frames])
    notes = sc["notes"] + acq["notes"] + picked["notes"] + _rare_note(acq["rare"])
    final = acq["rank_score"]
    rare_picks = set(acq["rare"].picks)
    rank = np.empty(len(final), np.int64)
    rank[np.lexsort((np.arange(len(final)), -final))] = np.arange(1, len(final) + 1)

    out: list[SelectedFrame] = []
    arm_of: dict[int, str] = {}
    diversity = picking.diversity if emb is not None else "none"
    for pick, i in enumerate(picked["selected"].tolist()):
        arm_of[i] = "selected"
        why = ("rare-class search: nearest to labelled examples of a class the champion never detects"
               if i in rare_picks else
               "uniform random sample: the champion is too weak for its uncertainty to mean much (regime weight 0)"
               if acq["random_sample"] else _reason(i, sc, settings, diversity))
        out.append(_selected_frame(frames[i], "selected", sc, i, int(rank[i]), why + f"; pick {pick + 1}",
                                   settings, final))
    for i in picked["control"].tolist():
        arm_of[i] = "control"
        out.append(_selected_frame(frames[i], "control", sc, i, int(rank[i]),
                                   "control: uniform random draw (never trained on)", settings, final))
    sel_idx = picked["selected"]
    cutoff = float(final[sel_idx].min()) if len(sel_idx) else None
    arm_col = [None] * len(frames)
    for i, a in arm_of.items():
        arm_col[i] = a
    pool_cols = {  # every pool frame, columnar (cheap for 100k frames): row i of each list is frame i
        "key": [f.frame.key for f in frames],
        "etag": [f.frame.etag for f in frames],
        "camera": [f.frame.camera for f in frames],
        "date": [f.frame.date for f in frames],
        "arm": arm_col,
        "rank": rank.tolist(),
        "final": np.round(final, 6).tolist(),
        "class_weight": np.round(sc["class_weight"], 4).tolist(),
        **({"error_weight": np.round(sc["error_weight"], 4).tolist()} if "error_weight" in sc else {}),
        "n_detected": sc["n_detected"].tolist(),
        "scores": {k: np.round(v, 6).tolist() for k, v in sc["per_strategy"].items()},
        **{k: np.round(v, 4).tolist() for k, v in acq["columns"].items()},
    }
    chosen = [
        {"key": f.frame.key, "camera": f.frame.camera, "date": f.frame.date, "arm": f.arm, "rank": f.rank,
         "final": f.uncertainty, "reason": f.reason, "scores": f.scores}
        for f in out
    ]
    cost_report = dict(acq["cost"])
    exp_sec = acq["columns"].get("expected_seconds")
    if exp_sec is not None and len(sel_idx):  # what the picks are expected to cost against a random sample
        cost_report.update(pool_mean_expected_seconds=round(float(exp_sec.mean()), 2),
                           selected_mean_expected_seconds=round(float(exp_sec[sel_idx].mean()), 2))
    report = _report_header(settings, sc["strategy"], notes)
    report.update(
        counts={"pool": len(frames), "selected": len(sel_idx), "control": len(picked["control"]),
                "no_detection": int((sc["n_detected"] == 0).sum())},
        cutoff=cutoff,
        class_names=list(class_names) if class_names else None,
        labelled_class_counts=None if labelled_class_counts is None else [int(c) for c in labelled_class_counts],
        chosen=chosen,
        pool=pool_cols,
        cost=cost_report,
        regime={**acq["regime"].to_dict(), "representative": settings.regime.representative,
                "random_sample": acq["random_sample"]},
        rare_search={**acq["rare"].report, "picked": len(acq["rare"].picks)},
        error_weighting=ew_report,
    )
    return SelectionResult(out, report, final, cutoff, notes)


def frame_error_weights(pool: BoxPool, cameras: Sequence[str], weights: Mapping[str, Any], cap: float,
                        conf_threshold: float, class_names: Sequence[str] | None = None) -> np.ndarray:
    """Per frame: its camera's weight x the largest weight among the top classes of its detected boxes,
    clipped to ``[1 / cap, cap]`` (the error weighting of ``selection.error_weighting``).

    A frame with no box at ``>= conf_threshold`` gets its camera's weight only; a camera or class absent from
    ``weights`` (unknown, or too few instances in the breakdown) weighs 1.

    Args:
        pool: every box of the pool (thresholded here).
        cameras: ``(F,)`` camera id of each frame.
        weights: ``{"class": {name: w}, "camera": {id: w}}`` (:func:`tasks.error_analysis.selection_weights`).
        cap: bound of the product (>= 1).
        conf_threshold: confidence above which a box counts as detected.
        class_names: class index -> name (default: the index as a string).

    Returns:
        ``(F,)`` float64 multipliers in ``[1 / cap, cap]``.
    """
    cw: Mapping[str, float] = weights.get("class") or {}
    mw: Mapping[str, float] = weights.get("camera") or {}
    names = list(class_names or [])
    per_class = np.array([float(cw.get(names[c] if c < len(names) else str(c), 1.0))
                          for c in range(pool.num_classes)] or [1.0])
    cls = frame_class_weight(pool.subset(pool.confidence >= conf_threshold), per_class)
    cam = np.array([float(mw.get(str(c), 1.0)) for c in cameras], np.float64)
    return np.clip(cam * cls, 1.0 / cap, cap)


def _apply_error_weights(pool: BoxPool, frames: Sequence[ScoredFrame], sc: dict[str, Any],
                         settings: SelectionSettings, weights: Mapping[str, Any] | None,
                         class_names: Sequence[str] | None) -> dict[str, Any]:
    """With ``error_weighting.enabled`` and ``weights``: ``sc["final"]`` x :func:`frame_error_weights` (kept in
    ``sc["error_weight"]``, a note added); returns the report's ``error_weighting`` section."""
    ew = settings.error_weighting
    if not ew.enabled:
        return {"enabled": False}
    rep: dict[str, Any] = {"enabled": True, "slice": ew.slice, "strength": ew.strength, "cap": ew.cap,
                           "kinds": list(ew.kinds), "source": None, "weights": None, "up_weighted": 0,
                           "down_weighted": 0}
    if weights is None:
        sc["notes"].append("error weighting: no error breakdown of the scoring model found; every frame weighs 1")
        return rep
    w = frame_error_weights(pool, [f.frame.camera for f in frames], weights, ew.cap, settings.conf_threshold,
                            class_names)
    sc["final"] = sc["final"] * w
    sc["error_weight"] = w
    up, down = int((w > 1.0 + 1e-9).sum()), int((w < 1.0 - 1e-9).sum())
    rep.update(source=weights.get("source"), up_weighted=up, down_weighted=down,
               weights={k: dict(weights.get(k) or {}) for k in ("class", "camera")})
    src = weights.get("source") or {}
    of = "".join(f", {k} {src[k]}" for k in ("version", "round_id") if src.get(k) is not None)
    sc["notes"].append(f"error weighting ({ew.slice} breakdown{of}): {up} frame(s) weighted up, {down} down "
                       f"(x[{1 / ew.cap:.2f}, {ew.cap:g}])")
    return rep


def _rare_note(rare: RareSearch) -> list[str]:
    """One line per search: per never-detected class, exemplars, candidates found and frames picked."""
    classes = rare.report.get("classes") or {}
    if not classes:
        return []
    parts = [f"{name}: {r['exemplars']} labelled examples, {r['candidates']} candidates, {r['picked']} picked"
             for name, r in classes.items()]
    return ["rare-class search (classes the champion never detects): " + "; ".join(parts)
            + "".join(f" ({n})" for n in rare.report.get("notes", []))]


def _acquisition(pool: BoxPool, emb: np.ndarray | None, sc: dict[str, Any], settings: SelectionSettings,
                 cost: LabellingCostSettings | None, quality: float | None,
                 exemplars: Mapping[int, np.ndarray] | None, labelled_counts: Any,
                 class_names: Sequence[str] | None, round_seed: int = 0,
                 outcome_rates: OutcomeRates | None = None) -> dict[str, Any]:
    """Value per expected second, the regime blend and the rare-class reservation (see tasks/acquisition.py)."""
    notes: list[str] = []
    columns: dict[str, np.ndarray] = {}
    det = pool.confidence >= settings.conf_threshold
    value = sc["final"]
    cost_report: dict[str, Any] = {"per_second": False}
    seconds = None
    if cost is not None:
        seconds = expected_seconds(pool.confidence[det], pool.frame_index[det], pool.confidence[~det],
                                   pool.frame_index[~det], pool.n_frames, cost, outcome_rates)
        columns["expected_seconds"] = seconds
        if outcome_rates is not None:
            cost_report["calibration"] = outcome_rates.to_dict()
            notes.append(f"expected seconds calibrated on {outcome_rates.boxes} pre-annotated boxes of "
                         f"{outcome_rates.frames} labelled frame(s) (outcome rates per confidence bin)")
        if settings.cost.per_second and settings.cost.exponent > 0:
            value = per_second(value, seconds, settings.cost.exponent)
            cost_report.update(per_second=True, exponent=settings.cost.exponent,
                               pool_median_expected_seconds=round(float(np.median(seconds)), 2))
    regime = regime_weight(quality, settings.regime)
    typical = None
    random_sample = False
    if regime.weight < 1.0 and settings.regime.representative == "random":
        typical = random_representative(pool.n_frames, settings.seed, round_seed)
        random_sample = regime.weight <= 0.0
        notes.append("regime: representative = a seeded random draw" + (
            " (weight 0: the selected arm is a uniform random sample, no diversity step)" if random_sample else ""))
    elif regime.weight < 1.0:
        if emb is None:
            notes.append("regime: no embeddings to measure typicality; ranked by uncertainty only")
        else:
            typical = typicality(emb, settings.regime.typicality_k, settings.regime.reference_frames, settings.seed)
            columns["typicality"] = typical
    if quality is not None or settings.regime.enabled:
        notes.append(f"regime: weight on uncertainty {regime.weight:.2f} ({regime.rule}"
                     + (f", champion mAP50 {regime.quality:.3f})" if regime.quality is not None else ")"))
    rank_score = blend(value, typical, regime.weight)
    cap = settings.cost.seconds_cap
    if cap is not None:
        if seconds is None:
            notes.append("seconds cap: no labelling prices given; not applied")
        elif random_sample:
            notes.append("seconds cap: not applied to a uniform random sample (it costs the pool's mean)")
        elif settings.diversity == "kcenter" and emb is not None:
            notes.append("seconds cap: k-center over the whole pool does not follow the ranking; not applied")
        else:
            k = plan_arms(settings.budget, pool.n_frames, settings.control_share, settings.control_min,
                          settings.control_pool_rounds).n_selected
            if settings.diversity == "filter_kcenter" and emb is not None:  # the window k-center picks from
                k = max(k, int(np.ceil(settings.filter_factor * k)))
            rank_score, capped = seconds_capped(rank_score, seconds, k, cap)
            cost_report["seconds_cap"] = {**capped.to_dict(), "top_k": k}
            notes.append(f"seconds cap {cap:g}x the pool's mean expected seconds per frame: the top {k} cost "
                         f"{capped.before:.2f}x" + (f", {capped.after:.2f}x after a penalty of {capped.penalty:.3g}"
                                                    if capped.penalty else " (no penalty needed)"))
    rare = RareSearch()
    reserve = None
    rs = settings.rare_search
    if rs.enabled and rs.share > 0:
        targets = rare_search_targets(pool.class_scores[det].argmax(axis=1), labelled_counts, pool.num_classes,
                                      quality, settings.regime.weak_below)
        missing = targets.classes
        if targets.stood_down:
            notes.append(f"rare-class search {targets.stood_down}")
            rare.report = {"classes": {}, "notes": [], "stood_down": targets.stood_down}
        if missing:
            def reserve(eligible: np.ndarray, k: int) -> list[int]:
                n_res = int(np.ceil(rs.share * k))
                found = rare_candidates(emb, exemplars, missing, eligible, n_res, rs, class_names)
                rare.picks, rare.report = found.picks, found.report
                return found.picks

            names = [class_names[c] if class_names else str(c) for c in missing]
            rare.report = {"classes": {n: {"exemplars": 0, "candidates": 0, "picked": 0} for n in names}, "notes": []}
    return {"rank_score": rank_score, "reserve": reserve, "notes": notes, "columns": columns, "cost": cost_report,
            "regime": regime, "rare": rare, "random_sample": random_sample}


def _selected_frame(f: ScoredFrame, arm: str, sc: dict[str, Any], i: int, rank: int, reason: str,
                    settings: SelectionSettings, final: np.ndarray) -> SelectedFrame:
    d: Detections = f.detections
    pre = d[d.confidence >= settings.conf_threshold] if len(d) else d
    return SelectedFrame(
        frame=f.frame, width=f.width, height=f.height, arm=arm,  # type: ignore[arg-type]
        strategy=str(sc["strategy"]), uncertainty=float(final[i]), rank=rank, reason=reason,
        predictions=pre.to_dict(), scores={k: float(v[i]) for k, v in sc["per_strategy"].items()},
    )


def _report_header(settings: SelectionSettings, strategy: str, notes: list[str]) -> dict[str, Any]:
    return {
        "version": REPORT_VERSION,
        "strategy": strategy,
        "configured_strategy": settings.strategy,
        "aggregation": settings.aggregation,
        "diversity": settings.diversity,
        "budget": settings.budget,
        "settings": settings.model_dump(mode="json"),
        "notes": notes,
    }


def _empty_result(settings: SelectionSettings, note: str) -> SelectionResult:
    report = _report_header(settings, settings.strategy, [note])
    report.update(counts={"pool": 0, "selected": 0, "control": 0, "no_detection": 0}, cutoff=None, chosen=[],
                  pool={}, cost={"per_second": False}, regime=None, rare_search={"classes": {}, "picked": 0},
                  error_weighting={"enabled": settings.error_weighting.enabled})
    return SelectionResult([], report, np.zeros(0), None, [note])


# --------------------------------------------------------------------------------------------
# Outputs: plot and S3 (thin)
# --------------------------------------------------------------------------------------------
def plot_scores(result: SelectionResult, path: str | None = None) -> bytes:
    """PNG of the final-score distribution with the cut-off line and the control frames marked.

    Returns:
        The PNG bytes (also written to ``path`` when given).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    s = result.final_scores
    if len(s):
        ax.hist(s, bins=min(50, max(5, len(s) // 5)), color="#7a9cc6", label=f"pool ({len(s)})")
        ctrl = [f.uncertainty for f in result.control]
        if ctrl:
            ax.plot(ctrl, np.zeros(len(ctrl)), "|", color="#d62728", ms=14, label=f"control ({len(ctrl)})")
        if result.cutoff is not None:
            ax.axvline(result.cutoff, color="k", ls="--", label=f"cut-off {result.cutoff:.3f}")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "empty pool", ha="center", va="center")
    ax.set_xlabel("final score (uncertainty x class weight)")
    ax.set_ylabel("frames")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    data = buf.getvalue()
    if path:
        with open(path, "wb") as fh:
            fh.write(data)
    return data


def write_selection_report(store: Any, bucket: str, run_id: str, result: SelectionResult) -> dict[str, str]:
    """Write ``runs/<run_id>/selection_report.json``, ``.md`` and ``selection_scores.png``; returns the keys."""
    prefix = f"runs/{run_id}/"
    keys = {
        "report": prefix + "selection_report.json",
        "markdown": prefix + "selection_report.md",
        "plot": prefix + "selection_scores.png",
        "selected": prefix + "selected_frames.json",
    }
    store.put_bytes(bucket, keys["report"], json.dumps(result.report, indent=1).encode(), "application/json")
    store.put_bytes(bucket, keys["markdown"], result.markdown(max_rows=10_000).encode(), "text/markdown")
    store.put_bytes(bucket, keys["plot"], plot_scores(result), "image/png")
    store.put_json(bucket, keys["selected"], [f.to_dict() for f in result.frames])
    return keys




def write_selection(store: Any, bucket: str, run_id: str, result: SelectionResult,
                    meta: dict[str, Any]) -> dict[str, str]:
    """Store a run's selection: ``selection_meta.json`` (``meta`` + notes), the reports, and last of all
    ``selected_frames.json``, the marker that the selection is complete (what a re-run resumes with)."""
    meta_key = f"runs/{run_id}/selection_meta.json"
    store.put_json(bucket, meta_key, {**meta, "notes": result.notes})
    return {"meta": meta_key, **write_selection_report(store, bucket, run_id, result)}


def read_stored_selection(store: Any, bucket: str, run_id: str
                          ) -> tuple[list[SelectedFrame], str | None, dict[str, Any]] | None:
    """``(frames, model version, stats)`` of a complete stored selection of ``run_id``, or None."""
    prefix = f"runs/{run_id}/"
    if not (store.exists(bucket, prefix + "selected_frames.json") and store.exists(bucket, prefix + "selection_meta.json")):
        return None
    frames = [SelectedFrame.from_dict(d) for d in store.get_json(bucket, prefix + "selected_frames.json")]
    meta = store.get_json(bucket, prefix + "selection_meta.json")
    return frames, meta.get("model_version"), meta.get("stats", {})


def labelled_version(store: Any, settings: Any, dataset_version: str | None) -> str | None:
    """``dataset_version``, else the newest train version, else the seed version (None: nothing labelled)."""
    from detloop.datasets import latest_version

    return (dataset_version or latest_version(store, settings, "train")
            or latest_version(store, settings, "seed"))


def class_counts(manifest: Any, classes: Sequence[str]) -> list[int]:
    """Boxes per configured class in a labelled version's train split (``manifest``: its
    :class:`detloop.datasets.DatasetManifest`): what class balance weighs against."""
    boxes = manifest.box_counts(split="train")
    return [int(boxes.get(c, 0)) for c in classes]


def missing_classes(frames: Sequence[ScoredFrame], labelled_counts: Sequence[int] | None,
                    settings: SelectionSettings, num_classes: int, champion_quality: float | None = None
                    ) -> list[int]:
    """Classes with labelled boxes that the champion detects (above ``conf_threshold``) nowhere in ``frames``:
    what the rare-class search looks for (the same test :func:`select` applies, standing down included)."""
    pool = BoxPool.from_detections([f.detections for f in frames], num_classes)
    det = pool.confidence >= settings.conf_threshold
    return rare_search_targets(pool.class_scores[det].argmax(axis=1), labelled_counts, num_classes,
                               champion_quality, settings.regime.weak_below).classes
