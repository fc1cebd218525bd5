"""TIDE-style error breakdown (tasks/error_analysis.py): hand-built cases, one box of each error type."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detloop.detections import Detections
from tasks.error_analysis import (
    ERROR_TYPES,
    breakdown,
    classify_image,
    fix_errors,
    flat_metrics,
    markdown,
    slice_failure_weights,
)

CLASSES = ["a", "b"]


def det(rows: list[tuple[float, float, float, float, int, float]]) -> Detections:
    if not rows:
        return Detections.empty()
    a = np.array(rows, dtype=np.float64)
    return Detections(xyxy=a[:, :4], confidence=a[:, 5], class_id=a[:, 4].astype(np.int64))


# ground truth: A, B, F class a; C, D, G class b; E class a (nobody finds it)
GT = det([
    (0, 0, 100, 100, 0, 1.0),  # A
    (200, 0, 300, 100, 0, 1.0),  # B
    (0, 200, 100, 300, 1, 1.0),  # C
    (200, 200, 300, 300, 1, 1.0),  # D
    (400, 0, 450, 50, 0, 1.0),  # E
    (600, 0, 700, 100, 0, 1.0),  # F
    (600, 200, 700, 300, 1, 1.0),  # G
])
PRED = det([
    (0, 0, 100, 100, 0, 0.9),  # tp on A
    (2, 2, 100, 100, 0, 0.8),  # dupe of A
    (200, 0, 300, 100, 1, 0.7),  # cls: on B, wrong class
    (0, 200, 100, 230, 1, 0.6),  # loc: class b on C, IoU 0.3
    (200, 200, 300, 230, 0, 0.5),  # both: class a on D (class b), IoU 0.3
    (500, 500, 550, 550, 0, 0.4),  # bkg
    (600, 0, 700, 100, 0, 0.1),  # tp on F, ranked under every error (so each error costs AP)
    (600, 200, 700, 300, 1, 0.1),  # tp on G
])
EXPECTED = ["tp", "dupe", "cls", "loc", "both", "bkg", "tp", "tp"]


def test_one_box_of_each_error_type() -> None:
    e = classify_image(GT, PRED)
    assert e.pred_type.tolist() == EXPECTED
    assert e.pred_gt.tolist() == [0, 0, 1, 2, 3, -1, 5, 6]
    # E is missed; B and C are explained by the cls and loc errors; D (only a 'both' error) is missed too
    assert e.gt_missed.tolist() == [False, False, False, True, True, False, False]


def test_thresholds_move_the_boundaries() -> None:
    # with fg_iou 0.25 the loc box (IoU 0.3) becomes a true positive of C, the 'both' box a class error on D
    e = classify_image(GT, PRED, fg_iou=0.25, bg_iou=0.1)
    assert e.pred_type[3] == "tp" and e.pred_type[4] == "cls"
    # with bg_iou 0.35 the IoU-0.3 boxes are on background
    e = classify_image(GT, PRED, fg_iou=0.5, bg_iou=0.35)
    assert e.pred_type[3] == "bkg" and e.pred_type[4] == "bkg"


def test_no_ground_truth_is_all_background() -> None:
    e = classify_image(Detections.empty(), PRED)
    assert set(e.pred_type.tolist()) == {"bkg"} and e.gt_missed.size == 0


def test_fixes_do_what_tide_does() -> None:
    e = classify_image(GT, PRED)
    g, p = fix_errors([GT], [PRED], [e], "cls")
    assert p[0].class_id[2] == 0 and len(p[0]) == len(PRED)
    g, p = fix_errors([GT], [PRED], [e], "loc")
    np.testing.assert_allclose(p[0].xyxy[3], GT.xyxy[2])
    for t, gone in (("dupe", 1), ("both", 4), ("bkg", 5)):
        g, p = fix_errors([GT], [PRED], [e], t)
        assert len(p[0]) == len(PRED) - 1 and not any(np.allclose(b, PRED.xyxy[gone]) for b in p[0].xyxy)
    g, p = fix_errors([GT], [PRED], [e], "missed")
    assert len(g[0]) == len(GT) - 2 and len(p[0]) == len(PRED)


def test_a_fixed_prediction_on_a_taken_box_is_removed() -> None:
    gt = det([(0, 0, 100, 100, 0, 1.0)])
    pred = det([(0, 0, 100, 100, 0, 0.9), (0, 0, 100, 100, 1, 0.8)])  # tp, then a class error on the same box
    e = classify_image(gt, pred)
    assert e.pred_type.tolist() == ["tp", "cls"]
    _, p = fix_errors([gt], [pred], [e], "cls")
    assert len(p[0]) == 1 and p[0].confidence[0] == pytest.approx(0.9)


def test_each_error_costs_ap_and_only_its_fix_recovers_it() -> None:
    b = breakdown("golden", [GT], [PRED], CLASSES, min_instances=1)
    g = b["groups"]["all"]
    assert g["ap"] is not None and g["ap"] < 1.0
    for t in ERROR_TYPES:  # every type is present once, so fixing it gains AP
        assert g["dap"][t] > 0, t
    assert sum(g["share"].values()) == pytest.approx(1.0)
    assert g["counts"] == {"cls": 1, "loc": 1, "both": 1, "dupe": 1, "bkg": 1, "missed": 2}
    assert set(b["groups"]) >= {"class_a", "class_b", "size_small", "size_medium", "camera_unknown"}
    # per class: 'missed' costs class a (E) and class b (D); the class error (a box of class a labelled b)
    assert b["groups"]["class_a"]["dap"]["missed"] > 0 and b["groups"]["class_b"]["dap"]["missed"] > 0


def test_a_perfect_model_costs_nothing() -> None:
    b = breakdown("golden", [GT], [GT], CLASSES, min_instances=1)
    g = b["groups"]["all"]
    assert g["ap"] == pytest.approx(1.0)
    assert all(v == pytest.approx(0.0) for v in g["dap"].values())


def test_only_background_errors_cost_only_background() -> None:
    gt = det([(0, 0, 100, 100, 0, 1.0), (200, 0, 300, 100, 0, 1.0)])
    pred = det([(0, 0, 100, 100, 0, 0.5), (200, 0, 300, 100, 0, 0.4), (500, 500, 600, 600, 0, 0.9)])
    g = breakdown("x", [gt], [pred], CLASSES, min_instances=1)["groups"]["all"]
    assert g["dap"]["bkg"] > 0.1
    assert all(g["dap"][t] == pytest.approx(0.0) for t in ERROR_TYPES if t != "bkg")
    assert g["share"]["bkg"] == pytest.approx(1.0)


def test_cameras_and_insufficient_groups() -> None:
    b = breakdown("golden", [GT, GT], [PRED, GT], CLASSES, cameras=["c1", "c2"], min_instances=8)
    assert b["groups"]["camera_c2"]["dap"]["missed"] is None  # 7 instances < 8: insufficient
    assert b["groups"]["all"]["sufficient"]
    m = flat_metrics({"golden": b})
    assert "errors.golden.all.dap_bkg" in m and not any("camera_c2" in k for k in m)
    assert "| all | 14 |" in markdown({"golden": b})


def test_failure_weights_favour_the_weak_class_and_are_capped() -> None:
    b = {"golden": {"groups": {
        "class_a": {"sufficient": True, "ap": 0.9}, "class_b": {"sufficient": True, "ap": 0.1},
        "class_c": {"sufficient": False, "ap": 0.0}, "camera_x": {"sufficient": True, "ap": 0.5}}}}
    w = slice_failure_weights(b, strength=1.0, cap=1.5)
    assert w["class"]["b"] == pytest.approx(1.5) and w["class"]["a"] < 1.0 and "c" not in w["class"]
    assert w["camera"]["x"] == pytest.approx(1.0)
    assert slice_failure_weights(b, strength=0.0)["class"] == {"a": 1.0, "b": 1.0}


def test_the_breakdown_reaches_the_report_the_round_markdown_and_the_run(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from types import SimpleNamespace

    from detloop.settings import Settings
    from flows.loop import _round_markdown
    from tasks.error_analysis import log_breakdown, write_breakdown
    from tasks.evaluation import EvalItem, EvalReport, EvalSlice
    from tests.fakes import FakeRegistry

    settings = Settings(classes=CLASSES, evaluation={"min_instances": 1})
    slices = [EvalSlice("golden", [EvalItem("x.png", GT, "cam1")]), EvalSlice("round", [EvalItem("y.png", GT)])]
    report = EvalReport("champion", {}, predictions={"golden": [PRED], "round": [GT]})
    got = write_breakdown(report, slices, settings, tmp_path)
    assert list(got) == ["golden"]  # 'round' is not among error_analysis.slices
    assert Path(report.plots["champion_errors.png"]).read_bytes()[:4] == b"\x89PNG"
    assert EvalReport.from_dict(report.to_dict()).error_breakdown == report.error_breakdown

    reg = FakeRegistry()
    rid = reg.create_run("round-1", {})
    log_breakdown(reg, rid, report)
    run = reg.runs[rid]
    assert run.metrics["champion_errors.golden.all.dap_missed"] == pytest.approx(got["golden"]["groups"]["all"]["dap"]["missed"])
    assert {"errors/champion_errors.md", "errors/champion_errors.png"} <= set(run.artifacts)

    summary = {"round_id": "r1", "outcome": "passed", "slices": [], "champion_errors": report.error_breakdown}
    md = _round_markdown(summary, SimpleNamespace(to_markdown=lambda: ""))
    assert "Champion errors (TIDE)" in md and "| class_a |" in md
