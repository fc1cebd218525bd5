"""The soak's truth: which champion held each week, and each drift's recovery (pure parts)."""

from datetime import date, timedelta
from pathlib import Path

import pytest

from benchmarks.soak_truth import (
    champions_by_week,
    counterfactual_table,
    gate_check,
    gate_counterfactual,
    golden_delta,
    recoveries,
    recovery_table,
    week_end,
    week_of,
)

START = date(2026, 1, 5)


def test_week_of_and_week_end_agree() -> None:
    for w in (1, 2, 5):
        assert week_of(START, week_end(START, w)) == w
        assert week_of(START, week_end(START, w - 1) + timedelta(days=1)) == w  # the week's first day
    assert week_of(START, date(2026, 1, 19)) == 2


def test_champions_by_week_reads_the_next_rounds_model() -> None:
    ends = {1: "2026-01-12", 2: "2026-01-19", 3: "2026-01-26"}
    rounds = [
        {"as_of": "2026-01-07", "model_version": "1", "created_at": "t1"},
        {"as_of": "2026-01-13", "model_version": "1", "created_at": "t2"},  # first after week 1: v1 held
        {"as_of": "2026-01-19", "model_version": "4", "created_at": "t3"},  # promoted by the drift round of 01-13
        {"as_of": "2026-01-21", "model_version": "4", "created_at": "t4"},  # first after week 2
    ]
    assert champions_by_week(ends, rounds, current="9") == {1: "1", 2: "4", 3: "9"}


def test_recoveries_per_onset() -> None:
    truth = {1: {"cam3": {"map50": 0.70}}, 2: {"cam3": {"map50": 0.71}}, 3: {"cam3": {"map50": 0.45}},
             4: {"cam3": {"map50": 0.60}}, 5: {"cam3": {"map50": 0.70}}}
    onsets = [{"name": "repaint", "camera": "cam3", "onset": "2026-01-26"},  # week 3
              {"name": "new camera cam4", "camera": "cam4", "onset": "2026-01-26"}]
    r = recoveries(truth, onsets, START)
    assert r[0]["onset_week"] == 3 and r[0]["pre"] == 0.71 and r[0]["lowered"] is True
    assert r[0]["recovered_week"] == 5 and r[0]["weeks_to_recover"] == 2
    assert r[1]["lowered"] is None  # no week before a camera's first day
    table = recovery_table(r)
    assert "| repaint | cam3 | 2026-01-26 (3) | 0.710 | 0.450 | yes | 5 | 2 |" in table
    truth[5]["cam3"]["map50"] = 0.65
    assert "**not back** by week 5" in recovery_table(recoveries(truth, onsets, START))


def test_the_monitor_replayed_with_more_permutations_sees_a_box_level_drift() -> None:
    """Stored features of a champion (reference + days), a drift only box-level tests see (smaller boxes, more
    stars): with 199 permutations the rule is deaf to it, with the default 999 it opens an episode, and so it does
    with 199 whose small p-values are refined; the replay scores nothing."""
    import numpy as np

    from benchmarks.soak_truth import replay_monitor
    from detloop.settings import load_settings
    from tasks.drift import compare_day
    from tasks.drift_records import load_day_features, save_day, save_reference
    from tests.fakes import FakeStore
    from tests.unit.test_drift import synth

    s = load_settings(Path(__file__).resolve().parents[2] / "configs" / "test.yaml", env={},
                      overrides={"drift": {"min_frames": 20, "min_boxes": 20, "permutations": 199}})
    store = FakeStore()
    rng = np.random.default_rng(5)
    ref = synth(rng, "cam2", "ref", 280)
    save_reference(store, s, "4", {"days": ["ref"]}, ref)
    for i, day in enumerate(["2026-02-01", "2026-02-02", "2026-02-03", "2026-02-04"]):
        cur = synth(rng, "cam2", day, 40, area_scale=0.6 if i >= 1 else 1.0)
        if i >= 1:
            cur.box_class = np.where(rng.random(cur.n_boxes) < 0.3, 4, cur.box_class)
        save_day(store, s, "4", day, compare_day(ref, cur, s.drift, s.classes, day), cur)
    coarse = {"permutations_refine": None}
    few = replay_monitor(store, s, ["4"], None, log=lambda _m: None, drift=coarse)
    many = replay_monitor(store, s, ["4"], 999, log=lambda _m: None, drift=coarse)
    assert few["permutations"] == 199 and few["versions"]["4"]["episodes"] == []
    assert few["drift_settings"]["permutations_refine"] is None
    eps = many["versions"]["4"]["episodes"]
    assert [e["cameras"] for e in eps] == [["cam2"]] and eps[0]["opened_on"] == "2026-02-03"  # 2 days in a row
    assert many["versions"]["4"]["first_drifted_day"] == {"cam2": "2026-02-02"}
    assert many["versions"]["4"]["statuses"]["2026-02-01"] == {"cam2": "clean"}
    # 199 resamples with the small p-values refined (the default drift.permutations_refine) hear it as 999 do
    refined = replay_monitor(store, s, ["4"], None, log=lambda _m: None)
    assert refined["drift_settings"]["permutations_refine"] == 9999
    assert [(e["opened_on"], e["cameras"]) for e in refined["versions"]["4"]["episodes"]] == [("2026-02-03", ["cam2"])]
    assert replay_monitor(store, s, ["7"], 999, log=lambda _m: None)["versions"] == {}  # no reference: skipped
    # a champion that took over on 02-03 is judged from then on, as the live monitor does: the drifted days before
    # were another champion's traffic, so its one drifted day in a row opens nothing
    save_reference(store, s, "5", {"days": ["ref"], "anchor": "2026-02-03"}, ref)
    for day in ["2026-02-01", "2026-02-02", "2026-02-03"]:
        save_day(store, s, "5", day, {}, load_day_features(store, s, "4", day))
    late = replay_monitor(store, s, ["5"], 999, log=lambda _m: None, drift=coarse)["versions"]["5"]
    assert late["days"] == ["2026-02-03", "2026-02-03"] and late["anchor"] == "2026-02-03"
    assert list(late["statuses"]) == ["2026-02-03"] and late["episodes"] == []


def test_the_timeline_draws_with_and_without_the_truth(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from benchmarks.soak import plot_timeline

    rows = [{"week": 1, "golden_map": 0.43, "control_map": 0.54, "fault": "prefect@round"},
            {"week": 2, "golden_map": 0.43, "control_map": 0.44, "fault": "mlflow@drift"}]
    onsets = [{"name": "more-stars", "camera": c, "onset": "2026-01-19"} for c in ("cam0", "cam1", "cam2")]
    truth = {"frames_per_camera_week": 400, "weeks": {"1": {"champion": "1", "golden_map": 0.43,
                                                             "true": {"cam0": {"map50": 0.7}}},
                                                       "2": {"champion": "4", "golden_map": 0.46,
                                                             "true": {"cam0": {"map50": 0.6}}}}}
    for t in (None, truth):
        out = plot_timeline(rows, onsets, START, tmp_path / f"t{t is None}.png", t)
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_golden_delta_reads_the_gate_checks_tag() -> None:
    checks = '[["golden_map_delta", "fail", -0.0126], ["class_ap[disc]", "pass", 0.04]]'
    assert golden_delta(checks) == -0.0126
    assert golden_delta('[["bootstrap_floor", "pass", 0.43]]') is None
    assert golden_delta(None) is None
    assert golden_delta("not json") is None
    drift = '[["drifted_gain", "pass", 0.031], ["golden_map_delta", "pass", -0.0019]]'
    assert gate_check(drift, "drifted_gain") == ("pass", 0.031) and gate_check(checks, "drifted_gain") is None


def test_gate_counterfactual_finds_rejected_challengers_better_on_a_drifted_camera() -> None:
    champ = {4: {"cam3": {"map50": 0.42}, "cam2": {"map50": 0.72}}, 6: {"cam3": {"map50": 0.50}}}
    challengers = [
        {"version": "8", "week": 4, "outcome": "rejected", "golden_delta": -0.013,
         "true": {"cam3": {"map50": 0.43}, "cam2": {"map50": 0.72}}},  # +0.01: not "better" at 0.02
        {"version": "9", "week": 4, "outcome": "rejected", "golden_delta": -0.011,
         "true": {"cam3": {"map50": 0.45}}},  # +0.03: would have helped cam3
        {"version": "10", "week": 6, "outcome": "passed", "golden_delta": 0.026,
         "true": {"cam3": {"map50": 0.55}}},  # better, but promoted: not a cost of the gate
        {"version": "11", "week": 7, "outcome": "rejected", "golden_delta": -0.009,
         "true": {"cam3": {"map50": 0.53}}},  # no champion truth that week: no delta
    ]
    cf = gate_counterfactual(challengers, champ, {"cam2": 4, "cam3": 4}, better_by=0.02,
                             pre={"cam3": 0.67, "cam2": 0.72})
    assert cf["summary"]["rejected_but_better"] == [("9", "cam3", 0.03)]
    best = cf["summary"]["best_challenger"]["cam3"]
    assert (best["value"], best["version"], best["week"], best["pre"]) == (0.55, "10", 6, 0.67)
    assert best["gap_to_pre"] == pytest.approx(-0.12)
    assert cf["summary"]["best_challenger"]["cam2"]["version"] == "8"
    assert [r["delta"] is None for r in cf["rows"] if r["version"] == "11"] == [True]
    assert len(cf["rows"]) == 5  # v9, v10 and v11 have no cam2 truth
    # a challenger proposed before a camera's drift began does not count for that camera
    late = gate_counterfactual(challengers, champ, {"cam3": 6})
    assert {r["version"] for r in late["rows"]} == {"10", "11"} and late["summary"]["rejected_but_better"] == []
    table = counterfactual_table(cf)
    assert "| v9 | 4 | cam3 | rejected | -0.011 | - | 0.450 | 0.420 | +0.030 |" in table
    allowed = {**challengers[0], "outcome": "passed", "drifted_gain": 0.031, "allowance": True}
    assert "| v8 | 4 | cam3 | passed | -0.013 | +0.031 (allowance granted) | 0.430 | 0.420 | +0.010 |" in counterfactual_table(
        gate_counterfactual([allowed], champ, {"cam3": 4}))
    assert gate_counterfactual([], champ, {})["rows"] == []
