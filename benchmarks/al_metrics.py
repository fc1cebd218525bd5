"""Pure math of the active-learning benchmark: mean curves over seeds, label efficiency, bootstrap CI.

A *curve* is one arm's result for one seed: ``x`` (labels added beyond the shared bootstrap, frames or
boxes, strictly increasing) and ``y`` (a metric such as mAP50-95 on the benchmark evaluation set), one
point per round, round 1 first. The bootstrap point (x = 0) is left out on purpose: every arm shares
it, and a crossing between it and round 1 would be an interpolation across the whole first round.

Label efficiency of a strategy against random (the issue's definition):

    target  = random's final mean mAP
    n_rand  = labels random needs to reach ``target`` on its mean curve (first crossing, interpolated)
    n_strat = labels the strategy needs to reach ``target`` on its mean curve
    efficiency = n_rand / n_strat

written ``"> x"`` when the strategy is already at or above ``target`` at its first point (only a lower
bound is known: ``x = n_rand / x_first``), and ``"never"`` when its mean curve never reaches ``target``.
When random's own first point is already at its final value (random did not improve: e.g. an untrained
model at mAP 0 throughout), only upper bounds exist on both sides and the ratio is ``"undefined"``.
The confidence interval resamples seeds with replacement (paired: seed s of random and of the strategy
share the bootstrap model) and recomputes the efficiency on the resampled mean curves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Kind = Literal["point", "lower_bound", "never", "undefined"]


@dataclass(frozen=True)
class Curve:
    """One arm, one seed: ``x`` ``(R,)`` labels added (increasing), ``y`` ``(R,)`` metric values."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        x = np.asarray(self.x, np.float64).reshape(-1)
        y = np.asarray(self.y, np.float64).reshape(-1)
        if x.shape != y.shape:
            raise ValueError(f"curve x and y must have the same length, got {x.shape} and {y.shape}")
        if x.size == 0:
            raise ValueError("a curve needs at least one point")
        if x.size > 1 and np.any(np.diff(x) <= 0):
            raise ValueError(f"curve x must be strictly increasing, got {x.tolist()}")
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", y)


@dataclass(frozen=True)
class Efficiency:
    """Label efficiency of a strategy against random.

    Attributes:
        kind: ``point`` (a ratio), ``lower_bound`` (the strategy passed the target before its first
            point: the ratio is at least ``value``) or ``never`` (never reached the target; ``value`` None).
        value: the ratio n_rand / n_strat (or its lower bound).
        target: random's final mean metric.
        n_random: labels random needs to reach ``target``.
        n_strategy: labels the strategy needs (its first x for ``lower_bound``; None for ``never``).
        x_max: the strategy's last x (with ``never``: the target was not reached within this many labels;
            an arm that labels fewer frames per round, e.g. with a control arm, may simply stop earlier).
    """

    kind: Kind
    value: float | None
    target: float
    n_random: float
    n_strategy: float | None
    x_max: float | None = None

    @property
    def text(self) -> str:
        if self.kind == "undefined":
            return "undefined (random did not improve)"
        if self.kind == "never" or self.value is None:
            return "never"
        if self.kind == "lower_bound":
            return f"> {self.value:.2f}x"
        return f"{self.value:.2f}x"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": _r(self.value), "text": self.text, "target": _r(self.target),
                "n_random": _r(self.n_random), "n_strategy": _r(self.n_strategy), "x_max": _r(self.x_max)}


@dataclass(frozen=True)
class EfficiencyCI:
    """Efficiency with a bootstrap interval over seeds.

    Attributes:
        estimate: efficiency on the mean curves of all seeds.
        ci: (low, high) percentile interval of the resampled ratios (lower bounds count as their value,
            ``never`` as 0), or None with fewer than 2 seeds.
        level: interval level (e.g. 0.95).
        n_boot: resamples drawn.
        share_never: share of resamples where the strategy never reached random's final metric.
        share_lower_bound: share of resamples where only a lower bound was known.
    """

    estimate: Efficiency
    ci: tuple[float, float] | None
    level: float
    n_boot: int
    share_never: float | None = None
    share_lower_bound: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**self.estimate.to_dict(), "ci": None if self.ci is None else [_r(self.ci[0]), _r(self.ci[1])],
                "ci_level": self.level, "n_boot": self.n_boot, "share_never": _r(self.share_never),
                "share_lower_bound": _r(self.share_lower_bound), "notes": self.notes}


def _r(v: float | None, nd: int = 4) -> float | None:
    return None if v is None or not np.isfinite(v) else round(float(v), nd)


def common_grid(curves: Sequence[Curve]) -> np.ndarray:
    """Union of the curves' x values inside their common range ``[max first x, min last x]``.

    Returns:
        ``(G,)`` sorted x values (at least the overlap's end points). Raises ValueError when the
        curves do not overlap.
    """
    if not curves:
        raise ValueError("no curves")
    lo = max(float(c.x[0]) for c in curves)
    hi = min(float(c.x[-1]) for c in curves)
    if lo > hi:
        raise ValueError(f"curves do not overlap on x: latest start {lo} > earliest end {hi}")
    xs = np.unique(np.concatenate([c.x for c in curves] + [np.array([lo, hi])]))
    return xs[(xs >= lo) & (xs <= hi)]


def mean_curve(curves: Sequence[Curve]) -> tuple[Curve, np.ndarray]:
    """Mean over seeds on the common grid (each seed linearly interpolated).

    Returns:
        (mean curve, ``(G,)`` standard deviation over seeds, ddof=1; zeros for one seed).
    """
    grid = common_grid(curves)
    ys = np.stack([np.interp(grid, c.x, c.y) for c in curves])
    sd = ys.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros(len(grid))
    return Curve(grid, ys.mean(axis=0)), sd


def labels_to_reach(curve: Curve, target: float) -> tuple[float | None, bool]:
    """Labels at which ``curve`` first reaches ``target`` (linear interpolation between points).

    Returns:
        ``(x, before_first)``: ``x`` None when never reached; ``before_first`` True when the first point
        is already at or above the target (then ``x`` is the first point's x, an upper bound).
    """
    x, y = curve.x, curve.y
    if y[0] >= target:
        return float(x[0]), True
    above = np.flatnonzero(y >= target)
    if above.size == 0:
        return None, False
    j = int(above[0])
    x0, x1, y0, y1 = x[j - 1], x[j], y[j - 1], y[j]
    return float(x0 + (target - y0) * (x1 - x0) / (y1 - y0)), False


def label_efficiency(random: Curve, strategy: Curve) -> Efficiency:
    """Label efficiency of ``strategy`` against ``random`` (both mean curves; see the module docstring)."""
    target = float(random.y[-1])
    n_rand, before_r = labels_to_reach(random, target)
    if n_rand is None:  # only with NaN values: a finite curve reaches its own final value at its end
        return Efficiency("undefined", None, target, float(random.x[-1]), None, float(strategy.x[-1]))
    if before_r:
        return Efficiency("undefined", None, target, n_rand, None, float(strategy.x[-1]))
    n_strat, before = labels_to_reach(strategy, target)
    if n_strat is None:
        return Efficiency("never", None, target, n_rand, None, float(strategy.x[-1]))
    if n_strat <= 0:
        raise ValueError("label counts must be positive")
    return Efficiency("lower_bound" if before else "point", n_rand / n_strat, target, n_rand, n_strat,
                      float(strategy.x[-1]))


def efficiency_ci(
    random: Sequence[Curve],
    strategy: Sequence[Curve],
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> EfficiencyCI:
    """Label efficiency on the mean curves plus a paired bootstrap interval over seeds.

    Args:
        random: random's curves, one per seed.
        strategy: the strategy's curves, same seeds in the same order.
        n_boot: resamples.
        level: interval level.
        seed: resampling seed.
    """
    if len(random) != len(strategy):
        raise ValueError(f"paired seeds needed: {len(random)} random curves, {len(strategy)} strategy curves")
    est = label_efficiency(mean_curve(random)[0], mean_curve(strategy)[0])
    n = len(random)
    if n < 2:
        return EfficiencyCI(est, None, level, 0, notes=["one seed: no interval"])
    rng = np.random.default_rng(seed)
    vals = np.empty(n_boot)
    kinds: list[str] = []
    # n seeds have only n**n ordered resamples (27 for 3 seeds) against n_boot draws: each is computed once,
    # in its drawn order, so the interval is the same to the bit as recomputing every draw
    seen: dict[tuple[int, ...], Efficiency] = {}
    for b in range(n_boot):
        idx = tuple(int(i) for i in rng.integers(0, n, n))
        e = seen.get(idx)
        if e is None:
            e = seen[idx] = label_efficiency(mean_curve([random[i] for i in idx])[0],
                                             mean_curve([strategy[i] for i in idx])[0])
        vals[b] = np.nan if e.kind == "undefined" else (0.0 if e.value is None else e.value)
        kinds.append(e.kind)
    a = (1 - level) / 2
    notes = [] if n >= 5 else [f"{n} seeds: a bootstrap over so few seeds understates the spread"]
    n_undef = kinds.count("undefined")
    if n_undef:
        notes.append(f"{n_undef} of {n_boot} resamples undefined (random did not improve); left out of the interval")
    ci = None
    if n_undef < n_boot:
        lo, hi = np.nanquantile(vals, [a, 1 - a])
        ci = (float(lo), float(hi))
    return EfficiencyCI(est, ci, level, n_boot, kinds.count("never") / n_boot,
                        kinds.count("lower_bound") / n_boot, notes)


def final_summary(curves: Sequence[Curve]) -> dict[str, float | None]:
    """Mean and standard deviation (ddof=1) over seeds of the final point, and the mean final x."""
    ys = np.array([c.y[-1] for c in curves])
    xs = np.array([c.x[-1] for c in curves])
    return {"mean": _r(float(ys.mean())), "std": _r(float(ys.std(ddof=1))) if len(ys) > 1 else None,
            "x_mean": _r(float(xs.mean()), 1), "n_seeds": len(curves)}
