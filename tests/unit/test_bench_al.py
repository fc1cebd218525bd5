"""Active-learning benchmark: label-efficiency math, arms, annotator, inputs and the summary (pure, no training)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.al import (
    CONTROL,
    AnnotatorNoise,
    BenchConfig,
    annotate,
    check_arms,
    curves_from_records,
    fitted_rates,
    markdown_table,
    metric_value,
    plot,
    random_pick,
    selection_settings,
    summarize,
    truth_error_pick,
)
from benchmarks.al_data import BenchData, BenchFrame, load_yolo_dataset, render_world
from benchmarks.al_metrics import (
    Curve,
    common_grid,
    efficiency_ci,
    label_efficiency,
    labels_to_reach,
    mean_curve,
)
from detloop.detections import Detections
from detloop.errors import DataError

REPO = Path(__file__).resolve().parents[2]


def C(x: list[float], y: list[float]) -> Curve:
    return Curve(np.array(x, float), np.array(y, float))


# ---- curves ------------------------------------------------------------------------------------
def test_curve_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="same length"):
        C([1, 2], [0.1])
    with pytest.raises(ValueError, match="strictly increasing"):
        C([1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="at least one"):
        C([], [])


def test_labels_to_reach_interpolates_between_points() -> None:
    c = C([50, 100, 150], [0.1, 0.3, 0.5])
    x, before = labels_to_reach(c, 0.4)
    assert not before
    assert x == pytest.approx(125.0)
    assert labels_to_reach(c, 0.05) == (50.0, True)
    assert labels_to_reach(c, 0.6) == (None, False)


def test_labels_to_reach_takes_first_crossing_of_a_non_monotone_curve() -> None:
    c = C([10, 20, 30, 40], [0.1, 0.5, 0.2, 0.45])
    x, _ = labels_to_reach(c, 0.45)
    assert x == pytest.approx(10 + (0.45 - 0.1) / 0.4 * 10)


def test_label_efficiency_point_lower_bound_and_never() -> None:
    rnd = C([50, 100, 150, 200], [0.1, 0.2, 0.3, 0.4])
    e = label_efficiency(rnd, C([50, 100, 150, 200], [0.2, 0.4, 0.5, 0.6]))
    assert (e.kind, e.value, e.n_random, e.n_strategy) == ("point", pytest.approx(2.0), 200.0, 100.0)
    assert e.text == "2.00x"
    lb = label_efficiency(rnd, C([50, 100], [0.45, 0.5]))
    assert lb.kind == "lower_bound" and lb.value == pytest.approx(4.0) and lb.text == "> 4.00x"
    nv = label_efficiency(rnd, C([50, 100, 150, 200], [0.1, 0.15, 0.2, 0.39]))
    assert nv.kind == "never" and nv.value is None and nv.text == "never"
    # random did not improve (flat at 0): both sides are upper bounds, no ratio
    flat = label_efficiency(C([16, 32], [0.0, 0.0]), C([8, 16], [0.0, 0.0]))
    assert flat.kind == "undefined" and flat.value is None and "undefined" in flat.text
    # random against itself is exactly 1x
    assert label_efficiency(rnd, rnd).value == pytest.approx(1.0)


def test_random_that_peaks_early_needs_fewer_labels_than_its_last_point() -> None:
    rnd = C([50, 100, 150, 200], [0.1, 0.45, 0.3, 0.4])
    e = label_efficiency(rnd, C([50, 100, 150, 200], [0.1, 0.2, 0.3, 0.4]))
    n_rand = 50 + (0.4 - 0.1) / 0.35 * 50
    assert e.n_random == pytest.approx(n_rand)
    assert e.value == pytest.approx(n_rand / 200)


def test_mean_curve_on_common_grid_of_box_axes() -> None:
    a = C([100, 200, 300], [0.1, 0.2, 0.3])
    b = C([150, 250, 350], [0.2, 0.3, 0.4])
    grid = common_grid([a, b])
    assert grid.tolist() == [150, 200, 250, 300]
    m, sd = mean_curve([a, b])
    ya = np.interp(grid, a.x, a.y)
    yb = np.interp(grid, b.x, b.y)
    np.testing.assert_allclose(m.y, (ya + yb) / 2)
    np.testing.assert_allclose(sd, np.std(np.stack([ya, yb]), axis=0, ddof=1))
    with pytest.raises(ValueError, match="do not overlap"):
        common_grid([C([1, 2], [0, 0]), C([3, 4], [0, 0])])


def test_efficiency_ci_over_seeds() -> None:
    rnd = [C([50, 100, 150, 200], [0.1, 0.2, 0.3, 0.4])] * 3
    same = efficiency_ci(rnd, [C([50, 100, 150, 200], [0.2, 0.4, 0.5, 0.6])] * 3, n_boot=200)
    assert same.estimate.value == pytest.approx(2.0)
    assert same.ci == (pytest.approx(2.0), pytest.approx(2.0))  # identical seeds: no spread
    one = efficiency_ci(rnd[:1], [C([50, 100], [0.2, 0.4])], n_boot=200)
    assert one.ci is None and one.notes
    with pytest.raises(ValueError, match="paired"):
        efficiency_ci(rnd, rnd[:2])
    # spread across seeds widens the interval around the estimate
    strat = [C([50, 100, 150, 200], [0.2, 0.4, 0.5, 0.6]), C([50, 100, 150, 200], [0.1, 0.25, 0.35, 0.45]),
             C([50, 100, 150, 200], [0.15, 0.3, 0.42, 0.5])]
    r = efficiency_ci(rnd, strat, n_boot=500, seed=1)
    assert r.ci is not None and r.ci[0] < r.estimate.value < r.ci[1]  # type: ignore[operator]
    d = r.to_dict()
    assert d["text"] == r.estimate.text and len(d["ci"]) == 2


def test_efficiency_ci_equals_recomputing_every_draw() -> None:
    """Each distinct resample is computed once; the interval and shares are those of all draws recomputed."""
    rng = np.random.default_rng(3)
    x = np.array([50.0, 100, 150, 200])
    rnd = [C(x + rng.integers(0, 20, 4), np.sort(rng.uniform(0.1, 0.5, 4))) for _ in range(3)]
    strat = [C(x + rng.integers(0, 20, 4), np.sort(rng.uniform(0.1, 0.55, 4))) for _ in range(3)]
    got = efficiency_ci(rnd, strat, n_boot=300, seed=7)
    draws = np.random.default_rng(7)
    vals, kinds = [], []
    for _ in range(300):
        idx = draws.integers(0, 3, 3)
        e = label_efficiency(mean_curve([rnd[i] for i in idx])[0], mean_curve([strat[i] for i in idx])[0])
        vals.append(np.nan if e.kind == "undefined" else (0.0 if e.value is None else e.value))
        kinds.append(e.kind)
    assert got.ci == tuple(float(v) for v in np.nanquantile(vals, [0.025, 0.975]))
    assert got.share_never == kinds.count("never") / 300
    assert got.share_lower_bound == kinds.count("lower_bound") / 300
    assert got.ci[0] < got.ci[1]  # the resamples differ: a reuse across different resamples would narrow it


# ---- arms and helpers ----------------------------------------------------------------------------
def test_check_arms_puts_random_first_and_rejects_unknown() -> None:
    assert check_arms(["entropy_sum", "random", "entropy_sum"]) == ["random", "entropy_sum"]
    with pytest.raises(DataError, match="unknown benchmark arm"):
        check_arms(["random", "bald"])
    with pytest.raises(DataError, match="needs the 'random' arm"):
        check_arms(["entropy_sum"])


def test_selection_settings_of_arms() -> None:
    from detloop.settings import SelectionSettings

    configured = SelectionSettings(budget=60, strategy="entropy", class_balance=True, control_share=0.1,
                                   control_min=20)
    d = selection_settings("default", configured, 50, 3)
    assert (d.budget, d.seed, d.class_balance, d.control_min) == (50, 3, True, 20)
    e = selection_settings("entropy_kcenter", configured, 50, 3)
    assert (e.strategy, e.aggregation, e.diversity, e.class_balance, e.control_share) == (
        "entropy", "sum", "filter_kcenter", False, 0.0)
    m = selection_settings("margin_max", configured, 50, 3)
    assert (m.strategy, m.aggregation, m.diversity) == ("margin", "max", "none")
    with pytest.raises(DataError):
        selection_settings("random", configured, 50, 3)


def test_random_pick_is_seeded_distinct_and_capped() -> None:
    a = random_pick(100, 10, seed=0, round_index=1)
    assert len(a) == 10 and len(set(a.tolist())) == 10 and a.max() < 100
    assert np.array_equal(a, random_pick(100, 10, 0, 1))
    assert not np.array_equal(a, random_pick(100, 10, 1, 1))
    assert not np.array_equal(a, random_pick(100, 10, 0, 2))
    assert len(random_pick(4, 10, 0, 1)) == 4


def frame(name: str, n: int = 6, w: int = 640, h: int = 480) -> BenchFrame:
    rng = np.random.default_rng(len(name))
    xy = rng.uniform(0, 300, (n, 2))
    sz = rng.uniform(10, 80, (n, 2))
    truth = Detections(np.hstack([xy, xy + sz]), np.ones(n), rng.integers(0, 5, n))
    return BenchFrame(name, f"/nonexistent/{name}.jpg", truth, w, h)


def _boxes(n: int, cls: int = 0, x0: float = 0.0) -> Detections:
    xy = np.array([[x0 + 30 * k, 10, x0 + 30 * k + 20, 30] for k in range(n)], float).reshape(-1, 4)
    return Detections(xyxy=xy, confidence=np.ones(n), class_id=np.full(n, cls, np.int64))


def test_truth_error_pick_ranks_mistakes_per_labelling_second() -> None:
    from detloop.settings import LabellingCostSettings

    cost = LabellingCostSettings()
    truth = [_boxes(3), _boxes(1), _boxes(12), _boxes(3), _boxes(2)]
    pre = [
        _boxes(3),            # 0: all right: no mistake
        _boxes(0),            # 1: one miss on a one-object frame: 1 draw in 3 + 7 s
        _boxes(10),           # 2: ten right, two missed: 2 mistakes in 3 + 10 x 1.6 + 2 x 7 s (a crowd pays less)
        _boxes(3),            # 3: all right (ties with 0)
        _boxes(2, cls=1),     # 4: both boxes of the wrong class: 2 adjusts in 3 + 2 x 4 s
    ]
    scores = {0: 0.0, 1: 1 / 10, 2: 2 / 33, 3: 0.0, 4: 2 / 11}
    best = sorted(scores, key=lambda i: -scores[i])
    for budget in (1, 2, 3):
        got = truth_error_pick(pre, truth, cost, budget, seed=0, round_index=1)
        assert sorted(got.tolist()) == sorted(best[:budget])
    # frames without a mistake are tie-broken by a seeded draw, reproducibly, and the pick is capped by the pool
    ties = {tuple(truth_error_pick(pre, truth, cost, 4, seed=s, round_index=1).tolist()) for s in range(12)}
    assert ties <= {(0, 1, 2, 4), (1, 2, 3, 4)} and len(ties) == 2
    assert np.array_equal(truth_error_pick(pre, truth, cost, 4, 3, 1), truth_error_pick(pre, truth, cost, 4, 3, 1))
    assert len(truth_error_pick(pre, truth, cost, 50, 0, 1)) == 5


def test_annotator_is_deterministic_per_seed_and_frame() -> None:
    f = frame("a", 20)
    noise = AnnotatorNoise(jitter=0.05, p_miss_small=0.5, p_flip=0.2)
    a1, a2, b = annotate(f, noise, 0, 5), annotate(f, noise, 0, 5), annotate(f, noise, 1, 5)
    assert a1.equals(a2)
    assert not a1.equals(b)
    clean = annotate(f, AnnotatorNoise(0.0, 0.0, 0.0), 0, 5)
    assert clean.equals(Detections(f.truth.xyxy, np.ones(20), f.truth.class_id))


def test_metric_value_and_curves_from_records() -> None:
    m = {"map": 0.3, "map50": 0.5, "per_class": {"star": {"map": 0.1, "map50": 0.2}}}
    assert metric_value(m, "map") == 0.3
    assert metric_value(m, "class.star.map50") == 0.2
    assert metric_value(m, "class.disc.map") is None
    recs = [{"round": 0, "cumulative": {"frames": 0}, "metrics": {"map": 0.1}},
            {"round": 2, "cumulative": {"frames": 100}, "metrics": {"map": 0.3}},
            {"round": 1, "cumulative": {"frames": 50}, "metrics": {"map": 0.2}}]
    c = curves_from_records(recs, "frames", "map")
    assert c.x.tolist() == [50, 100] and c.y.tolist() == [0.2, 0.3]  # bootstrap point left out


def test_run_key_ignores_seeds_and_rounds_but_not_training() -> None:
    a = BenchConfig()
    b = BenchConfig(seeds=[5], rounds=9, arms=["random"])
    c = BenchConfig(epochs=7)
    assert a.run_key() == b.run_key() != c.run_key()
    assert BenchConfig(world_seed=1).run_key() != a.run_key()
    # control retirement changes the default arm only: same run (random reused, paired in al-compare), own directory
    from benchmarks.al import default_arm_key
    from detloop.settings import SelectionSettings

    assert BenchConfig(retire_control_after=1).run_key() == a.run_key()
    sel = SelectionSettings()
    assert default_arm_key(sel, None) != default_arm_key(sel, 1) == default_arm_key(sel, None) + "-retire1"
    # fine-tune settings change the run but reuse the bootstrap models
    assert c.bootstrap_key() == a.bootstrap_key() == BenchConfig(budget=10, finetune_lr0=0.01).bootstrap_key()
    assert BenchConfig(bootstrap_epochs=5).bootstrap_key() != a.bootstrap_key()
    assert BenchConfig(sizes={"seed": 150, "pool": 1500, "eval": 200, "val": 16}).bootstrap_key() != a.bootstrap_key()



@pytest.mark.parametrize("arch", ["yolo11n.yaml", "yolo11n-p2.yaml", "yolo26n.yaml"])
def test_train_once_builds_every_supported_family(arch: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A from-scratch bootstrap hands Ultralytics a model file it can build: the YOLO11 P2 file is detloop's own
    (Ultralytics ships none, and the bench once failed on the default config with "'yolo11-p2.yaml' does not exist");
    a fine-tune starts from its weights whatever the family."""
    import tasks.training as training
    from benchmarks.al import train_once

    specs: list[Any] = []

    def fake_worker(spec: Any, timeout: float, log: Path) -> dict[str, str]:
        specs.append(spec)
        return {"last": str(tmp_path / "last.pt")}

    monkeypatch.setattr(training, "run_worker", fake_worker)
    y = tmp_path / "data.yaml"
    train_once(BenchConfig(), y, None, 1, 0, tmp_path, tmp_path / "yolo", arch)
    model = specs[0].model
    assert model == arch or (Path(model).is_file() and Path(model).name == arch), model
    assert model != arch or arch != "yolo11n-p2.yaml"
    init = tmp_path / "champion.pt"
    train_once(BenchConfig(), y, init, 1, 0, tmp_path, tmp_path / "yolo", arch)
    assert specs[1].model == str(init) and specs[1].pretrained == str(init)


def test_a_finished_training_is_reused_only_for_the_same_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that crashed after its 40-minute bootstrap trained (session 22: a config key unknown to the running
    code) resumes from the finished training instead of training it again; another spec trains."""
    import json
    from dataclasses import asdict

    import tasks.training as training
    from benchmarks.al import train_once

    calls: list[Any] = []

    def worker(spec: Any, timeout: float, log: Path) -> dict[str, Any]:
        calls.append(spec)
        out = Path(spec.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "spec.json").write_text(json.dumps(asdict(spec)))
        (out / "last.pt").write_bytes(b"w")
        res = {"last": str(out / "last.pt"), "train_seconds": 2318.2}
        (out / "result.json").write_text(json.dumps(res))
        return res

    monkeypatch.setattr(training, "run_worker", worker)
    y = tmp_path / "data.yaml"
    first = train_once(BenchConfig(), y, None, 3, 0, tmp_path, tmp_path / "yolo", "yolo11n.yaml")
    again = train_once(BenchConfig(), y, None, 3, 0, tmp_path, tmp_path / "yolo", "yolo11n.yaml")
    assert len(calls) == 1 and again == (first[0], 2318.2)
    train_once(BenchConfig(), y, None, 4, 0, tmp_path, tmp_path / "yolo", "yolo11n.yaml")  # other epochs
    assert len(calls) == 2
    (tmp_path / "ul" / "last.pt").unlink()  # weights gone: trained again
    train_once(BenchConfig(), y, None, 4, 0, tmp_path, tmp_path / "yolo", "yolo11n.yaml")
    assert len(calls) == 3


# ---- inputs ------------------------------------------------------------------------------------
def _yolo_dir(tmp: Path, counts: dict[str, int]) -> Path:
    import cv2

    for split, n in counts.items():
        (tmp / "images" / split).mkdir(parents=True)
        (tmp / "labels" / split).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(tmp / "images" / split / f"{split}{i}.jpg"), np.zeros((48, 64, 3), np.uint8))
            (tmp / "labels" / split / f"{split}{i}.txt").write_text(f"{i % 2} 0.5 0.5 0.25 0.5\n")
    return tmp


def test_load_yolo_dataset(tmp_path: Path) -> None:
    root = _yolo_dir(tmp_path, {"train": 3, "pool": 5, "test": 2})
    (root / "data.yaml").write_text("names: [a, b]\ntrain: images/train\npool: images/pool\ntest: images/test\n")
    d = load_yolo_dataset(root)
    assert (len(d.seed), len(d.pool), len(d.eval), len(d.val)) == (3, 5, 2, 3)
    assert d.classes == ["a", "b"]
    f = d.pool[1]
    assert f.width == 64 and f.height == 48 and f.truth.class_id.tolist() == [1]
    np.testing.assert_allclose(f.truth.xyxy[0], [24, 12, 40, 36], atol=1e-4)
    assert d.stats()["pool"]["boxes_per_class"] == {"a": 3, "b": 2}


def test_load_yolo_dataset_errors(tmp_path: Path) -> None:
    root = _yolo_dir(tmp_path, {"train": 2, "pool": 2})
    (root / "data.yaml").write_text("names: [a, b]\ntrain: images/train\npool: images/pool\n")
    with pytest.raises(DataError, match="'eval' or 'test'"):
        load_yolo_dataset(root / "data.yaml")
    (root / "data.yaml").write_text("names: [a, b]\ntrain: images/train\npool: images/pool\neval: images/pool\n")
    with pytest.raises(DataError, match="also in the seed or eval"):
        load_yolo_dataset(root)
    (root / "data.yaml").write_text("names: [a]\ntrain: images/train\npool: images/pool\neval: images/train\n")
    with pytest.raises(DataError, match="outside"):
        load_yolo_dataset(root)
    with pytest.raises(DataError, match="not found"):
        load_yolo_dataset(root / "missing.yaml")


def test_render_world_is_reused_and_counts_match(tmp_path: Path) -> None:
    classes = ["disc", "square", "triangle", "ring", "star"]
    sizes = {"seed": 3, "pool": 4, "eval": 3, "val": 2}
    d = render_world(tmp_path, REPO / "configs" / "world.yaml", classes, 0, sizes)
    assert [len(d.seed), len(d.pool), len(d.eval), len(d.val)] == [3, 4, 3, 2]
    assert d.source["world_params"]["classes"]["star"]["weight"] == pytest.approx(0.03)
    assert not {f.name for f in d.pool} & {f.name for f in d.eval}
    stamp = Path(d.pool[0].image).stat().st_mtime_ns
    d2 = render_world(tmp_path, REPO / "configs" / "world.yaml", classes, 0, sizes)
    assert Path(d2.pool[0].image).stat().st_mtime_ns == stamp  # reused, not re-rendered
    assert all(a.truth.equals(b.truth, atol=1e-3) for a, b in zip(d.pool, d2.pool, strict=True))
    other = render_world(tmp_path / "w1", REPO / "configs" / "world.yaml", classes, 1, sizes)
    assert other.source["key"] != d.source["key"]


# ---- summary on synthetic records ----------------------------------------------------------------
class FakeRunner:
    """What :func:`summarize` reads from a Runner: cfg, data, records(arm, seed)."""

    def __init__(self, table: dict[str, list[list[float]]], boxes_per_frame: dict[str, float], tmp: Path):
        self.cfg = BenchConfig(arms=["random", "entropy_sum"], seeds=[0, 1], rounds=3, budget=50)
        star = frame("e", 4)
        star.truth.class_id[:] = [0, 1, 2, 4]
        self.data = BenchData(["disc", "square", "triangle", "ring", "star"], [], [], [star], [], {"kind": "fake"})
        self.table, self.bpf = table, boxes_per_frame

    def load_record(self, arm: str, seed: int, r: int) -> dict[str, Any]:
        return self.records("random", seed)[r]

    def records(self, arm: str, seed: int) -> list[dict[str, Any]]:
        out = []
        for r, y in enumerate(self.table[arm][seed]):
            f = 0 if arm == CONTROL else 50 * r
            cum = {"frames": f, "boxes": f * self.bpf[arm], "frames_paid": f, "boxes_paid": f * self.bpf[arm],
                   "seconds": 2 * f * self.bpf[arm], "seconds_paid": 2 * f * self.bpf[arm]}
            out.append({"round": r, "cumulative": cum, "new_boxes_per_class": {"star": 1},
                        "metrics": {"map": y, "map50": y * 2, "small_map": y / 2,
                                    "per_class": {"star": {"map": y / 3, "map50": y}}}, "train_seconds": 1.0})
        return out


def test_summarize_efficiency_on_both_axes_and_plots(tmp_path: Path) -> None:
    table = {"random": [[0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4]],
             "entropy_sum": [[0.1, 0.3, 0.4, 0.5], [0.1, 0.3, 0.4, 0.5]],
             CONTROL: [[0.1, 0.12, 0.13, 0.14], [0.1, 0.12, 0.13, 0.14]]}
    # entropy-sum picks frames with twice the boxes: 2x on frames, 1x on boxes
    runner = FakeRunner(table, {"random": 6.0, "entropy_sum": 12.0, CONTROL: 0.0}, tmp_path)
    s = summarize(runner, ["random", "entropy_sum", CONTROL], 1.0)  # type: ignore[arg-type]
    e = s["efficiency_vs_random"]["entropy_sum"]
    assert e["frames:map"]["value"] == pytest.approx(150 / 100)
    assert e["boxes:map"]["value"] == pytest.approx(900 / 1200)
    assert e["seconds_paid:map"]["value"] == pytest.approx(900 / 1200)  # seconds here = 2 x boxes
    assert s["rare_class"] == "ring"  # fewest eval instances (0)
    assert s["map_by_round_mean"][CONTROL][3] == pytest.approx(0.14)
    assert s["bootstrap"]["map50_by_seed"] == {0: 0.2, 1: 0.2} and "cold start" in s["bootstrap"]["cold_start_warning"]
    assert s["arms"]["entropy_sum"]["final"]["map"]["mean"] == pytest.approx(0.5)
    # seconds here = 2 x boxes: 12 s a paid frame for random (6 boxes), 24 for entropy-sum (12), none unpaid
    assert s["arms"]["random"]["seconds_per_paid_frame"] == {"all_rounds": 12.0, "by_round": {1: 12.0, 2: 12.0,
                                                                                                3: 12.0}}
    assert s["arms"]["entropy_sum"]["seconds_per_paid_frame"]["all_rounds"] == 24.0
    assert s["arms"][CONTROL]["seconds_per_paid_frame"] == {"all_rounds": None, "by_round": {}}
    table_md = markdown_table(s)
    assert "| entropy_sum |" in table_md and "1.50x" in table_md and "(baseline)" in table_md
    assert "| 24.0 |" in table_md and "| 12.0 |" in table_md
    json.dumps(s)
    curve, rare = tmp_path / "c.png", tmp_path / "r.png"
    plot(s, curve, rare)
    assert curve.stat().st_size > 1000 and rare.stat().st_size > 1000


def test_paid_frame_cost_is_each_rounds_new_seconds_over_its_new_paid_frames() -> None:
    from benchmarks.al import paid_frame_cost

    rows = [{"seed": 0, "round": 0, "frames_paid": 0, "seconds_paid": 0.0},
            {"seed": 0, "round": 1, "frames_paid": 50, "seconds_paid": 1000.0},   # 20 s a frame
            {"seed": 0, "round": 2, "frames_paid": 100, "seconds_paid": 3000.0},  # 40 s a frame
            {"seed": 1, "round": 2, "frames_paid": 100, "seconds_paid": 2000.0},  # rows in any order
            {"seed": 1, "round": 1, "frames_paid": 50, "seconds_paid": 1500.0},   # 30, then 10
            {"seed": 1, "round": 0, "frames_paid": 0, "seconds_paid": 0.0}]
    cost = paid_frame_cost(rows)
    assert cost["by_round"] == {1: 25.0, 2: 25.0}
    assert cost["all_rounds"] == 25.0  # (30 + 20) / 2: per seed, then the mean
    rows[2]["seconds_paid"] = 6000.0  # seed 0's round 2 dearer: 100 s a frame
    assert paid_frame_cost(rows) == {"all_rounds": pytest.approx((60 + 20) / 2), "by_round": {1: 25.0, 2: 55.0}}
    assert paid_frame_cost([])["all_rounds"] is None


def test_merging_one_seed_results_equals_summarising_both_seeds(tmp_path: Path) -> None:
    from benchmarks.al import merge_results, merge_summaries

    table = {"random": [[0.1, 0.2, 0.3, 0.4], [0.12, 0.25, 0.28, 0.42]],
             "entropy_sum": [[0.1, 0.3, 0.4, 0.5], [0.12, 0.22, 0.41, 0.44]],
             CONTROL: [[0.1, 0.12, 0.13, 0.14], [0.12, 0.11, 0.15, 0.16]]}
    bpf = {"random": 6.0, "entropy_sum": 9.0, CONTROL: 0.0}
    arms = ["random", "entropy_sum", CONTROL]
    both = summarize(FakeRunner(table, bpf, tmp_path), arms, 1.0)  # type: ignore[arg-type]
    parts = []
    for seed in (0, 1):
        runner = FakeRunner(table, bpf, tmp_path)
        runner.cfg.seeds = [seed]
        parts.append(json.loads(json.dumps(summarize(runner, arms, 1.0))))  # type: ignore[arg-type]
    assert parts[0]["efficiency_vs_random"] != both["efficiency_vs_random"]  # one seed alone says something else
    merged = merge_summaries(parts)
    assert merged["seeds_complete_all_arms"] == [0, 1] and merged["config"]["seeds"] == [0, 1]
    assert merged["efficiency_vs_random"] == json.loads(json.dumps(both["efficiency_vs_random"]))
    assert merged["map_by_round_mean"] == both["map_by_round_mean"]
    assert merged["arms"]["entropy_sum"]["seconds_per_paid_frame"]["all_rounds"] == \
        both["arms"]["entropy_sum"]["seconds_per_paid_frame"]["all_rounds"] == 18.0
    for a in arms:
        assert merged["arms"][a]["final"] == both["arms"][a]["final"]
        assert len(merged["arms"][a]["rows"]) == len(both["arms"][a]["rows"])
    assert merged["bootstrap"]["map50_by_seed"] == {"0": 0.2, "1": 0.24}
    # the written result plots and tables like a run's
    paths = [tmp_path / "s0.json", tmp_path / "s1.json"]
    for p, s in zip(paths, parts, strict=True):
        p.write_text(json.dumps(s))
    out = merge_results(paths, tmp_path / "m.json")
    assert (tmp_path / "m_curve.png").stat().st_size > 1000 and "| entropy_sum |" in markdown_table(out)
    # refused: a seed twice, or results of different runs
    with pytest.raises(DataError, match="seed 0 is in more than one"):
        merge_summaries([parts[0], parts[0]])
    with pytest.raises(DataError, match="different runs"):
        merge_summaries([parts[0], {**parts[1], "run_key": "other"}])
    # the default arm of one run key can differ (an option set by environment, or --retire-control-after):
    # its seeds merge only with the same arm
    as_default = [{**p, "arms": {("default" if a == "entropy_sum" else a): v for a, v in p["arms"].items()},
                   "selection_key": "abcd1234", "default_key": None} for p in parts]
    assert merge_summaries(as_default)["seeds_complete_all_arms"] == [0, 1]
    with pytest.raises(DataError, match=r"default arm differs.*default-abcd1234, default-ffff0000"):
        merge_summaries([as_default[0], {**as_default[1], "selection_key": "ffff0000"}])
    retired = {**as_default[1], "config": {**as_default[1]["config"], "retire_control_after": 1}}
    with pytest.raises(DataError, match="default-abcd1234-retire1"):
        merge_summaries([as_default[0], retired])
    # keyed before and after nulls were left out of the selection key: cannot be matched, refused in one line
    with pytest.raises(DataError, match="keyed before 2026-12-05"):
        merge_summaries([{**as_default[0], "key_scheme": 1}, {**as_default[1], "key_scheme": 2}])
    older = [{k: v for k, v in q.items() if k != "key_scheme"} for q in as_default]  # written before the scheme
    assert merge_summaries(older)["seeds_complete_all_arms"] == [0, 1]
    with pytest.raises(DataError, match="keyed before 2026-12-05"):
        merge_summaries([older[0], as_default[1]])


def test_a_selection_option_added_at_null_keeps_the_default_arms_cache_key() -> None:
    from benchmarks import al
    from detloop.settings import REPO_ROOT, CostCalibrationSettings, load_settings

    sel = load_settings(REPO_ROOT / "configs" / "local.yaml", env={}).selection
    assert sel.cost.calibration is None  # an option added in session 37, at null
    calibrated = sel.model_copy(update={"cost": sel.cost.model_copy(update={"calibration": CostCalibrationSettings()})})
    key = al.selection_key(sel)
    assert al.selection_key(calibrated) != key  # switched on: another arm
    dump = sel.model_dump(mode="json")
    dump.pop("budget"), dump.pop("seed"), dump.pop("pseudo_labels")
    dump["cost"].pop("calibration")  # as the settings were before the option existed
    from benchmarks._common import settings_hash

    assert settings_hash(dump, 8) == key


# ---- the runner end to end, training replaced by an untrained model (no services, no training) --------
def test_runner_end_to_end_with_untrained_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from ultralytics.nn.tasks import DetectionModel

    import benchmarks.al as al

    classes = ["disc", "square", "triangle", "ring", "star"]
    net = DetectionModel("yolo11n.yaml", nc=len(classes), verbose=False)
    net.names = dict(enumerate(classes))
    random_pt = tmp_path / "untrained.pt"
    torch.save({"model": net, "train_args": {}}, random_pt)
    calls: list[dict[str, Any]] = []

    def fake_train(cfg: Any, data_yaml: Path, init: Path | None, epochs: int, seed: int, out_dir: Path,
                   yolo_dir: Path, arch: str) -> tuple[Path, float]:
        import yaml

        d = yaml.safe_load(Path(data_yaml).read_text())
        train = Path(d["train"]).read_text().split()
        calls.append({"init": init, "epochs": epochs, "train": train, "dir": str(out_dir)})
        out_dir.mkdir(parents=True, exist_ok=True)
        return random_pt, 0.0

    monkeypatch.setattr(al, "train_once", fake_train)
    pool_scorings: list[str] = []
    seed_scorings: list[str] = []
    real_infer = al.infer

    def counting_infer(weights: Path, *a: Any, **k: Any) -> Any:
        if a[-1] is True and len(a[1]) == 14:  # with_embedding over the whole pool: a pool scoring pass
            pool_scorings.append(str(weights))
        elif a[-1] is True:  # the seed set's embeddings: examples for the rare-class search
            seed_scorings.append(str(weights))
        return real_infer(weights, *a, **k)

    monkeypatch.setattr(al, "infer", counting_infer)
    cfg = BenchConfig(arms=["random", "entropy_sum", "default"], seeds=[0], rounds=2, budget=4, epochs=1,
                      bootstrap_epochs=1, sizes={"seed": 5, "pool": 14, "eval": 4, "val": 2},
                      config=str(REPO / "configs" / "test.yaml"), work_dir=str(tmp_path / "work"), threads=1)
    out = tmp_path / "al.json"
    s = al.run_benchmark(cfg, out, tmp_path / "c.png", tmp_path / "r.png", log=lambda m: None)
    # 1 bootstrap + (3 arms + control) x 2 rounds
    assert len(calls) == 1 + 4 * 2
    assert calls[0]["init"] is None and calls[0]["epochs"] == 1 and len(calls[0]["train"]) == 5
    runner_root = Path(s["outputs"]["work_dir"])
    from detloop.settings import load_settings

    default_dir = f"default-{al.selection_key(load_settings(cfg.config).selection)}"
    for arm in ("random", "entropy_sum", "default", CONTROL):
        arm_dir = default_dir if arm == "default" else arm
        recs = [json.loads((runner_root / "runs" / arm_dir / "s0" / f"r{r}.json").read_text()) for r in (1, 2)]
        picked = recs[0]["new_frames_idx"] + recs[1]["new_frames_idx"]
        paid = picked + recs[0]["control_idx"] + recs[1]["control_idx"]
        assert len(set(paid)) == len(paid)  # never labels a frame twice
        if arm == CONTROL:
            assert paid == [] and recs[1]["cumulative"]["frames"] == 0
        elif arm == "default":  # test.yaml: control_min 4 -> half of a budget of 4 goes to the control arm
            assert recs[0]["new_frames"] == 2 and recs[0]["control_frames"] == 2
            # round 1's control frames served round 2's live estimate, then retired into round 2's training
            assert recs[1]["retired_control_idx"] == recs[0]["control_idx"] and recs[0]["retired_control_idx"] == []
            assert recs[1]["cumulative"]["frames_paid"] == 8 and recs[1]["cumulative"]["frames"] == 4 + 2
            picked += recs[0]["control_idx"]
            assert recs[1]["selection"]["regime"]["champion_map50"] is not None  # quality known from round 1
        else:
            assert recs[1]["cumulative"]["frames"] == 8
        if arm != CONTROL:  # every paid frame is priced: at least its per-frame action
            assert recs[1]["cumulative_actions"]["paid"]["frames"] == len(paid)
        # round r trains on the seed set + everything the arm labelled (control frames only once retired)
        train2 = next(c for c in calls if c["dir"].endswith(f"{arm_dir}/s0/r2"))["train"]
        assert len(train2) == 5 + len(picked)
        for img in train2[5:]:
            lbl = Path(img.replace("/images/", "/labels/")).with_suffix(".txt")
            assert lbl.is_file()
    assert s["seeds_complete_all_arms"] == [0]
    # the bootstrap model scores the pool once for both strategy arms' round 1; round 2 once per arm
    assert len(pool_scorings) == 3 and sum("/bootstrap/" in w for w in pool_scorings) == 1
    # an untrained model is weak and detects no labelled class: the rare-class search stands down (nothing scored)
    assert seed_scorings == []
    default_dir = next(p for p in (runner_root / "runs").iterdir() if p.name.startswith("default-"))
    for r in (1, 2):
        rare = json.loads((default_dir / "s0" / f"r{r}.json").read_text())["selection"]["rare_search"]
        assert rare["picked"] == 0 and ("none of the" in rare["stood_down"] or "weak" in rare["stood_down"]), rare
    # another budget: new run, same bootstrap (no bootstrap training)
    calls.clear()
    cfg3 = BenchConfig(**{**cfg.__dict__, "arms": ["random"], "rounds": 1, "budget": 3})
    s3 = al.run_benchmark(cfg3, tmp_path / "al3.json", tmp_path / "c3.png", tmp_path / "r3.png", log=lambda m: None)
    assert len(calls) == 2 and all(c["init"] is not None for c in calls)
    assert s3["bootstrap"]["map_by_seed"] == s["bootstrap"]["map_by_seed"]
    assert set(s["efficiency_vs_random"]) == {"entropy_sum", "default"}
    assert (tmp_path / "c.png").is_file() and json.loads(out.read_text())["run_key"] == cfg.run_key()
    # resume: everything cached, nothing trains again
    calls.clear()
    cfg = BenchConfig(**cfg.__dict__)
    al.run_benchmark(cfg, out, tmp_path / "c.png", tmp_path / "r.png", log=lambda m: None)
    assert calls == []
    # another configured selection (control_min pooled over 4 rounds): only the default arm runs again
    monkeypatch.setenv("DETLOOP_SELECTION__CONTROL_POOL_ROUNDS", "4")
    cfg4 = BenchConfig(**{**cfg.__dict__, "rounds": 1})
    s4 = al.run_benchmark(cfg4, tmp_path / "al4.json", tmp_path / "c4.png", tmp_path / "r4.png", log=lambda m: None)
    pooled_dir = f"default-{al.selection_key(load_settings(cfg.config).selection)}"
    assert pooled_dir != default_dir and [Path(c["dir"]).parent.parent.name for c in calls] == [pooled_dir]
    r1 = json.loads((runner_root / "runs" / pooled_dir / "s0" / "r1.json").read_text())
    assert (r1["new_frames"], r1["control_frames"]) == (3, 1)  # ceil(4 / 4) control frames, not 2
    assert s4["seeds_complete_all_arms"] == [0]
    monkeypatch.delenv("DETLOOP_SELECTION__CONTROL_POOL_ROUNDS")
    # self-training on, with a "good" champion whose boxes on even pool frames are the truth at confidence 0.9 and
    # on odd ones a doubtful 0.5: the default arm runs again in its own cache and its fine-tune also trains on
    # pseudo-labelled (even) frames, which no label axis counts
    calls.clear()
    for k, v in {"ENABLED": "true", "PER_BUDGET": "2"}.items():
        monkeypatch.setenv(f"DETLOOP_SELECTION__PSEUDO_LABELS__{k}", v)
    monkeypatch.setattr(al.Runner, "champion_quality", lambda *a, **k: 0.9)
    real_score_pool = al.Runner._score_pool
    pools: list[Any] = []

    def good_champion(self: Any, weights: Path) -> Any:
        _dets, emb = real_score_pool(self, weights)
        pools.append(self.data.pool)
        out = []
        for i, f in enumerate(self.data.pool):
            t = f.truth
            out.append(Detections(t.xyxy.copy(), np.full(len(t), 0.9 if i % 2 == 0 else 0.5, np.float32),
                                  t.class_id.copy(), np.eye(5, dtype=np.float32)[t.class_id] * 0.9))
        return out, emb

    monkeypatch.setattr(al.Runner, "_score_pool", good_champion)
    al.run_benchmark(cfg4, tmp_path / "al5.json", tmp_path / "c5.png", tmp_path / "r5.png", log=lambda m: None)
    pseudo_dir = f"default-{al.selection_key(load_settings(cfg.config).selection)}"
    assert pseudo_dir not in (default_dir, pooled_dir) and len(calls) == 1
    r1 = json.loads((runner_root / "runs" / pseudo_dir / "s0" / "r1.json").read_text())
    pl = r1["pseudo_labels"]
    assert pl["stood_down"] is None and 0 < pl["frames"] <= 2 * cfg4.budget and "images" not in pl
    paid = set(r1["new_frames_idx"]) | set(r1["control_idx"])
    train = calls[0]["train"]
    assert len(train) == 5 + r1["new_frames"] + pl["frames"]  # seed set + labelled + pseudo-labelled
    pseudo_imgs = [t for t in train if "/pseudo/r1/images/" in t]
    assert len(pseudo_imgs) == pl["frames"]
    boxes = sum(len(Path(t.replace("/images/", "/labels/")).with_suffix(".txt").read_text().splitlines())
                for t in pseudo_imgs)
    assert boxes == pl["boxes"] > 0
    assert r1["cumulative"]["frames"] == r1["new_frames"] and len(paid) == r1["cumulative"]["frames_paid"]
    index = {al.labelled_name(f): i for i, f in enumerate(pools[0])}
    assert all(index[Path(t).name] % 2 == 0 and index[Path(t).name] not in paid for t in pseudo_imgs)
    acts = pl["actions_to_truth"]  # the truth itself: every box verified, nothing to draw or delete
    assert acts == {**acts, "frames": pl["frames"], "verify": pl["boxes"], "draw": 0, "delete": 0, "adjust": 0}
    for k in ("ENABLED", "PER_BUDGET"):
        monkeypatch.delenv(f"DETLOOP_SELECTION__PSEUDO_LABELS__{k}")
    calls.clear()
    # a given bootstrap model replaces the bootstrap training
    cfg2 = BenchConfig(**{**cfg.__dict__, "arms": ["random"], "rounds": 1, "bootstrap_weights": str(random_pt)})
    assert cfg2.run_key() != cfg.run_key()
    al.run_benchmark(cfg2, tmp_path / "al2.json", tmp_path / "c2.png", tmp_path / "r2.png", log=lambda m: None)
    assert len(calls) == 2 and all(c["init"] is not None for c in calls)  # random r1 + control r1, no bootstrap


def test_runner_on_a_yolo_folder_with_an_untrained_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--data mode: any YOLO dataset (here: world frames copied into a foreign layout with clashing names)."""
    import shutil

    import torch
    from ultralytics.nn.tasks import DetectionModel

    import benchmarks.al as al

    classes = ["disc", "square", "triangle", "ring", "star"]
    world = render_world(tmp_path / "w", REPO / "configs" / "world.yaml", classes, 0,
                         {"seed": 4, "pool": 8, "eval": 3, "val": 1})
    root = tmp_path / "mine"
    for split, frames in (("train", world.seed), ("pool/a", world.pool[:4]), ("pool/b", world.pool[4:]),
                          ("test", world.eval)):
        for i, f in enumerate(frames):  # pool/a and pool/b both hold img0..img3
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            shutil.copy(f.image, root / "images" / split / f"img{i}.jpg")
            (root / "labels" / split / f"img{i}.txt").write_text(f.truth.to_yolo_txt(f.width, f.height))
    (root / "data.yaml").write_text("names: {0: disc, 1: square, 2: triangle, 3: ring, 4: star}\n"
                                    "train: images/train\npool: images/pool\ntest: images/test\n")
    net = DetectionModel("yolo11n.yaml", nc=5, verbose=False)
    pt = tmp_path / "untrained.pt"
    torch.save({"model": net, "train_args": {}}, pt)
    trained_lists: list[list[str]] = []

    def fake_train(cfg: Any, data_yaml: Path, init: Path | None, *a: Any) -> tuple[Path, float]:
        import yaml

        trained_lists.append(Path(yaml.safe_load(Path(data_yaml).read_text())["train"]).read_text().split())
        return pt, 0.0

    monkeypatch.setattr(al, "train_once", fake_train)
    cfg = BenchConfig(arms=["random", "entropy_sum"], seeds=[0], rounds=1, budget=8, data=str(root / "data.yaml"),
                      config=str(REPO / "configs" / "test.yaml"), work_dir=str(tmp_path / "work"), threads=1)
    s = al.run_benchmark(cfg, tmp_path / "al.json", tmp_path / "c.png", tmp_path / "r.png", log=lambda m: None)
    assert s["source"]["kind"] == "yolo" and s["data"]["pool"]["frames"] == 8
    # the whole pool (8 frames, 4 pairs of equal file names) was labelled: 8 distinct files with labels
    for lst in trained_lists[1:3]:
        added = lst[4:]
        assert len(added) == 8 and len(set(added)) == 8
        assert all(Path(p.replace("/images/", "/labels/")).with_suffix(".txt").is_file() for p in added)


def test_comparing_one_arm_across_two_results_pairs_seeds(tmp_path: Path) -> None:
    from benchmarks.al import compare_results, compare_summaries, compare_table

    arms = ["random", "entropy_sum", CONTROL]
    base_t = {"random": [[0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4]],
              "entropy_sum": [[0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4]],
              CONTROL: [[0.1, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.1]]}
    # the variant gains 0.02 on seed 0 and 0.04 on seed 1 in the last round, nothing before
    var_t = {**base_t, "entropy_sum": [[0.1, 0.2, 0.3, 0.42], [0.1, 0.2, 0.3, 0.44]]}
    bpf = {"random": 6.0, "entropy_sum": 6.0, CONTROL: 0.0}
    base = json.loads(json.dumps(summarize(FakeRunner(base_t, bpf, tmp_path), arms, 1.0)))  # type: ignore[arg-type]
    var = json.loads(json.dumps(summarize(FakeRunner(var_t, bpf, tmp_path), arms, 1.0)))  # type: ignore[arg-type]
    cmp = compare_summaries(base, var, "entropy_sum")
    assert cmp["seeds"] == [0, 1]
    last = cmp["by_round"][-1]["map"]
    assert last["diff_mean"] == pytest.approx(0.03) and last["diff_by_seed"] == {0: 0.02, 1: 0.04}
    assert last["ci"][0] == pytest.approx(0.02) and last["ci"][1] == pytest.approx(0.04)
    assert cmp["by_round"][1]["map"]["diff_mean"] == pytest.approx(0.0)
    assert cmp["by_round"][-1]["small_map"]["diff_mean"] == pytest.approx(0.015)  # small AP = map / 2 here
    assert cmp["by_round"][-1]["rare_map"]["diff_mean"] is None  # the rare class (ring) has no AP here
    # the variant reaches the base's final mAP50-95 (0.4) with fewer frames: efficiency above 1
    assert cmp["efficiency_vs_base"]["frames:map"]["value"] > 1.0
    assert "+0.0300 [+0.0200, +0.0400]" in compare_table(cmp)
    # comparing a result with itself: zero everywhere
    same = compare_summaries(base, base, "entropy_sum")
    assert all(r["map"]["diff_mean"] == 0 for r in same["by_round"])
    # refused: different runs, a missing arm
    with pytest.raises(DataError, match="different runs"):
        compare_summaries(base, {**var, "run_key": "other"}, "entropy_sum")
    with pytest.raises(DataError, match="arm 'default' is not in the base"):
        compare_summaries(base, var, "default")
    (tmp_path / "b.json").write_text(json.dumps(base))
    (tmp_path / "v.json").write_text(json.dumps(var))
    out = compare_results(tmp_path / "b.json", tmp_path / "v.json", tmp_path / "cmp.json", "entropy_sum")
    assert json.loads((tmp_path / "cmp.json").read_text())["by_round"] == json.loads(json.dumps(out["by_round"]))


def test_truth_errors_arm_picks_by_the_current_models_mistakes(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The ceiling arm ranks the unlabelled pool by the round's model's pre-annotations against the truth,
    pays no control frame, and is refused nowhere a strategy is accepted."""
    import torch
    from ultralytics.nn.tasks import DetectionModel

    import benchmarks.al as al
    from detloop.label_cost import count_actions

    classes = ["disc", "square", "triangle", "ring", "star"]
    net = DetectionModel("yolo11n.yaml", nc=len(classes), verbose=False)
    pt = tmp_path / "untrained.pt"
    torch.save({"model": net, "train_args": {}}, pt)
    monkeypatch.setattr(al, "train_once", lambda *a, **k: (pt, 0.0))
    assert check_arms(["truth_errors", "random"]) == ["random", "truth_errors"]
    cfg = BenchConfig(arms=["random", "truth_errors"], seeds=[0], rounds=1, budget=3, epochs=1, bootstrap_epochs=1,
                      sizes={"seed": 3, "pool": 10, "eval": 3, "val": 1}, config=str(REPO / "configs" / "test.yaml"),
                      work_dir=str(tmp_path / "work"), threads=1)
    s = al.run_benchmark(cfg, tmp_path / "al.json", tmp_path / "c.png", tmp_path / "r.png", log=lambda m: None)
    rec = json.loads((Path(s["outputs"]["work_dir"]) / "runs" / "truth_errors" / "s0" / "r1.json").read_text())
    assert rec["control_idx"] == [] and len(rec["new_frames_idx"]) == 3
    assert rec["selection"]["strategy"].startswith("truth_errors")
    runner = al.Runner(cfg, log=lambda m: None, preflight=False)
    pool = runner.data.pool
    pre = runner.pre_annotations(runner.weights_path("bootstrap", 0, 0), list(range(len(pool))))
    cost = runner.settings.labelling_cost
    acts = [count_actions(p, f.truth, cost) for p, f in zip(pre, pool, strict=True)]
    score = [(a.adjust + a.draw + a.delete) / a.seconds(cost) for a in acts]
    worst_picked = min(score[i] for i in rec["new_frames_idx"])
    assert all(score[i] <= worst_picked for i in range(len(pool)) if i not in rec["new_frames_idx"])
    assert len({score[i] for i in range(len(pool))}) > 1  # the pool's frames differ: the ranking had work to do


def test_the_bench_fits_the_last_rounds_ledgers_as_the_flow_does() -> None:
    from detloop.label_cost import OutcomeTally
    from detloop.settings import CostCalibrationSettings

    def ledger(adjusted: int) -> dict:
        t = OutcomeTally(frames=10)
        t.shown[5] = [0, adjusted, 10 - adjusted]
        return t.to_dict()

    cal = CostCalibrationSettings(prior_boxes=0, rounds=2)
    assert fitted_rates([ledger(10)], None) is None and fitted_rates([{}, {}], cal) is None
    r = fitted_rates([ledger(0), ledger(10), {}, ledger(0)], cal)  # the last 2 ledgers; a round without one skipped
    assert r.boxes == 20 and r.shown[5, 1] == pytest.approx(0.5)
