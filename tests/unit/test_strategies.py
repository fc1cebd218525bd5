"""Strategies on hand-made arrays where the right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from detloop.detections import Detections
from detloop.errors import DataError
from tasks.strategies import (
    STRATEGIES,
    BoxPool,
    StrategyParams,
    aggregate,
    class_weights,
    frame_class_weight,
    get_strategy,
    kcenter_greedy,
    plan_arms,
    resolve_strategy,
)

P = StrategyParams(ambiguous_band=(0.25, 0.6))


def pool_of(vectors: list[list[float]], frames: list[int] | None = None, n_frames: int | None = None,
            boxes: list[list[float]] | None = None) -> BoxPool:
    s = np.asarray(vectors, np.float32)
    fi = np.asarray(frames if frames is not None else range(len(s)), np.int64)
    xyxy = np.asarray(boxes, np.float32) if boxes is not None else np.tile([0, 0, 10, 10], (len(s), 1)).astype(np.float32)
    return BoxPool(s, s.max(axis=1), xyxy, fi, n_frames if n_frames is not None else int(fi.max()) + 1)


CONFUSED = [0.5, 0.5, 0.01, 0.01]  # two equally likely classes
CONFIDENT = [0.95, 0.02, 0.01, 0.01]


@pytest.mark.parametrize("name", ["least_confidence", "margin", "entropy", "binary_entropy"])
def test_two_equally_likely_classes_outrank_a_confident_box(name: str) -> None:
    s = get_strategy(name).fn(pool_of([CONFIDENT, CONFUSED]), P)
    assert s[1] > s[0]


def test_entropy_extremes_are_zero_and_one() -> None:
    s = STRATEGIES["entropy"].fn(pool_of([[1, 0, 0, 0], [0.3, 0.3, 0.3, 0.3]]), P)
    np.testing.assert_allclose(s, [0.0, 1.0], atol=1e-5)


def test_margin_is_one_for_a_tie_and_small_for_a_clear_winner() -> None:
    s = STRATEGIES["margin"].fn(pool_of([[0.4, 0.4, 0.0], [0.9, 0.1, 0.0]]), P)
    np.testing.assert_allclose(s, [1.0, 0.2], atol=1e-6)


def test_binary_entropy_counts_objectness_doubt() -> None:
    # entropy of the renormalised vector cannot tell these apart; per-class binary entropy can
    a, b = [0.9, 0.0, 0.0], [0.5, 0.0, 0.0]
    ent = STRATEGIES["entropy"].fn(pool_of([a, b]), P)
    bin_ = STRATEGIES["binary_entropy"].fn(pool_of([a, b]), P)
    assert ent[0] == pytest.approx(ent[1], abs=1e-5)
    assert bin_[1] == pytest.approx(1.0, abs=1e-3) and bin_[1] > bin_[0]


def test_ambiguous_band_counts_boxes_inside_band() -> None:
    pool = pool_of([[0.1, 0], [0.3, 0], [0.59, 0], [0.6, 0], [0.9, 0]], frames=[0, 0, 0, 0, 1])
    box = STRATEGIES["ambiguous"].fn(pool, P)
    np.testing.assert_array_equal(box, [0, 1, 1, 0, 0])
    np.testing.assert_array_equal(aggregate(box, pool.frame_index, 2, "sum"), [2, 0])


def test_tta_consistency_rewards_agreement_and_needs_tta() -> None:
    boxes = [[0, 0, 10, 10], [50, 50, 60, 60]]
    pool = pool_of([[0.9, 0.0], [0.9, 0.0]], frames=[0, 1], boxes=boxes)
    with pytest.raises(DataError, match="tta"):
        STRATEGIES["tta"].fn(pool, P)
    same = Detections(np.array([[0, 0, 10, 10]]), np.array([0.9]), np.array([0]))
    shifted = Detections(np.array([[52, 50, 62, 60]]), np.array([0.9]), np.array([0]))
    pool.tta = [same, shifted]
    s = STRATEGIES["tta"].fn(pool, P)
    assert s[0] == pytest.approx(0.0, abs=1e-6)
    assert s[1] == pytest.approx(1 - 80 / 120, abs=1e-4)  # IoU of two 10x10 boxes shifted by 2 px = 80/120
    pool.tta = [same, Detections.empty()]
    assert STRATEGIES["tta"].fn(pool, P)[1] == 1.0  # nothing on the flipped frame: maximal doubt


def test_committee_uses_class_vectors_and_falls_back_without_previous_champion() -> None:
    pool = pool_of([[0.9, 0.0], [0.9, 0.0]], frames=[0, 1], boxes=[[0, 0, 10, 10], [0, 0, 10, 10]])
    strat, note = resolve_strategy("committee", pool)
    assert strat.name == "entropy" and note and "previous champion" in note
    agree = Detections(np.array([[0, 0, 10, 10]]), np.array([0.9]), np.array([0]), class_scores=np.array([[0.9, 0.0]]))
    differ = Detections(np.array([[0, 0, 10, 10]]), np.array([0.5]), np.array([0]), class_scores=np.array([[0.5, 0.5]]))
    pool.committee = [agree, differ]
    strat, note = resolve_strategy("committee", pool)
    assert strat.name == "committee" and note is None
    s = strat.fn(pool, P)
    assert s[0] == pytest.approx(0.0, abs=1e-6) and s[1] == pytest.approx(0.5, abs=1e-5)


def test_unknown_strategy_lists_valid_names() -> None:
    with pytest.raises(DataError) as ei:
        get_strategy("bogus")
    for name in STRATEGIES:
        assert name in str(ei.value)


def test_aggregations_on_known_values() -> None:
    s = np.array([0.1, 0.5, 0.3, 0.9, 0.2])
    fi = np.array([0, 0, 0, 2, 2])
    np.testing.assert_allclose(aggregate(s, fi, 4, "max"), [0.5, 0, 0.9, 0])
    np.testing.assert_allclose(aggregate(s, fi, 4, "sum"), [0.9, 0, 1.1, 0])
    np.testing.assert_allclose(aggregate(s, fi, 4, "mean"), [0.3, 0, 0.55, 0])
    np.testing.assert_allclose(aggregate(s, fi, 4, "topk", k=2), [0.4, 0, 0.55, 0])
    with pytest.raises(DataError, match="valid"):
        aggregate(s, fi, 4, "median")


def test_topk_matches_a_loop_on_random_input() -> None:
    rng = np.random.default_rng(3)
    fi = np.sort(rng.integers(0, 50, 400))
    s = rng.random(400)
    got = aggregate(s, fi, 50, "topk", k=3)
    want = [np.sort(s[fi == f])[::-1][:3].mean() if (fi == f).any() else 0.0 for f in range(50)]
    np.testing.assert_allclose(got, want)


def test_class_weights_favour_rare_classes() -> None:
    w = class_weights([1000, 10, 0], 3, power=0.5)
    assert w[0] == pytest.approx(1.0) and w[2] > w[1] > w[0]
    np.testing.assert_array_equal(class_weights(None, 3), [1, 1, 1])
    with pytest.raises(DataError, match="expected 3"):
        class_weights([1, 2], 3)
    pool = pool_of([[0.9, 0, 0], [0, 0, 0.9]], frames=[0, 1], n_frames=3)
    np.testing.assert_allclose(frame_class_weight(pool, w), [1.0, w[2], 1.0])


def test_kcenter_picks_spread_out_points() -> None:
    # four tight clusters of 25 points around the corners of a square: 4 centres = one per cluster
    rng = np.random.default_rng(0)
    corners = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], np.float32)
    x = np.concatenate([c + 0.1 * rng.standard_normal((25, 2)) for c in corners]).astype(np.float32)
    picks = kcenter_greedy(x, 4, first=0)
    assert len(set(picks.tolist())) == 4
    assert sorted({int(i) // 25 for i in picks}) == [0, 1, 2, 3]


def test_kcenter_beats_random_on_coverage_and_respects_already() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2000, 2)).astype(np.float32)

    def radius(idx: np.ndarray) -> float:
        d = ((x[:, None, :] - x[idx][None]) ** 2).sum(-1).min(1)
        return float(d.max())

    k = kcenter_greedy(x, 20)
    assert radius(k) < min(radius(rng.choice(2000, 20, replace=False)) for _ in range(10))
    more = kcenter_greedy(x, 5, already=k.tolist())
    assert not set(more.tolist()) & set(k.tolist()) and len(more) == 5


def test_plan_arms_shares_and_caps() -> None:
    p = plan_arms(budget=200, pool=10_000, control_share=0.1, control_min=20)
    assert (p.n_control, p.n_selected) == (20, 180)
    p = plan_arms(budget=1000, pool=10_000, control_share=0.1, control_min=20)
    assert (p.n_control, p.n_selected) == (100, 900)
    p = plan_arms(budget=100, pool=30, control_share=0.1, control_min=20)
    assert p.n_control + p.n_selected == 30 and any("larger than the pool" in n for n in p.notes)
    p = plan_arms(budget=10, pool=100, control_share=0.1, control_min=20)
    assert p.n_control == 5 and any("control_pool_rounds" in n for n in p.notes)
    assert plan_arms(50, 100, 0.0, 20).n_control == 0


def test_plan_arms_pools_control_min_over_rounds() -> None:
    # budget 50, share 10 %: 20 per round would be 40 % of the budget; pooled over 4 rounds, 5 per round
    assert plan_arms(50, 1000, 0.1, 20).n_control == 20
    p = plan_arms(50, 1000, 0.1, 20, pool_rounds=4)
    assert (p.n_control, p.n_selected, p.notes) == (5, 45, [])
    assert plan_arms(50, 1000, 0.1, 21, pool_rounds=4).n_control == 6  # ceil(21 / 4)
    assert plan_arms(500, 10_000, 0.1, 20, pool_rounds=4).n_control == 50  # the share dominates
    p = plan_arms(20, 1000, 0.1, 20, pool_rounds=2)  # 10 wanted, capped at half the budget
    assert p.n_control == 10 and p.notes == []
