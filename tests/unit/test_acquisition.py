"""Value per expected second, the regime rule, typicality and the rare-class search (pure)."""

from __future__ import annotations

import numpy as np
import pytest

from detloop.contracts import FrameRef, ScoredFrame
from detloop.datasets import DatasetEntry
from detloop.detections import Detections
from detloop.errors import ConfigError
from detloop.settings import (
    LabellingCostSettings,
    RareSearchSettings,
    RegimeSettings,
    SelectionSettings,
    load_settings,
)
from tasks.acquisition import (
    blend,
    exemplar_embeddings,
    exemplar_entries,
    never_detected,
    per_second,
    percentile_rank,
    random_representative,
    rare_candidates,
    rare_search_targets,
    regime_weight,
    seconds_capped,
    typicality,
)
from tasks.selection import missing_classes, select

C = 3


def test_per_second_prefers_the_cheaper_frame_of_equal_value() -> None:
    v = per_second(np.array([2.0, 2.0, 1.0]), np.array([10.0, 40.0, 10.0]), 1.0)
    assert v[0] > v[1] and v[0] > v[2]
    assert per_second(np.array([2.0, 2.0]), np.array([10.0, 40.0]), 0.0).tolist() == [2.0, 2.0]


@pytest.mark.parametrize(("quality", "w"), [(0.05, 0.0), (0.3, 0.0), (0.45, 0.5), (0.6, 1.0), (0.9, 1.0)])
def test_regime_weight_ramps_linearly_between_weak_and_good(quality: float, w: float) -> None:
    r = regime_weight(quality, RegimeSettings(enabled=True, weak_below=0.3, good_above=0.6))
    assert r.weight == pytest.approx(w)
    assert "0.3" in r.rule and "0.6" in r.rule


def test_regime_unknown_and_disabled() -> None:
    assert regime_weight(None, RegimeSettings(enabled=True, unknown_weight=0.25)).weight == 0.25
    assert regime_weight(0.0, RegimeSettings(enabled=False)).weight == 1.0


def test_regime_settings_refuse_an_empty_ramp(tmp_path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("classes: [a]\nselection: {regime: {weak_below: 0.6, good_above: 0.5}}\n")
    with pytest.raises(ConfigError, match="good_above"):
        load_settings(cfg)


def test_percentile_rank_and_blend() -> None:
    assert percentile_rank(np.array([3.0, 1.0, 2.0])).tolist() == [1.0, 0.0, 0.5]
    assert percentile_rank(np.array([1.0, 1.0, 2.0])).tolist() == [0.25, 0.25, 1.0]
    v, t = np.array([1.0, 0.0, 0.5]), np.array([0.0, 1.0, 0.5])
    assert blend(v, t, 1.0).tolist() == v.tolist()
    assert np.argmax(blend(v, t, 0.0)) == 1
    assert blend(v, None, 0.0).tolist() == v.tolist()


def test_typicality_ranks_a_cluster_above_an_outlier() -> None:
    rng = np.random.default_rng(0)
    cluster = np.array([1.0, 0, 0, 0]) + 0.05 * rng.standard_normal((50, 4))
    outlier = np.array([[0.0, 0, 0, 1.0]])
    t = typicality(np.vstack([cluster, outlier]), k=5, reference=20, seed=0)
    assert t.shape == (51,)
    assert t[-1] < t[:-1].min()


def test_never_detected_needs_labelled_examples() -> None:
    assert never_detected(np.array([0, 0, 2]), [5, 3, 1], 3) == [1]
    assert never_detected(np.array([0]), [5, 0, 1], 3) == [2]
    assert never_detected(np.array([0]), None, 3) == []


def test_rare_candidates_pick_frames_nearest_to_the_exemplars() -> None:
    emb = np.eye(6, 4)[[0, 1, 2, 3, 0, 1]].astype(np.float32)
    emb[4] += 0.1  # a near copy of frame 0
    ex = {1: np.array([[1.0, 0, 0, 0]], np.float32)}
    eligible = np.ones(6, bool)
    eligible[0] = False  # e.g. in the control arm
    found = rare_candidates(emb, ex, [1], eligible, 3, RareSearchSettings(min_similarity=0.9), ["a", "b", "c"])
    assert found.picks == [4]
    assert found.report["classes"]["b"] == {"exemplars": 1, "candidates": 1, "picked": 1,
                                             "best_similarity": pytest.approx(1.1 / np.sqrt(1.24), abs=1e-3)}
    none = rare_candidates(None, ex, [1], eligible, 3, RareSearchSettings(), None)
    assert none.picks == [] and none.report["notes"]


# ---- through select() ----------------------------------------------------------------------------------------
def scored(i: int, confs: list[float], cls: list[int], emb: np.ndarray, second: float = 0.01) -> ScoredFrame:
    n = len(confs)
    s = np.full((n, C), 0.01, np.float32)
    s[:, (np.asarray(cls, np.int64) + 1) % C] = second
    s[np.arange(n), cls] = confs
    xyxy = np.array([[12 * j, 0, 12 * j + 10, 10] for j in range(n)], np.float32).reshape(-1, 4)
    det = Detections(xyxy, np.asarray(confs, np.float32), np.asarray(cls, np.int64), class_scores=s)
    return ScoredFrame(FrameRef("prod", f"f/{i:04d}.jpg", f"e{i}", "c0", "2026-01-01"), 64, 48, det, emb)


def sel(**kw: object) -> SelectionSettings:
    base = {"budget": 1, "strategy": "entropy", "aggregation": "sum", "diversity": "none", "control_share": 0.0,
            "control_min": 0, "class_balance": False}
    base.update(kw)
    return SelectionSettings(**base)


def test_sum_prefers_a_crowded_frame_but_value_per_second_does_not() -> None:
    e = np.ones(4, np.float32)
    crowded = scored(0, [0.97] * 12, [0] * 12, e, second=0.05)  # twelve nearly sure boxes: much summed entropy
    single = scored(1, [0.5], [0], e, second=0.45)  # one box torn between two classes
    plain = select([crowded, single], None, sel())
    assert plain.selected[0].frame.key == crowded.frame.key
    cost = LabellingCostSettings()
    paid = select([crowded, single], None, sel(cost={"per_second": True}), cost=cost)
    assert paid.selected[0].frame.key == single.frame.key
    assert paid.report["cost"]["per_second"] is True
    assert len(paid.report["pool"]["expected_seconds"]) == 2
    off = select([crowded, single], None, sel(cost={"per_second": False, "seconds_cap": None}), cost=cost)
    assert off.selected[0].frame.key == crowded.frame.key


def test_seconds_cap_leaves_a_cheap_top_alone() -> None:
    score = np.array([4.0, 3.0, 2.0, 1.0])
    out, cap = seconds_capped(score, np.array([10.0, 10.0, 30.0, 30.0]), 2, 1.0)
    assert out.tolist() == score.tolist() and cap.penalty == 0.0
    assert cap.before == pytest.approx(0.5)


def test_seconds_cap_gives_up_the_frame_that_trades_least_rank_for_most_seconds() -> None:
    # the top two by score cost 1.5x the pool mean; frame 1 is nearly as good as frame 2 but far dearer
    score = np.array([5.0, 4.0, 3.9, 1.0, 0.5])
    seconds = np.array([30.0, 60.0, 20.0, 20.0, 20.0])  # mean 30
    out, cap = seconds_capped(score, seconds, 2, 1.0)
    top = np.argsort(-out)[:2]
    assert sorted(top.tolist()) == [0, 2]
    assert cap.before == pytest.approx(1.5) and cap.after <= 1.0 and cap.penalty > 0
    # a looser cap keeps the original top
    loose, c2 = seconds_capped(score, seconds, 2, 1.5)
    assert sorted(np.argsort(-loose)[:2].tolist()) == [0, 1] and c2.penalty == 0.0


def test_seconds_cap_smaller_than_the_cheapest_frames_returns_cheapest_first() -> None:
    seconds = np.array([10.0, 20.0, 30.0, 40.0])
    out, cap = seconds_capped(np.array([1.0, 2.0, 3.0, 4.0]), seconds, 2, 0.5)
    assert sorted(np.argsort(-out)[:2].tolist()) == [0, 1]
    assert cap.after == pytest.approx(0.6) and cap.after > cap.cap
    assert cap.to_dict()["met"] is False and cap.to_dict()["penalty"] is None  # JSON-safe, says it was not met
    with pytest.raises(ValueError, match="shape"):
        seconds_capped(np.ones(3), np.ones(2), 1, 1.0)


def test_seconds_cap_through_select_reports_what_the_picks_cost() -> None:
    e = np.ones(4, np.float32)
    frames = [scored(0, [0.6] * 8, [0] * 8, e, second=0.35),  # crowded and uncertain: dearest, top by sum
              scored(1, [0.55], [0], e, second=0.4), scored(2, [0.95], [0], e), scored(3, [0.97], [0], e)]
    cost = LabellingCostSettings()
    plain = select(frames, None, sel(cost={"seconds_cap": None}), cost=cost)
    assert plain.selected[0].frame.key == frames[0].frame.key
    capped = select(frames, None, sel(), cost=cost)  # the default: capped at 1.0
    assert capped.report["cost"]["seconds_cap"]["seconds_cap"] == 1.0
    assert capped.selected[0].frame.key == frames[1].frame.key
    c = capped.report["cost"]
    assert c["seconds_cap"]["penalty"] > 0
    assert c["selected_mean_expected_seconds"] <= c["pool_mean_expected_seconds"]
    assert any("seconds cap 1x" in n for n in capped.notes)
    no_prices = select(frames, None, sel(cost={"seconds_cap": 1.0}))
    assert any("no labelling prices" in n for n in no_prices.notes)
    kc = select(frames, None, sel(cost={"seconds_cap": 1.0}, diversity="kcenter"), cost=cost)
    assert any("k-center over the whole pool" in n for n in kc.notes)
    filt = select(frames, None, sel(cost={"seconds_cap": 1.0}, diversity="filter_kcenter", filter_factor=2.0), cost=cost)
    assert filt.report["cost"]["seconds_cap"]["top_k"] == 2
    weak = select(frames, None, sel(cost={"seconds_cap": 1.0}, regime={"enabled": True, "representative": "random"}),
                  cost=cost, champion_quality=0.05)
    assert any("not applied to a uniform random sample" in n for n in weak.notes)
    assert "seconds_cap" not in weak.report["cost"]


def test_seconds_cap_setting_is_validated(tmp_path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("classes: [a]\nselection: {cost: {seconds_cap: 0.1}}\n")
    with pytest.raises(ConfigError, match="seconds_cap"):
        load_settings(cfg)


def test_weak_champion_ranks_by_typicality_and_says_so() -> None:
    rng = np.random.default_rng(1)
    frames = [scored(i, [0.9], [0], (np.array([1.0, 0, 0, 0]) + 0.05 * rng.standard_normal(4)).astype(np.float32))
              for i in range(20)]
    frames.append(scored(20, [0.5], [0], np.array([0, 0, 0, 1.0], np.float32)))  # most uncertain, an outlier
    typ = {"enabled": True, "representative": "typicality"}
    good = select(frames, None, sel(regime=typ), champion_quality=0.8)
    assert good.selected[0].frame.key == frames[20].frame.key
    weak = select(frames, None, sel(regime=typ), champion_quality=0.1)
    assert weak.selected[0].frame.key != frames[20].frame.key
    assert weak.report["regime"]["uncertainty_weight"] == 0.0
    assert weak.report["regime"]["champion_map50"] == 0.1
    assert any("regime" in n for n in weak.notes)


def test_random_representative_is_seeded_per_round() -> None:
    a, b = random_representative(50, 0, 1), random_representative(50, 0, 1)
    assert a.shape == (50,) and ((a >= 0) & (a < 1)).all() and (a == b).all()
    assert not (a == random_representative(50, 0, 2)).all() and not (a == random_representative(50, 1, 1)).all()


def test_weak_champion_with_random_representative_draws_a_uniform_sample() -> None:
    """``regime.representative: random``: with weight 0 the selected arm is a seeded random sample, whatever the
    scores and the configured diversity step; with a good champion the rule changes nothing."""
    rng = np.random.default_rng(3)
    embs = [rng.standard_normal(4).astype(np.float32) for _ in range(40)]
    calm = [scored(i, [0.95], [0], embs[i]) for i in range(40)]
    torn = [scored(i, [0.4 + 0.01 * i], [0], embs[i], second=0.35) for i in range(40)]  # other uncertainties
    cfg = {"budget": 8, "diversity": "filter_kcenter", "regime": {"enabled": True}}  # representative: the default
    assert SelectionSettings().regime.representative == "random"

    def keys(frames: list[ScoredFrame], quality: float, round_seed: int = 0, **kw: object) -> list[str]:
        res = select(frames, None, sel(**{**cfg, **kw}), round_seed=round_seed, champion_quality=quality)
        return [f.frame.key for f in res.selected if f.arm == "selected"]

    weak = keys(calm, 0.1)
    assert len(weak) == 8 and weak == keys(torn, 0.1)  # the scores do not matter
    assert sorted(weak) == sorted(keys(calm, 0.1, diversity="none"))  # nor does the diversity step
    want = np.argsort(-random_representative(40, 0, 0), kind="stable")[:8]
    assert sorted(weak) == sorted(calm[i].frame.key for i in want)
    assert sorted(keys(calm, 0.1, round_seed=1)) != sorted(weak)  # another round, another draw
    res = select(torn, None, sel(**cfg), champion_quality=0.1)
    assert res.report["regime"]["random_sample"] is True and res.report["regime"]["uncertainty_weight"] == 0.0
    assert all(f.reason.startswith("uniform random sample") for f in res.selected)
    assert any("seeded random draw" in n for n in res.notes)
    good = select(torn, None, sel(**cfg), champion_quality=0.9)  # w = 1: uncertainty (and diversity) as before
    plain = select(torn, None, sel(**{**cfg, "regime": {"enabled": False}}), champion_quality=0.9)
    assert [f.frame.key for f in good.selected] == [f.frame.key for f in plain.selected]
    assert good.report["regime"]["random_sample"] is False


def test_regime_representative_is_validated(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "c.yaml"
    cfg.write_text("classes: [a]\nselection: {regime: {representative: coreset}}\n")
    with pytest.raises(ConfigError, match="representative"):
        load_settings(cfg)


def test_rare_class_search_reserves_frames_and_reports_them() -> None:
    far = np.array([1.0, 0, 0, 0], np.float32)
    near_rare = np.array([0, 0, 1.0, 0.05], np.float32)
    frames = [scored(i, [0.5], [0], far) for i in range(8)] + [scored(8, [0.95], [1], near_rare)]
    ex = {2: np.array([[0, 0, 1.0, 0]], np.float32)}
    res = select(frames, [10, 10, 3], sel(budget=4, rare_search={"share": 0.25}), class_names=["a", "b", "r"],
                 num_classes=C, class_exemplars=ex)
    keys = [f.frame.key for f in res.selected]
    assert keys[0] == frames[8].frame.key  # reserved first, although the least uncertain
    assert "rare-class search" in res.selected[0].reason
    assert res.report["rare_search"]["picked"] == 1
    assert res.report["rare_search"]["classes"]["r"]["candidates"] == 1
    off = select(frames, [10, 10, 3], sel(budget=4, rare_search={"enabled": False}), class_names=["a", "b", "r"],
                 num_classes=C, class_exemplars=ex)
    assert frames[8].frame.key not in [f.frame.key for f in off.selected]


def test_the_rare_class_search_says_what_it_found_in_the_notes() -> None:
    far = np.array([1.0, 0, 0, 0], np.float32)
    near_rare = np.array([0, 0, 1.0, 0.05], np.float32)
    frames = [scored(i, [0.5], [0], far) for i in range(8)] + [scored(8, [0.95], [1], near_rare)]
    res = select(frames, [10, 10, 3], sel(budget=4, rare_search={"share": 0.25}), class_names=["a", "b", "r"],
                 num_classes=C, class_exemplars={2: np.array([[0, 0, 1.0, 0]], np.float32)})
    note = [n for n in res.notes if n.startswith("rare-class search")]
    assert note == ["rare-class search (classes the champion never detects): r: 1 labelled examples, "
                    "1 candidates, 1 picked"]
    plain = select(frames, [10, 10, 0], sel(budget=4), class_names=["a", "b", "r"], num_classes=C)
    assert not any(n.startswith("rare-class search") for n in plain.notes)  # nothing missing: no search


def test_missing_classes_are_labelled_classes_never_detected_above_the_threshold() -> None:
    emb = np.ones(4, np.float32)
    frames = [scored(0, [0.9], [0], emb), scored(1, [0.1], [2], emb)]  # class 2 only under conf_threshold
    assert missing_classes(frames, [5, 5, 5], sel(), C) == [1, 2]
    assert missing_classes(frames, [5, 0, 5], sel(), C) == [2]  # no labelled box of class 1: nothing to look for
    assert missing_classes(frames, None, sel(), C) == []


def test_the_rare_class_search_stands_down_when_missing_a_class_singles_nothing_out() -> None:
    seen_a = np.array([0, 0])
    assert rare_search_targets(seen_a, [5, 5, 5], C, 0.7, 0.3).classes == [1, 2]  # works, misses two classes
    assert rare_search_targets(seen_a, [5, 5, 5], C, None, 0.3).classes == [1, 2]  # quality unknown: searches
    weak = rare_search_targets(seen_a, [5, 5, 5], C, 0.3, 0.3)
    assert weak.classes == [] and "weak (mAP50 0.300 <= 0.3)" in (weak.stood_down or "")
    blind = rare_search_targets(np.zeros(0, np.int64), [5, 5, 0], C, 0.7, 0.3)
    assert blind.classes == [] and "none of the 2 labelled classes" in (blind.stood_down or "")
    assert rare_search_targets(seen_a, [5, 0, 0], C, 0.1, 0.3) == rare_search_targets(seen_a, [5, 0, 0], C, None, 0)
    assert rare_search_targets(seen_a, [5, 0, 0], C, 0.1, 0.3).stood_down is None  # nothing missing: no remark


def test_select_and_missing_classes_stand_down_alike_for_a_weak_champion() -> None:
    far = np.array([1.0, 0, 0, 0], np.float32)
    near_rare = np.array([0, 0, 1.0, 0.05], np.float32)
    frames = [scored(i, [0.5], [0], far) for i in range(8)] + [scored(8, [0.95], [1], near_rare)]
    kw = dict(class_names=["a", "b", "r"], num_classes=C, class_exemplars={2: np.array([[0, 0, 1.0, 0]], np.float32)})
    good = select(frames, [10, 10, 3], sel(budget=4, rare_search={"share": 0.25}), champion_quality=0.7, **kw)
    weak = select(frames, [10, 10, 3], sel(budget=4, rare_search={"share": 0.25}), champion_quality=0.2, **kw)
    assert good.report["rare_search"]["picked"] == 1 and "stood_down" not in good.report["rare_search"]
    assert weak.report["rare_search"]["picked"] == 0 and "weak" in weak.report["rare_search"]["stood_down"]
    assert any(n.startswith("rare-class search stood down") for n in weak.notes)
    assert missing_classes(frames, [10, 10, 3], sel(), C, champion_quality=0.7) == [2]
    assert missing_classes(frames, [10, 10, 3], sel(), C, champion_quality=0.2) == []  # no exemplars scored


def _entry(sha: str, counts: tuple[int, ...], split: str = "train", synthetic: bool = False) -> DatasetEntry:
    return DatasetEntry(frame_sha=sha, label_sha="l" + sha, width=64, height=48, camera="cam0", date="2026-01-01",
                        hour=0, split=split, source="seed", class_counts=counts, synthetic=synthetic)


def test_exemplar_entries_take_real_non_golden_frames_of_each_class_seeded_and_capped() -> None:
    entries = ([_entry(f"a{i:02d}", (0, 0, 1)) for i in range(10)]
               + [_entry("g", (0, 0, 2), split="golden"), _entry("s", (0, 0, 1), synthetic=True),
                  _entry("c", (1, 0, 1), split="control"), _entry("a00", (0, 0, 1))])  # a00 listed twice
    got = exemplar_entries(entries, [2, 1], per_class=4, seed=3)
    shas = [e.frame_sha for e in got[2]]
    assert len(shas) == 4 == len(set(shas)) and not {"g", "s"} & set(shas)
    assert got[1] == []  # nothing holds class 1
    assert [e.frame_sha for e in exemplar_entries(list(reversed(entries)), [2], 4, seed=3)[2]] == shas  # order-free
    everything = exemplar_entries(entries, [2], per_class=100)[2]
    assert sorted(e.frame_sha for e in everything) == sorted({f"a{i:02d}" for i in range(10)} | {"c"})


def test_exemplar_embeddings_skip_frames_without_one() -> None:
    chosen = {2: [_entry("x", (0, 0, 1)), _entry("y", (0, 0, 1))], 1: [_entry("z", (0, 1, 0))]}
    out = exemplar_embeddings(chosen, {"x": np.ones(3, np.float32)})
    assert list(out) == [2] and out[2].shape == (1, 3)


def test_the_champions_golden_map50_tag_is_read_as_its_quality() -> None:
    from tasks.registry import _float_tag

    assert _float_tag({"detloop.golden_map50": "0.4123"}, "detloop.golden_map50") == pytest.approx(0.4123)
    assert _float_tag({}, "detloop.golden_map50") is None  # a version registered before the tag: unknown
    assert _float_tag({"detloop.golden_map50": "n/a"}, "detloop.golden_map50") is None


def test_typicality_is_the_same_computed_in_blocks() -> None:
    x = np.random.default_rng(3).standard_normal((50, 6)).astype(np.float32)
    np.testing.assert_allclose(typicality(x, 4, 20, seed=1, block=7), typicality(x, 4, 20, seed=1), rtol=1e-6)


def test_calibrated_expected_seconds_stop_favouring_the_uncertain_box_labellers_adjust() -> None:
    from detloop.label_cost import OutcomeTally, fit_outcome_rates

    e = np.ones(4, np.float32)
    # one torn box against two fairly sure ones: uncalibrated, the torn box looks cheap (likely a quick delete)
    frames = [scored(0, [0.55], [0], e, second=0.4), scored(1, [0.85] * 2, [0] * 2, e, second=0.1)]
    cost = LabellingCostSettings()
    ledger = OutcomeTally(frames=100)
    ledger.shown[5] = [0, 300, 0]  # ... but the labellers adjusted every mid-confidence box
    ledger.shown[8] = [300, 0, 0]
    rates = fit_outcome_rates(ledger, prior_boxes=20)
    plain = select(frames, None, sel(cost={"per_second": True}), cost=cost)
    cal = select(frames, None, sel(cost={"per_second": True}), cost=cost, outcome_rates=rates)
    assert plain.selected[0].frame.key == frames[0].frame.key
    assert cal.selected[0].frame.key == frames[1].frame.key
    assert cal.report["cost"]["calibration"]["boxes"] == 600 and cal.report["cost"]["per_second"] is True
    assert any("calibrated on 600 pre-annotated boxes" in n for n in cal.notes)
    assert "calibration" not in plain.report["cost"]
