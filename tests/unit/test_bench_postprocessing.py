"""Crowds and small-objects benchmark (issue 17): configuration table, paired bootstrap, table (pure, no model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.postprocessing import (
    AREA,
    coco_ap_ar,
    coco_matches,
    config_table,
    delta_ci,
    markdown_table,
    metrics_stat,
    paired_bootstrap,
    verdict,
)
from detloop.detections import Detections
from detloop.settings import load_settings
from tasks.evaluation import compute_metrics

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["a", "b"]


def det(boxes: list[list[float]], cls: list[int], conf: list[float] | None = None) -> Detections:
    return Detections(xyxy=np.asarray(boxes, float).reshape(-1, 4),
                      confidence=np.asarray(conf if conf is not None else [1.0] * len(cls), float),
                      class_id=np.asarray(cls, np.int64))


def frames(n: int) -> list[Detections]:
    """``n`` frames of two or three boxes (one small), different per frame."""
    out = []
    for i in range(n):
        x = 10.0 + 7 * i
        boxes = [[x, 10, x + 60, 70], [x + 100, 20, x + 120, 40]] + ([[300, 300, 380, 360]] if i % 2 else [])
        out.append(det(boxes, [0, 1] + ([0] if i % 2 else [])))
    return out


def test_the_table_has_one_baseline_and_every_configuration_loads_as_settings() -> None:
    table = config_table(tile=320, overlap=64)
    names = [c.name for c in table]
    assert len(set(names)) == len(names)
    assert [c.name for c in table if c.baseline is None] == ["hard@320"]
    assert all(c.baseline in names for c in table if c.baseline is not None)
    by = {c.name: c for c in table}
    assert by["whole@640"].input_size == 640 and by["hard@320"].input_size == 320
    for c in table:
        ms = load_settings(REPO / "configs" / "test.yaml", env={}, overrides={"model": c.model}).model
        tiled = ms.tile_spec("cam1")
        assert (tiled is not None) == ("tiles" in c.name)
        if tiled is not None:
            assert (tiled.tile, tiled.overlap, tiled.full_frame) == (320, 64, c.name.endswith("+full@320"))
        assert ms.nms.method == {"gaussian@320": "gaussian", "linear@320": "linear"}.get(c.name, "hard")


def test_identical_predictions_have_a_zero_interval() -> None:
    gts = frames(12)
    preds = [det(g.xyxy + 1.5, g.class_id.tolist(), [0.9] * len(g)) for g in gts]
    reps = paired_bootstrap(len(gts), metrics_stat(gts, [preds, list(preds)], len(CLASSES)), replicates=20, seed=1)
    assert reps.shape == (20, 8)
    for k in range(4):  # mAP, AR, small AP, small AR
        assert delta_ci(reps, 4 + k, k) == (0.0, 0.0)


def test_a_strictly_better_configuration_has_an_interval_above_zero() -> None:
    gts = frames(16)
    good = [det(g.xyxy, g.class_id.tolist(), [0.9] * len(g)) for g in gts]
    # worse: every frame's first box is missed and a confident false alarm is added
    bad = [det(np.vstack([g.xyxy[1:], [[500, 400, 540, 440]]]), [*g.class_id[1:].tolist(), 0],
               [0.9] * (len(g) - 1) + [0.95]) for g in gts]
    reps = paired_bootstrap(len(gts), metrics_stat(gts, [bad, good], len(CLASSES)), replicates=30, seed=0)
    lo, hi = delta_ci(reps, 4, 0)  # mAP of good minus bad
    assert 0 < lo <= hi
    assert verdict(lo, hi) == "wins"
    lo_r, hi_r = delta_ci(reps, 0, 4)
    assert verdict(lo_r, hi_r) == "loses"


def test_the_bootstrap_is_paired_one_resample_for_all_configurations() -> None:
    x = np.random.default_rng(3).normal(size=50)

    def stat(idx: np.ndarray) -> np.ndarray:  # two configurations: the second is the first + 0.1 on every frame
        return np.array([x[idx].mean(), x[idx].mean() + 0.1])

    reps = paired_bootstrap(50, stat, replicates=100, seed=0)
    lo, hi = delta_ci(reps, 1, 0)
    assert lo == pytest.approx(0.1) and hi == pytest.approx(0.1)  # unpaired resamples would spread it widely
    assert reps[:, 0].std() > 0.05  # the resamples do differ
    assert verdict(lo - 0.3, hi - 0.2) == "loses" and verdict(-0.01, 0.02) == "noise"


def test_delta_ci_skips_replicates_with_an_undefined_ap() -> None:
    reps = np.array([[0.5, 0.6], [np.nan, 0.7], [0.4, 0.6]])
    lo, hi = delta_ci(reps, 1, 0)
    assert 0.1 <= lo <= hi <= 0.2
    assert all(np.isnan(delta_ci(np.full((3, 2), np.nan), 1, 0)))


def test_result_table_renders_baselines_deltas_costs_and_missing_values() -> None:
    rows = [
        {"config": "hard@320", "slice": "A crowded (50)", "ap": 0.5, "ar": 0.6, "delta": None, "ci": None,
         "ms_per_frame": 20.0, "cost_ratio": 1.0},
        {"config": "gaussian@320", "slice": "A crowded (50)", "ap": 0.512, "ar": 0.65, "delta": 0.012,
         "ci": [-0.004, 0.03], "ms_per_frame": 21.04, "cost_ratio": 1.052},
        {"config": "tiles", "slice": "B small (9 boxes)", "ap": None, "ar": None, "delta": None, "ci": None,
         "ms_per_frame": None, "cost_ratio": None},
    ]
    lines = markdown_table(rows).splitlines()
    assert len(lines) == 5 and lines[0].startswith("| config | slice")
    assert "| hard@320 | A crowded (50) | 0.500 | 0.600 | baseline | 20.0 | 1.00x |" == lines[2]
    assert "| +0.012 [-0.004, +0.030] | 21.0 | 1.05x |" in lines[3]
    assert "| n/a | n/a | baseline |  |  |" in lines[4]


@pytest.mark.parametrize("resample", [False, True])
def test_the_bootstraps_fast_ap_is_compute_metrics_ap(resample: bool) -> None:
    """Matching once and re-accumulating with frame weights gives COCO's numbers (faster-coco-eval) exactly,
    for every frame once and for a resample with repeats."""
    rng = np.random.default_rng(0)

    def boxes(n: int) -> np.ndarray:
        xy = rng.uniform(0, 200, (n, 2))
        return np.hstack([xy, xy + rng.uniform(8, 60, (n, 2))])

    gts = [det(boxes(8), rng.integers(0, 2, 8).tolist()) for _ in range(40)]
    preds = []
    for g in gts:  # jittered truth + false alarms, random scores
        b = np.vstack([g.xyxy + rng.normal(0, 3, g.xyxy.shape), boxes(10)])
        preds.append(det(b, [*g.class_id.tolist(), *rng.integers(0, 2, 10).tolist()], rng.uniform(0, 1, 18).tolist()))
    idx = rng.integers(0, 40, 40) if resample else np.arange(40)
    ref = compute_metrics("ref", [gts[i] for i in idx], [preds[i] for i in idx], CLASSES, min_instances=1)
    w = np.bincount(idx, minlength=40)
    ap, ar = coco_ap_ar(coco_matches(gts, preds, 2, AREA["all"]), w)
    sap, sar = coco_ap_ar(coco_matches(gts, preds, 2, AREA["small"]), w)
    assert ap == pytest.approx(ref.overall.map, abs=1e-12) and ar == pytest.approx(ref.overall.ar, abs=1e-12)
    assert sap == pytest.approx(ref.per_size["small"].map, abs=1e-12)
    assert sar == pytest.approx(ref.per_size["small"].ar, abs=1e-12)
    assert 0 < ap < 1 and 0 < sap < 1


def test_the_model_key_holds_the_family_and_keeps_yolo11n_caches(tmp_path: Path) -> None:
    from benchmarks.al_data import BenchFrame
    from benchmarks.postprocessing import BenchConfig, Prepared, model_key

    img = tmp_path / "f.jpg"
    img.write_bytes(b"x")
    fr = BenchFrame("f", str(img), det([[0, 0, 5, 5]], [0]), 640, 480, "cam0")
    prep = Prepared(CLASSES, [fr], [fr], [fr], tmp_path)
    legacy = model_key(BenchConfig(), prep, "yolo11n.yaml")
    assert legacy == model_key(BenchConfig(), prep)  # caches made before the key held the family stay valid
    assert model_key(BenchConfig(), prep, "yolo11n-p2.yaml") != legacy
    assert model_key(BenchConfig(epochs=BenchConfig().epochs + 1), prep, "yolo11n.yaml") != legacy
