"""Evaluation metrics against hand-computed COCO APs (101-point interpolation, IoU 0.50:0.95)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detloop.detections import Detections
from tasks.evaluation import best_f1_thresholds, compute_metrics, gate_scores

CLASSES = ["a", "b", "c"]


def det(boxes: list[list[float]], cls: list[int], conf: list[float] | None = None) -> Detections:
    return Detections(xyxy=np.asarray(boxes, float).reshape(-1, 4),
                      confidence=np.asarray(conf if conf is not None else [1.0] * len(cls), float),
                      class_id=np.asarray(cls, np.int64))


def hand_ap(tp_sorted: list[bool], n_gt: int) -> float:
    """COCO 101-point interpolated AP of a ranked TP/FP list."""
    tp = np.cumsum(tp_sorted)
    fp = np.cumsum([not t for t in tp_sorted])
    rec = tp / n_gt
    prec = tp / (tp + fp)
    for i in range(len(prec) - 2, -1, -1):  # precision envelope
        prec[i] = max(prec[i], prec[i + 1])
    out = []
    for r in np.linspace(0, 1, 101):
        idx = np.searchsorted(rec, r, side="left")
        out.append(prec[idx] if idx < len(prec) else 0.0)
    return float(np.mean(out))


def test_hand_computed_class_and_size_aps() -> None:
    # class a: 2 large GT boxes; predictions: exact (0.9), false positive (0.8), exact (0.7) -> TP FP TP
    g0 = det([[0, 0, 100, 100], [200, 200, 300, 300]], [0, 0])
    p0 = det([[0, 0, 100, 100], [400, 400, 500, 500], [200, 200, 300, 300]], [0, 0, 0], [0.9, 0.8, 0.7])
    # class b: one small GT (20x20); prediction shifted so IoU = 0.6? -> use a box with IoU 0.62
    g1 = det([[10, 10, 30, 30]], [1])
    # shift right by d: IoU = (20-d)*20 / (2*400 - (20-d)*20); d=4.7 -> 15.3*20=306/(800-306)=0.619
    p1 = det([[14.7, 10, 34.7, 30]], [1], [0.95])
    m = compute_metrics("s", [g0, g1], [p0, p1], CLASSES, cameras=["cam1", "cam2"], min_instances=1)
    ap_a = hand_ap([True, False, True], 2)
    assert ap_a == pytest.approx((51 * 1.0 + 50 * (2 / 3)) / 101)
    assert m.per_class["a"].map == pytest.approx(ap_a, abs=1e-6)
    assert m.per_class["a"].map50 == pytest.approx(ap_a, abs=1e-6)
    # IoU 0.619 matches at thresholds 0.50, 0.55, 0.60 only -> 3/10 of AP 1.0
    assert m.per_class["b"].map50 == pytest.approx(1.0)
    assert m.per_class["b"].map == pytest.approx(0.3, abs=1e-6)
    assert m.per_class["c"].n_instances == 0 and m.per_class["c"].map is None
    assert m.overall.map == pytest.approx((ap_a + 0.3) / 2, abs=1e-6)
    # size buckets: class b's box is the only small one, class a's are large (100x100 = 10000 > 96^2)
    assert m.per_size["small"].map == pytest.approx(0.3, abs=1e-6)
    assert m.per_size["small"].n_instances == 1
    assert m.per_size["large"].map == pytest.approx(ap_a, abs=1e-6)
    assert m.per_size["medium"].n_instances == 0 and m.per_size["medium"].map is None
    # per camera
    assert m.per_camera["cam1"].map == pytest.approx(ap_a, abs=1e-6)
    assert m.per_camera["cam2"].map == pytest.approx(0.3, abs=1e-6)
    # recall: class a finds both boxes at every IoU -> AR 1; class b 3/10 thresholds
    assert m.per_class["a"].ar == pytest.approx(1.0)
    assert m.per_class["b"].ar == pytest.approx(0.3)


def test_insufficient_data_and_no_predictions() -> None:
    g = [det([[0, 0, 50, 50]], [0]), det([[0, 0, 10, 10], [20, 20, 40, 40]], [1, 1])]
    p = [Detections.empty(3), Detections.empty(3)]
    m = compute_metrics("s", g, p, CLASSES, min_instances=2)
    assert m.overall.map == 0.0 and m.overall.sufficient
    assert not m.per_class["a"].sufficient and m.per_class["b"].sufficient
    assert m.per_class["b"].map == 0.0
    from tasks.evaluation import EvalReport

    s = gate_scores(EvalReport("x", {"golden": m}))
    assert s.golden_map == 0.0 and s.class_ap["a"] is None and s.class_ap["b"] == 0.0
    m2 = compute_metrics("s", g, p, CLASSES, min_instances=50)
    assert not m2.overall.sufficient
    assert gate_scores(EvalReport("x", {"golden": m2})).golden_map is None


def test_perfect_predictions_score_one_and_report_round_trip() -> None:
    rng = np.random.default_rng(0)
    gts, preds = [], []
    for _ in range(10):
        xy = rng.uniform(0, 200, size=(4, 2))
        wh = rng.uniform(5, 150, size=(4, 2))
        boxes = np.hstack([xy, xy + wh])
        cls = rng.integers(0, 3, size=4)
        gts.append(det(boxes.tolist(), cls.tolist()))
        preds.append(det(boxes.tolist(), cls.tolist(), rng.uniform(0.3, 1, 4).tolist()))
    m = compute_metrics("s", gts, preds, CLASSES, min_instances=1)
    assert m.overall.map == pytest.approx(1.0)
    from tasks.evaluation import EvalReport

    r = EvalReport("x", {"s": m}, {"a": 0.5})
    assert EvalReport.from_dict(r.to_dict()) == r
    assert r.flat_metrics()["s.all.map"] == pytest.approx(1.0)


def test_best_f1_threshold() -> None:
    # GT: 2 boxes of class a. preds: TP 0.9, FP 0.6, TP 0.5, FP 0.3; F1 = 2TP / (n_pred + n_gt):
    # at 0.9: 2/3=.667, at 0.6: 2/4=.5, at 0.5: 4/5=.8, at 0.3: 4/6=.667 -> 0.5
    g = [det([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0])]
    p = [det([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30], [70, 70, 80, 80]], [0, 0, 0, 0],
             [0.9, 0.6, 0.5, 0.3])]
    th = best_f1_thresholds(g, p, CLASSES)
    assert th["a"] == pytest.approx(0.5)
    assert th["b"] == 0.25  # no ground truth: default
    # a third GT matched by the 0.3 box: at 0.5: 4/6=.667, at 0.3: 6/7=.857 -> 0.3
    g2 = [det([[0, 0, 10, 10], [20, 20, 30, 30], [70, 70, 80, 80]], [0, 0, 0])]
    assert best_f1_thresholds(g2, p, CLASSES)["a"] == pytest.approx(0.3)


def test_a_32x32_box_is_counted_and_scored_in_both_small_and_medium() -> None:
    """COCO's area ranges are closed at both ends: the counts use the same ranges the AP is scored with."""
    gts = [det([[0, 0, 32, 32]], [0])]  # area exactly 32**2
    hit = [det([[0, 0, 32, 32]], [0], [0.9])]
    m = compute_metrics("s", gts, hit, CLASSES, min_instances=1)
    for bucket in ("small", "medium"):
        assert m.per_size[bucket].n_instances == 1 and m.per_size[bucket].sufficient, bucket
        assert m.per_size[bucket].map == pytest.approx(1.0), bucket
    assert m.per_size["large"].n_instances == 0 and m.per_size["large"].map is None
    missed = compute_metrics("s", gts, [det([], [])], CLASSES, min_instances=1)  # the no-prediction path too
    assert missed.per_size["small"].n_instances == missed.per_size["medium"].n_instances == 1
    assert missed.per_size["small"].map == missed.per_size["medium"].map == 0.0


def test_one_coco_pass_when_there_is_one_camera(monkeypatch: pytest.MonkeyPatch) -> None:
    import tasks.evaluation as ev

    calls = []
    real = ev._coco_eval
    monkeypatch.setattr(ev, "_coco_eval", lambda *a: calls.append(1) or real(*a))
    gts = [det([[0, 0, 50, 50]], [0]), det([[10, 10, 60, 60]], [1])]
    preds = [det([[0, 0, 50, 50]], [0], [0.9]), det([[10, 10, 60, 60]], [1], [0.8])]
    m = compute_metrics("s", gts, preds, CLASSES, min_instances=1)
    assert len(calls) == 1 and m.per_camera["unknown"].map == m.overall.map
    compute_metrics("s", gts, preds, CLASSES, cameras=["cam1", "cam2"], min_instances=1)
    assert len(calls) == 1 + 3  # the slice, then one pass per camera


# ---- the plots of an evaluated model (tasks/eval_plots.py) ------------------------------------------------
def _d(boxes: list[list[float]], cls: list[int], conf: list[float] | None = None) -> Detections:
    return Detections(xyxy=np.array(boxes, np.float32).reshape(-1, 4), confidence=np.array(conf or [1.0] * len(cls)),
                      class_id=np.array(cls))


def test_confusion_matrix_counts_hits_confusions_misses_and_false_alarms() -> None:
    from tasks.evaluation import confusion_matrix

    gt = [_d([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], [0, 1, 2])]
    pr = [_d([[0, 0, 10, 10], [20, 20, 30, 31], [80, 80, 90, 90], [50, 50, 60, 60]], [0, 0, 1, 2],
             [0.9, 0.8, 0.7, 0.1])]
    m = confusion_matrix(gt, pr, 3, [0.5, 0.5, 0.5])  # the class-2 box at 0.1 is under its threshold
    assert m[0, 0] == 1 and m[0, 1] == 1  # a hit, and a class-1 box predicted as class 0
    assert m[3, 2] == 1  # the class-2 box was missed (background row)
    assert m[1, 3] == 1  # a false alarm of class 1 (background column)
    assert m.sum() == 4


def test_pr_curve_is_monotone_in_recall_and_ends_at_the_share_found() -> None:
    from tasks.evaluation import pr_curve

    gt = [_d([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0])]
    pr = [_d([[0, 0, 10, 10], [100, 100, 110, 110], [20, 20, 30, 30]], [0, 0, 0], [0.9, 0.8, 0.7])]
    rec, prec, conf = pr_curve(gt, pr, 0)
    np.testing.assert_allclose(rec, [0.5, 0.5, 1.0])
    np.testing.assert_allclose(prec, [1.0, 0.5, 2 / 3])
    np.testing.assert_allclose(conf, [0.9, 0.8, 0.7])


def test_eval_plots_are_written(tmp_path: Path) -> None:
    import cv2

    from tasks.eval_plots import write_eval_plots

    img = tmp_path / "f.png"
    cv2.imwrite(str(img), np.full((60, 80, 3), 200, np.uint8))
    gt = [_d([[5, 5, 30, 30]], [1])]
    pr = [_d([[6, 5, 30, 31], [50, 10, 70, 40]], [1, 0], [0.8, 0.6])]
    out = write_eval_plots(tmp_path / "plots", [str(img)], gt, pr, ["a", "b"], {"a": 0.5, "b": 0.5}, "challenger")
    assert set(out) == {"confusion_matrix.png", "pr_curves.png", "golden_frames.png"}
    assert all(Path(p).read_bytes()[:4] == b"\x89PNG" for p in out.values())


def test_gate_scores_read_the_gate_metric() -> None:
    """A box found but loosely drawn (IoU 0.7) counts fully at IoU 0.5 and partly in mAP50-95: ``gate.metric``
    picks which of the two every gate check compares."""
    from tasks.evaluation import EvalReport
    from tasks.promotion import ModelScores, decide

    g = [det([[0, 0, 100, 100]], [0]), det([[0, 0, 100, 100]], [1])]
    loose = [det([[0, 0, 70, 100]], [0], [0.9]), det([[0, 0, 70, 100]], [1], [0.9])]  # IoU 0.70
    m = compute_metrics("golden", g, loose, CLASSES, min_instances=1)
    rep = EvalReport("challenger", {"golden": m})
    s50, s = gate_scores(rep, metric="map50"), gate_scores(rep)
    assert s50.golden_map == pytest.approx(1.0) and s50.class_ap["a"] == pytest.approx(1.0)
    assert s.golden_map == pytest.approx(m.overall.map) and s.golden_map < 0.6
    with pytest.raises(ValueError, match="map, map50"):
        gate_scores(rep, metric="map75")
    # the reasons name the metric the gate compared
    champ = ModelScores(1.0, {"a": 1.0})
    from detloop.settings import GateSettings

    d = decide(s50, champ, GateSettings(metric="map50"))
    assert d.passed
    d = decide(s, champ, GateSettings(metric="map"))
    assert not d.passed and d.reasons[0].startswith("golden mAP50-95 ")
    d = decide(ModelScores(0.5, {"a": 0.4}), champ, GateSettings(metric="map50"))
    assert d.reasons[0].startswith("golden mAP50 0.5000") and any("class a AP50 0.4000" in r for r in d.reasons)


def test_latency_models_take_turns_frame_by_frame_so_a_burst_of_load_slows_both() -> None:
    """Two equally fast models; the machine is 3x slower for a stretch of the measurement (a service restarting).
    Timed in turns frame by frame, both see the burst alike and their medians agree; timed one model over all
    frames after the other (the old way), the burst lands on one model and it looks 3x slower."""
    from tasks.evaluation import interleaved_times

    now = [0.0]

    def clock() -> float:
        return now[0]

    def run(j: int, i: int) -> None:
        slow = 0.5 <= now[0] < 1.5  # the burst: seconds 0.5 to 1.5 of the measurement
        now[0] += 0.03 if slow else 0.01

    a, b = interleaved_times(2, 40, 3, run, clock)
    assert len(a) == len(b) == 120
    assert float(np.median(a)) == pytest.approx(float(np.median(b)))
    assert float(np.median(a)) == pytest.approx(10.0)  # the burst covers under half of the timings

    now[0] = 0.0
    block: list[list[float]] = [[], []]
    for j in (0, 1):  # one model over all frames, then the other
        for i in range(40):
            t0 = clock()
            run(j, i)
            block[j].append((clock() - t0) * 1000)
    assert float(np.median(block[1])) / float(np.median(block[0])) > 2.5
