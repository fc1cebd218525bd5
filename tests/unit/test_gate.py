"""The promotion gate: property tests that no policy violation ever promotes and every reason is reported."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from detloop.settings import GateSettings
from tasks.promotion import Decision, ModelScores, decide

CLASSES = ["disc", "square", "triangle"]
score = st.one_of(st.none(), st.floats(0.0, 1.0), st.just(math.nan))
sure = st.floats(0.0, 1.0)
latency = st.one_of(st.none(), st.floats(0.1, 500.0))


@st.composite
def model_scores(draw: st.DrawFn, golden: st.SearchStrategy = score) -> ModelScores:
    return ModelScores(
        golden_map=draw(golden),
        class_ap={c: draw(score) for c in CLASSES},
        small_ap=draw(score),
        latency_ms=draw(latency),
        crowded_ap=draw(score),
        drifted_ap=draw(score),
    )


policies = st.builds(
    GateSettings,
    min_delta=st.floats(-0.2, 0.2),
    class_tol=st.floats(0.0, 0.3),
    small_tol=st.floats(0.0, 0.3),
    crowded_tol=st.floats(0.0, 0.3),
    latency_ratio_max=st.floats(0.5, 3.0),
    bootstrap_floor=st.floats(0.0, 0.5),
    auto_promote=st.booleans(),
    drift_golden_tol=st.one_of(st.just(0.0), st.floats(0.0, 0.1)),
    drift_min_gain=st.floats(-0.1, 0.3).map(abs),
)


def _good(x: float | None) -> bool:
    return x is not None and not math.isnan(x)


def _violations(ch: ModelScores, champ: ModelScores | None, p: GateSettings) -> list[str]:
    """Independent re-statement of the policy: names of the checks that must fail."""
    out = []
    if champ is None:
        if not _good(ch.golden_map) or ch.golden_map < p.bootstrap_floor:
            out.append("bootstrap_floor")
        return out
    need = p.min_delta
    if (p.drift_golden_tol > 0 and _good(ch.drifted_ap) and _good(champ.drifted_ap)
            and ch.drifted_ap - champ.drifted_ap >= p.drift_min_gain):
        need = min(need, -p.drift_golden_tol)  # a drift round's challenger that mends its cameras
    if not (_good(ch.golden_map) and _good(champ.golden_map)) or ch.golden_map - champ.golden_map < need:
        out.append("golden_map_delta")
    for c in CLASSES:
        a, b = ch.class_ap[c], champ.class_ap[c]
        if _good(a) and _good(b) and b - a > p.class_tol:
            out.append(f"class_ap[{c}]")
    if _good(ch.small_ap) and _good(champ.small_ap) and champ.small_ap - ch.small_ap > p.small_tol:
        out.append("small_ap")
    if _good(ch.crowded_ap) and _good(champ.crowded_ap) and champ.crowded_ap - ch.crowded_ap > p.crowded_tol:
        out.append("crowded_ap")
    if ch.latency_ms is not None and champ.latency_ms is not None and ch.latency_ms / champ.latency_ms > p.latency_ratio_max:
        out.append("latency_ratio")
    return out


@settings(max_examples=400, deadline=None)
@given(ch=model_scores(), champ=st.one_of(st.none(), model_scores()), p=policies)
def test_no_violation_ever_promotes_and_every_reason_is_reported(
    ch: ModelScores, champ: ModelScores | None, p: GateSettings
) -> None:
    d = decide(ch, champ, p)
    expected = _violations(ch, champ, p)
    failed = sorted(c.name for c in d.checks if c.status == "fail")
    assert failed == sorted(expected)
    assert len(d.reasons) == len(expected)
    if expected:
        assert not d.passed and not d.promote
    else:
        assert d.passed
        assert d.promote == p.auto_promote


@settings(max_examples=200, deadline=None)
@given(ch=model_scores(golden=sure), champ=model_scores(golden=sure), p=policies)
def test_insufficient_data_gates_nothing(ch: ModelScores, champ: ModelScores, p: GateSettings) -> None:
    """Blanking a class or the small bucket (insufficient data) can only remove failures, never add them."""
    d_full = decide(ch, champ, p)
    # (the drifted slice stays: without it a drift round's allowance is not granted, by design)
    blank = ModelScores(ch.golden_map, {c: None for c in CLASSES}, None, ch.latency_ms, None, ch.drifted_ap)
    d_blank = decide(blank, champ, p)
    full_fail = {c.name for c in d_full.checks if c.status == "fail"}
    blank_fail = {c.name for c in d_blank.checks if c.status == "fail"}
    assert blank_fail <= full_fail
    assert all(c.status == "skipped" for c in d_blank.checks
               if c.name.startswith(("class_ap", "small_ap", "crowded_ap")))


def test_examples_and_report() -> None:
    p = GateSettings(min_delta=0.01, class_tol=0.05, small_tol=0.05, latency_ratio_max=1.5, bootstrap_floor=0.01)
    champ = ModelScores(0.40, {"disc": 0.5, "square": 0.4, "triangle": None}, 0.2, 10.0)
    better = ModelScores(0.45, {"disc": 0.52, "square": 0.38, "triangle": 0.9}, 0.19, 11.0)
    d = decide(better, champ, p)
    assert d.passed and d.promote and d.outcome == "passed"
    worse_class = ModelScores(0.45, {"disc": 0.40, "square": 0.40, "triangle": 0.1}, 0.2, 10.0)
    d = decide(worse_class, champ, p)
    assert not d.passed and d.outcome == "rejected"
    assert len(d.reasons) == 1 and "disc" in d.reasons[0]
    slow = ModelScores(0.45, champ.class_ap, 0.2, 16.0)
    d = decide(slow, champ, p)
    assert [c.name for c in d.checks if c.status == "fail"] == ["latency_ratio"]
    md = d.to_markdown()
    assert "latency_ratio" in md and "fail" in md
    # bootstrap: a weak first model passes the floor, a dead one does not
    assert decide(ModelScores(0.02), None, p).passed
    assert not decide(ModelScores(0.0), None, p).passed
    assert not decide(ModelScores(None), None, p).passed
    # a passing challenger waits for a human when auto_promote is off
    d = decide(better, champ, GateSettings(min_delta=0.01, auto_promote=False))
    assert d.passed and not d.promote and d.outcome == "passed-awaiting-human"
    assert isinstance(Decision(**{**d.__dict__}).to_dict()["checks"], list)


def test_a_crowded_slice_regression_blocks_promotion() -> None:
    """Soft-NMS or a new model may help the golden mAP yet lose neighbours in crowds: the crowded slice gates."""
    p = GateSettings(min_delta=0.0, crowded_tol=0.02)
    champ = ModelScores(0.40, {}, None, None, crowded_ap=0.30)
    ok = decide(ModelScores(0.42, {}, None, None, crowded_ap=0.29), champ, p)
    assert ok.passed and [c.status for c in ok.checks if c.name == "crowded_ap"] == ["pass"]
    bad = decide(ModelScores(0.42, {}, None, None, crowded_ap=0.25), champ, p)
    assert not bad.passed and any("crowded-slice mAP50-95 0.2500 vs champion 0.3000" in r for r in bad.reasons)
    thin = decide(ModelScores(0.42, {}, None, None, crowded_ap=None), champ, p)  # too few crowded frames
    assert thin.passed and [c.status for c in thin.checks if c.name == "crowded_ap"] == ["skipped"]


def test_gate_scores_read_the_crowded_slice() -> None:
    from tasks.evaluation import EvalReport, Metric, SliceMetrics, gate_scores

    def sm(name: str, m: float, sufficient: bool = True) -> SliceMetrics:
        return SliceMetrics(name=name, n_images=10, overall=Metric(n_instances=60, sufficient=sufficient, map=m))

    rep = EvalReport("x", {"golden": sm("golden", 0.5), "crowded": sm("crowded", 0.3)})
    assert gate_scores(rep).crowded_ap == 0.3 and gate_scores(rep).golden_map == 0.5
    rep.slices["crowded"] = sm("crowded", 0.3, sufficient=False)
    assert gate_scores(rep).crowded_ap is None
