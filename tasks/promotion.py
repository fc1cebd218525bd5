"""The promotion gate: a pure function from two models' scores and a policy to a decision with reasons.

No registry call happens here (those are in :mod:`tasks.registry`). The policy is ``settings.gate``
(:class:`~detloop.settings.GateSettings`, the one definition of the gate's fields). Rules:

- golden mAP must improve by at least ``min_delta`` (challenger - champion >= min_delta);
- no class AP (golden slice) may drop by more than ``class_tol``;
- small-object AP (golden slice) may not drop by more than ``small_tol``;
- mAP on the crowded slice (golden frames with overlapping truth boxes) may not drop by more than ``crowded_tol``;
- latency ratio challenger / champion must be <= ``latency_ratio_max``;
- bootstrap (no champion): golden mAP >= ``bootstrap_floor``;
- drift rounds (``drifted_ap`` measured for both models), with ``drift_golden_tol`` > 0: when the challenger gains
  at least ``drift_min_gain`` on the drifted slice (the drifted cameras' held-out frames since the episode began),
  the golden mAP may drop by up to ``drift_golden_tol`` instead of having to improve by ``min_delta``. The frozen
  golden set predates the drift, so on golden alone a challenger that mends the drifted camera and is level
  elsewhere fails on noise; the allowance is bounded and stated in the report. Every other check is unchanged.

Every AP is the one ``policy.metric`` names (``map``: AP50-95, the default; ``map50``: AP at IoU 0.5), as
:func:`tasks.evaluation.gate_scores` read it; the reasons name it.

A class or size bucket with too few instances (``None`` score: "insufficient data") gates nothing and is
listed as skipped. The golden mAP itself is required: without it there is no evidence to promote on.
A NaN score counts as missing.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from detloop.settings import GateSettings

METRIC_LABEL = {"map": "mAP50-95", "map50": "mAP50"}
AP_LABEL = {"map": "AP", "map50": "AP50"}


@dataclass(frozen=True)
class ModelScores:
    """What the gate looks at for one model (golden slice; ``None`` = insufficient data / not measured).

    Attributes:
        golden_map: mAP50-95 on the golden slice.
        class_ap: class name -> AP50-95 on the golden slice.
        small_ap: AP50-95 of small objects on the golden slice.
        latency_ms: mean CPU latency per frame (ms), measured interleaved with the other model.
        crowded_ap: mAP50-95 on the crowded slice (golden frames whose truth has overlapping boxes).
        drifted_ap: mAP on the drifted slice of a drift round (None: not a drift round, or too little data).
    """

    golden_map: float | None
    class_ap: dict[str, float | None] = field(default_factory=dict)
    small_ap: float | None = None
    latency_ms: float | None = None
    crowded_ap: float | None = None
    drifted_ap: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelScores:
        return cls(
            golden_map=d.get("golden_map"),
            class_ap=dict(d.get("class_ap") or {}),
            small_ap=d.get("small_ap"),
            latency_ms=d.get("latency_ms"),
            crowded_ap=d.get("crowded_ap"),
            drifted_ap=d.get("drifted_ap"),
        )


@dataclass(frozen=True)
class Check:
    """One rule evaluated: ``status`` is ``pass``, ``fail`` or ``skipped`` (insufficient data)."""

    name: str
    status: str
    value: float | None
    limit: float | None
    detail: str


@dataclass(frozen=True)
class Decision:
    """Outcome of the gate.

    Attributes:
        passed: every gating check passed.
        promote: passed and the policy allows automatic promotion.
        bootstrap: there was no champion.
        reasons: one line per failed check (empty when passed).
        checks: every check, including passed and skipped ones.
    """

    passed: bool
    promote: bool
    bootstrap: bool
    reasons: list[str]
    checks: list[Check]

    @property
    def outcome(self) -> str:
        """``passed`` (may be promoted automatically), ``passed-awaiting-human`` or ``rejected``.

        The gate only decides; whether a promotion happened is recorded by ``promote``.
        """
        if not self.passed:
            return "rejected"
        return "passed" if self.promote else "passed-awaiting-human"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["outcome"] = self.outcome
        return d

    def to_markdown(self) -> str:
        """The gate report as a markdown table (stored as an artifact of the model version)."""
        lines = [
            f"# Gate report: {self.outcome}",
            "",
            f"bootstrap: {self.bootstrap}",
            "",
            "| check | status | value | limit | detail |",
            "| --- | --- | --- | --- | --- |",
        ]
        for c in self.checks:
            v = "" if c.value is None else f"{c.value:.4f}"
            lim = "" if c.limit is None else f"{c.limit:.4f}"
            lines.append(f"| {c.name} | {c.status} | {v} | {lim} | {c.detail} |")
        if self.reasons:
            lines += ["", "## Reasons", *[f"- {r}" for r in self.reasons]]
        return "\n".join(lines) + "\n"


def _ok(x: float | None) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def drift_allowance(challenger: ModelScores, champion: ModelScores, policy: GateSettings) -> float | None:
    """The challenger's gain on the drifted slice when the drift allowance applies (a drift round, both models
    measured on it, ``drift_golden_tol`` > 0), else None."""
    a, b = challenger.drifted_ap, champion.drifted_ap
    if policy.drift_golden_tol <= 0 or not (_ok(a) and _ok(b)):
        return None
    return a - b  # type: ignore[operator]


def decide(challenger: ModelScores, champion: ModelScores | None, policy: GateSettings) -> Decision:
    """Apply the promotion policy.

    Args:
        challenger: the new model's scores on the golden slice.
        champion: the current champion's scores on the SAME data (same run), or None at bootstrap.
        policy: thresholds.

    Returns:
        A :class:`Decision`; ``passed`` is False whenever any gating check fails.
    """
    checks: list[Check] = []
    m = METRIC_LABEL[policy.metric]

    def add(name: str, ok: bool | None, value: float | None, limit: float | None, detail: str) -> None:
        status = "skipped" if ok is None else ("pass" if ok else "fail")
        checks.append(Check(name, status, value, limit, detail))

    cg = challenger.golden_map
    if champion is None:
        if not _ok(cg):
            add("bootstrap_floor", False, None, policy.bootstrap_floor, f"golden {m} missing (insufficient data)")
        else:
            add("bootstrap_floor", cg >= policy.bootstrap_floor, cg, policy.bootstrap_floor,  # type: ignore[operator]
                f"golden {m} {cg:.4f} vs floor {policy.bootstrap_floor:.4f}")
    else:
        pg = champion.golden_map
        if not (_ok(cg) and _ok(pg)):
            add("golden_map_delta", False, None, policy.min_delta,
                f"golden {m} missing (insufficient data) for " + ("challenger" if not _ok(cg) else "champion"))
        else:
            delta = cg - pg  # type: ignore[operator]
            need, why = policy.min_delta, ""
            gain = drift_allowance(challenger, champion, policy)
            if gain is not None:
                ok = gain >= policy.drift_min_gain
                add("drifted_gain", True if ok else None, gain, policy.drift_min_gain,  # gates nothing by itself
                    f"drifted slice {m} {challenger.drifted_ap:.4f} vs champion {champion.drifted_ap:.4f} "
                    f"(gain {gain:+.4f}, allowance from {policy.drift_min_gain:+.4f}: "
                    + (f"golden may drop by up to {policy.drift_golden_tol:.4f})" if ok else "not granted)"))
                if ok:
                    need = min(policy.min_delta, -policy.drift_golden_tol)
                    why = f", drift allowance: drifted slice gained {gain:+.4f}"
            add("golden_map_delta", delta >= need, delta, need,
                f"golden {m} {cg:.4f} vs champion {pg:.4f} (delta {delta:+.4f}, need >= {need:+.4f}{why})")
        for name in sorted(set(challenger.class_ap) | set(champion.class_ap)):
            a, b = challenger.class_ap.get(name), champion.class_ap.get(name)
            if not (_ok(a) and _ok(b)):
                add(f"class_ap[{name}]", None, None, policy.class_tol, "insufficient data: gates nothing")
                continue
            drop = b - a  # type: ignore[operator]
            add(f"class_ap[{name}]", drop <= policy.class_tol, drop, policy.class_tol,
                f"class {name} {AP_LABEL[policy.metric]} {a:.4f} vs champion {b:.4f} (drop {drop:.4f}, allowed {policy.class_tol:.4f})")
        for rule, a, b, tol, short, long in (
                ("small_ap", challenger.small_ap, champion.small_ap, policy.small_tol, "small objects",
                 f"small-object {AP_LABEL[policy.metric]}"),
                ("crowded_ap", challenger.crowded_ap, champion.crowded_ap, policy.crowded_tol, "crowded slice",
                 f"crowded-slice {m}")):
            if not (_ok(a) and _ok(b)):
                add(rule, None, None, tol, f"{short}: insufficient data, gates nothing")
                continue
            drop = b - a  # type: ignore[operator]
            add(rule, drop <= tol, drop, tol, f"{long} {a:.4f} vs champion {b:.4f} (drop {drop:.4f}, allowed {tol:.4f})")
        la, lb = challenger.latency_ms, champion.latency_ms
        if not (_ok(la) and _ok(lb)) or lb <= 0:  # type: ignore[operator]
            add("latency_ratio", None, None, policy.latency_ratio_max, "latency not measured: gates nothing")
        else:
            ratio = la / lb  # type: ignore[operator]
            add("latency_ratio", ratio <= policy.latency_ratio_max, ratio, policy.latency_ratio_max,
                f"latency {la:.2f} ms vs champion {lb:.2f} ms (ratio {ratio:.3f}, max {policy.latency_ratio_max:.3f})")
    reasons = [c.detail for c in checks if c.status == "fail"]
    passed = not reasons
    return Decision(
        passed=passed,
        promote=passed and policy.auto_promote,
        bootstrap=champion is None,
        reasons=reasons,
        checks=checks,
    )
