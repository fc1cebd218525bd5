"""End-to-end selection on synthetic scored frames (pure, no services)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detloop.contracts import FrameRef, ScoredFrame
from detloop.detections import Detections
from detloop.errors import DataError
from detloop.settings import SelectionSettings
from tasks.selection import plot_scores, select

C = 4


def frame(i: int, vectors: list[list[float]], emb: np.ndarray | None = None) -> ScoredFrame:
    s = np.asarray(vectors, np.float32).reshape(-1, C)
    n = len(s)
    xyxy = np.array([[10 * j, 0, 10 * j + 8, 8] for j in range(n)], np.float32).reshape(-1, 4)
    det = Detections(xyxy, s.max(1) if n else np.zeros(0), s.argmax(1) if n else np.zeros(0), class_scores=s)
    ref = FrameRef("prod", f"frames/camera=c{i % 3}/date=2026-01-0{1 + i % 5}/{i:06d}.jpg", f"e{i}", f"c{i % 3}",
                   f"2026-01-0{1 + i % 5}")
    return ScoredFrame(ref, 64, 48, det, emb if emb is not None else np.zeros(8, np.float32))


def settings(**kw: object) -> SelectionSettings:
    base = {"budget": 10, "strategy": "entropy", "aggregation": "max", "diversity": "none", "control_share": 0.0,
            "control_min": 0, "class_balance": False}
    base.update(kw)
    return SelectionSettings(**base)


def random_pool(n: int, seed: int = 0) -> list[ScoredFrame]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = int(rng.integers(0, 5))
        v = rng.random((k, C)).astype(np.float32) * rng.random((k, 1))
        out.append(frame(i, v.tolist(), rng.standard_normal(8).astype(np.float32)))
    return out


def test_confused_frame_is_selected_over_confident_ones() -> None:
    frames = [frame(i, [[0.95, 0.01, 0.01, 0.01]]) for i in range(9)]
    frames.append(frame(9, [[0.5, 0.5, 0.01, 0.01]]))
    res = select(frames, None, settings(budget=1))
    assert [f.frame.key for f in res.selected] == [frames[9].frame.key]
    assert res.selected[0].arm == "selected" and res.selected[0].rank == 1
    assert res.report["pool"]["arm"][9] == "selected" and res.report["chosen"][0]["key"] == frames[9].frame.key


def test_control_arm_share_is_exact_and_reproducible_by_seed() -> None:
    frames = random_pool(500)
    s = settings(budget=200, control_share=0.1, control_min=20, diversity="filter_kcenter")
    a = select(frames, None, s, round_seed=7)
    b = select(frames, None, s, round_seed=7)
    c = select(frames, None, s, round_seed=8)
    assert len(a.control) == 20 and len(a.selected) == 180 and len(a.frames) == 200
    keys = lambda r: [f.frame.key for f in r.control]  # noqa: E731
    assert keys(a) == keys(b) and keys(a) != keys(c)
    assert not {f.frame.key for f in a.control} & {f.frame.key for f in a.selected}
    assert all(f.reason.startswith("control") for f in a.control)


def test_control_arm_is_uniform_not_biased_to_uncertain_frames() -> None:
    # over many seeds, the control arm's mean score matches the pool mean while the selected arm's is higher
    frames = random_pool(400, seed=2)
    s = settings(budget=40, control_share=0.5, control_min=0, aggregation="sum")
    ctrl, sel, pool = [], [], None
    for seed in range(30):
        r = select(frames, None, s, round_seed=seed)
        pool = r.final_scores
        ctrl += [f.uncertainty for f in r.control]
        sel += [f.uncertainty for f in r.selected]
    assert pool is not None
    assert abs(np.mean(ctrl) - pool.mean()) < 0.25 * pool.std()
    assert np.mean(sel) > pool.mean() + pool.std()


@pytest.mark.parametrize("diversity", ["none", "kcenter", "filter_kcenter"])
def test_budget_met_exactly(diversity: str) -> None:
    frames = random_pool(300, seed=4)
    res = select(frames, None, settings(budget=37, diversity=diversity, control_share=0.1, control_min=3))
    assert len(res.frames) == 37 and len({f.frame.key for f in res.frames}) == 37


def test_filter_kcenter_spreads_over_clusters() -> None:
    # 40 equally uncertain frames in two embedding clusters of 30 and 10: top-score would take by order,
    # k-center must cover both clusters
    frames = []
    for i in range(40):
        emb = np.full(8, 0.0 if i < 30 else 10.0, np.float32) + np.float32(0.01 * i)
        frames.append(frame(i, [[0.5, 0.5, 0.0, 0.0]], emb))
    res = select(frames, None, settings(budget=4, diversity="filter_kcenter", filter_factor=10))
    clusters = {0 if int(f.frame.key[-10:-4]) < 30 else 1 for f in res.selected}
    assert clusters == {0, 1}


def test_budget_larger_than_pool_takes_all_and_says_so() -> None:
    frames = random_pool(12)
    res = select(frames, None, settings(budget=50, control_share=0.1, control_min=2))
    assert len(res.frames) == 12
    assert any("larger than the pool" in n for n in res.notes)


def test_empty_pool_selects_nothing_with_a_message() -> None:
    res = select([], None, settings())
    assert res.frames == [] and "empty window" in res.notes[0]
    assert "nothing selected" in res.markdown()


def test_unknown_strategy_is_refused_by_the_settings_and_the_registry_lists_valid_names() -> None:
    from pydantic import ValidationError

    from tasks.strategies import get_strategy

    with pytest.raises(ValidationError, match="entropy"):
        settings(strategy="nope")
    with pytest.raises(DataError, match=r"valid: .*entropy"):
        get_strategy("nope")


def test_the_registry_implements_exactly_the_names_the_settings_accept() -> None:
    from typing import get_args

    from detloop.settings import AggregationName, StrategyName
    from tasks.strategies import AGGREGATIONS, STRATEGIES

    assert set(STRATEGIES) == set(get_args(StrategyName))
    assert tuple(AGGREGATIONS) == get_args(AggregationName)


def test_frames_without_detections_get_score_from_subthreshold_candidates() -> None:
    frames = [
        frame(0, []),  # nothing at all
        frame(1, [[0.2, 0.2, 0.0, 0.0]]),  # an ambiguous candidate just under the 0.25 threshold
        frame(2, [[0.05, 0.05, 0.0, 0.0]]),  # a faint one
    ]
    res = select(frames, None, settings(budget=3, conf_threshold=0.25))
    s = res.final_scores
    assert s[0] == 0.0 and s[1] > s[2] > 0.0
    assert res.report["counts"]["no_detection"] == 3


def test_class_balance_lifts_frames_with_rare_classes() -> None:
    common = frame(0, [[0.6, 0.3, 0.0, 0.0]])
    rare = frame(1, [[0.0, 0.0, 0.0, 0.6], [0.0, 0.0, 0.0, 0.0]][:1])
    rare.detections.class_scores[0] = [0.0, 0.0, 0.3, 0.6]  # same entropy as the common frame
    counts = [5000, 5000, 5000, 3]
    off = select([common, rare], counts, settings(budget=1, class_balance=False))
    on = select([common, rare], counts, settings(budget=1, class_balance=True))
    assert off.final_scores[0] == pytest.approx(off.final_scores[1])
    assert on.selected[0].frame.key == rare.frame.key


def test_report_is_json_and_has_scores_per_strategy(tmp_path) -> None:  # type: ignore[no-untyped-def]
    frames = random_pool(50)
    res = select(frames, [10, 10, 10, 10], settings(budget=10, control_share=0.2, control_min=2),
                 class_names=list("abcd"))
    data = json.loads(json.dumps(res.report))
    pool = data["pool"]
    assert len(pool["key"]) == 50 and len(data["chosen"]) == 10
    assert {"entropy", "margin", "least_confidence", "ambiguous"} <= set(pool["scores"])
    assert all(len(v) == 50 for v in pool["scores"].values())
    row = next(r for r in data["chosen"] if r["arm"] == "selected")
    assert {"entropy", "margin", "least_confidence", "ambiguous"} <= set(row["scores"]) and row["reason"]
    assert sorted(pool["rank"]) == list(range(1, 51))
    assert pool["arm"].count("selected") == 8 and pool["arm"].count("control") == 2
    md = res.markdown()
    assert "| rank | arm |" in md and "control" in md
    png = plot_scores(res, str(tmp_path / "p.png"))
    assert png[:4] == b"\x89PNG" and (tmp_path / "p.png").stat().st_size == len(png)
    # pre-annotations carry only boxes above the threshold
    for f in res.frames:
        assert all(c >= 0.25 for c in f.predictions["confidence"])


@pytest.mark.parametrize(("sizes", "k", "want"), [
    ([100, 100], 24, [12, 12]),
    ([100, 100, 100], 10, [4, 3, 3]),  # the remainder goes to the groups listed first
    ([5, 100, 100], 24, [5, 10, 9]),  # a small group's spare share goes to the others
    ([3, 4], 24, [3, 4]),  # fewer frames than picks: all of them
    ([0, 7], 5, [0, 5]),
    ([], 5, []),
    ([10, 10], 0, [0, 0]),
])
def test_equal_weights_split_evenly_capped_by_each_group(sizes: list[int], k: int, want: list[int]) -> None:
    from tasks.selection import weighted_quotas

    got = weighted_quotas(sizes, [1.0] * len(sizes), k)
    assert got == want
    assert sum(got) == min(k, sum(sizes)) and all(q <= n for q, n in zip(got, sizes, strict=True))


@pytest.mark.parametrize(("sizes", "weights", "k", "want"), [
    ([100, 100, 100], [2, 1, 1], 24, [12, 6, 6]),
    ([100, 100, 100, 100, 100], [1, 0.5, 0.5, 0.5, 0.5], 240, [80, 40, 40, 40, 40]),  # an episode and 4 companions
    ([5, 100, 100], [2, 1, 1], 24, [5, 10, 9]),  # the heavy group's spare share goes to the others
    ([100, 100], [1, 3], 10, [3, 7]),  # 2.5 / 7.5: a tie of fractions goes to the group listed first
    ([100, 100], [1, 2], 10, [3, 7]),  # 3.33 / 6.67: the larger fraction gets the remainder
    ([3, 100], [10, 1], 24, [3, 21]),
    ([100, 100], [0.5, 0.5], 25, [13, 12]),  # equal weights split equally, whatever their value
])
def test_weighted_quotas_split_in_proportion_capped_by_each_group(sizes: list[int], weights: list[float], k: int,
                                                                   want: list[int]) -> None:
    from tasks.selection import weighted_quotas

    got = weighted_quotas(sizes, weights, k)
    assert got == want
    assert sum(got) == min(k, sum(sizes)) and all(q <= n for q, n in zip(got, sizes, strict=True))


def test_weighted_quotas_refuse_a_weight_that_is_not_positive() -> None:
    from tasks.selection import weighted_quotas

    for bad in ([1, 0], [1, -1], [1]):
        with pytest.raises(ValueError, match="positive number per group"):
            weighted_quotas([10, 10], bad, 5)


def skewed_two_cameras(n: int = 60) -> list[ScoredFrame]:
    """cam0's frames all more uncertain than cam1's (a new camera beside a repainted one)."""
    out = []
    rng = np.random.default_rng(3)
    for i in range(n):
        cam = "cam0" if i % 2 == 0 else "cam1"
        p = 0.5 if cam == "cam0" else 0.8 + 0.15 * float(rng.random())  # 0.5/0.5: maximal entropy
        f = frame(i, [[p, 1 - p, 0.0, 0.0]], rng.standard_normal(8).astype(np.float32))
        out.append(ScoredFrame(FrameRef("prod", f.frame.key.replace(f"camera=c{i % 3}", f"camera={cam}"), f"e{i}",
                                        cam, f.frame.date), 64, 48, f.detections, f.embedding))
    return out


@pytest.mark.parametrize("diversity", ["none", "filter_kcenter"])
def test_balance_cameras_gives_each_camera_its_share_in_alternating_pick_order(diversity: str) -> None:
    frames = skewed_two_cameras()
    plain = select(frames, None, settings(budget=10, diversity=diversity))
    assert {f.frame.camera for f in plain.selected} == {"cam0"}  # without it, the uncertain camera takes all
    bal = select(frames, None, settings(budget=10, diversity=diversity, balance_cameras=True))
    cams = [f.frame.camera for f in bal.selected]
    assert cams.count("cam0") == cams.count("cam1") == 5
    assert cams[:4] == ["cam0", "cam1", "cam0", "cam1"]  # round-robin: a cut-short list stays balanced
    assert any(n.startswith("cameras balanced: cam0 5, cam1 5") for n in bal.notes)
    # within a camera, the best of that camera is picked first
    first_cam1 = next(f for f in bal.selected if f.frame.camera == "cam1")
    assert first_cam1.uncertainty == pytest.approx(max(f.uncertainty for f in bal.selected if f.frame.camera == "cam1"))


def test_balance_cameras_splits_by_camera_weights_and_says_so() -> None:
    frames = skewed_two_cameras(80)
    res = select(frames, None, settings(budget=12, balance_cameras=True, camera_weights={"cam0": 0.5}))
    cams = [f.frame.camera for f in res.selected]
    assert cams.count("cam0") == 4 and cams.count("cam1") == 8  # 1 : 2, though cam0's frames are the more uncertain
    assert any(n.startswith("cameras balanced: cam0 4 (weight 0.5), cam1 8") for n in res.notes)
    # a weight without balance_cameras changes nothing: the shares fall where the scores do
    plain = select(frames, None, settings(budget=12, camera_weights={"cam0": 0.5}))
    assert {f.frame.camera for f in plain.selected} == {"cam0"}


def test_camera_weights_are_validated_on_load() -> None:
    from pydantic import ValidationError

    for bad in (0.0, -1.0, 101.0):
        with pytest.raises(ValidationError, match="camera_weights"):
            settings(camera_weights={"cam0": bad})


def test_balance_cameras_keeps_the_control_arm_and_the_budget() -> None:
    frames = skewed_two_cameras(80)
    res = select(frames, None, settings(budget=21, control_share=0.2, control_min=0, balance_cameras=True))
    assert len(res.frames) == 21 and len(res.control) == 4 and len({f.frame.key for f in res.frames}) == 21
    cams = [f.frame.camera for f in res.selected]
    assert abs(cams.count("cam0") - cams.count("cam1")) <= 1


def test_balance_cameras_with_fewer_picks_than_cameras_gives_the_first_cameras_one_each() -> None:
    frames = random_pool(60, seed=5)  # cameras c0, c1, c2
    res = select(frames, None, settings(budget=2, diversity="filter_kcenter", balance_cameras=True))
    assert sorted(f.frame.camera for f in res.selected) == ["c0", "c1"]
