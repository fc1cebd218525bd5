"""Label-free accuracy estimates (ATC and flip agreement): hand-computed values, calibration, agreement (pure)."""

from __future__ import annotations

import numpy as np
import pytest

from detloop.detections import Detections
from tasks.label_free import (
    DayStats,
    agreement,
    atc_share,
    atc_threshold,
    calibrate,
    cross_validated_atc_weight,
    detection_confidences,
    doc_estimate,
    estimate,
    flip_agreement,
    from_confidences,
)


def _dets(boxes: list[list[float]], conf: list[float], cls: list[int]) -> Detections:
    if not boxes:
        return Detections.empty()
    return Detections(xyxy=np.array(boxes, np.float64), confidence=np.array(conf), class_id=np.array(cls))


def test_atc_threshold_reproduces_the_calibration_accuracy() -> None:
    conf = np.linspace(0.3, 0.95, 101)
    for target in (0.2, 0.5, 0.73, 0.9):
        t = atc_threshold(conf, target)
        assert atc_share(conf, t) == pytest.approx(target, abs=0.5 / conf.size + 1e-9)  # k of M detections: within half a detection
    assert np.isnan(atc_threshold(np.zeros(0), 0.5)) and np.isnan(atc_share(np.zeros(0), 0.5))
    assert np.isnan(atc_share(conf, float("nan")))


def test_atc_estimate_falls_when_confidences_fall() -> None:
    rng = np.random.default_rng(0)
    source = rng.beta(6, 2, 2000)  # confident champion
    cal = calibrate(DayStats(source, np.full(50, 0.9)), 0.7)
    same = estimate(DayStats(rng.beta(6, 2, 2000), np.full(50, 0.9)), cal)
    unsure = estimate(DayStats(rng.beta(3, 3, 2000), np.full(50, 0.9)), cal)
    assert same["atc"] == pytest.approx(0.7, abs=0.03)
    assert unsure["atc"] < 0.4  # a shifted day: the estimate moves with the confidences
    assert same["flip"] == pytest.approx(0.7)  # flip agreement unchanged -> calibration mAP


def test_doc_moves_with_the_mean_confidence_and_atc_doc_averages_the_two() -> None:
    conf = np.array([0.4, 0.6, 0.8])
    assert doc_estimate(conf, 0.5, 0.7) == pytest.approx(0.5 + 0.6 - 0.7)
    assert doc_estimate(conf, 0.95, 0.2) == 1.0 and doc_estimate(conf, 0.1, 0.9) == 0.0  # clipped to [0, 1]
    assert np.isnan(doc_estimate(np.zeros(0), 0.5, 0.7)) and np.isnan(doc_estimate(conf, 0.5, float("nan")))
    atc = 2 / 3  # 0.6 and 0.8 at or above 0.55
    assert from_confidences(conf, "atc", 0.55, 0.5, 0.7) == pytest.approx(atc)
    assert from_confidences(conf, "doc", 0.55, 0.5, 0.7) == pytest.approx(0.4)
    assert from_confidences(conf, "atc_doc", 0.55, 0.5, 0.7) == pytest.approx((atc + 0.4) / 2)
    # without DoC's calibration (a live record from before it existed) the mean is ATC alone
    assert from_confidences(conf, "atc_doc", 0.55, 0.5, float("nan")) == pytest.approx(atc)
    assert np.isnan(from_confidences(np.zeros(0), "atc_doc", 0.55, 0.5, 0.7))
    with pytest.raises(ValueError, match="one of atc, doc, atc_doc, weighted"):
        from_confidences(conf, "flip", 0.55, 0.5, 0.7)


def test_atc_weight_follows_the_estimator_that_predicts_left_out_cameras() -> None:
    rng = np.random.default_rng(2)
    # a weak champion: every camera's confidences crowd around 0.33 (slightly shifted per camera), mAP50 0.5
    # everywhere; ATC calibrated on the others swings with the shift, DoC barely moves -> DoC gets the weight
    weak = [(rng.normal(0.33 + d, 0.02, 400), 0.5, 50) for d in (-0.02, 0.0, 0.02, 0.01)]
    assert cross_validated_atc_weight(weak) < 0.2
    # a world ATC describes: each camera's mAP50 is its share of boxes above 0.7, with equal mean confidence
    # (0.6) and different spreads -> DoC cannot tell the cameras apart, ATC can
    spreads = [rng.uniform(0.3, 0.9, 400), np.clip(rng.normal(0.6, 0.05, 400), 0, 1),
               np.concatenate([rng.normal(0.4, 0.02, 200), rng.normal(0.8, 0.02, 200)])]
    atc_world = [(c, float(np.mean(c >= 0.7)), 50) for c in spreads]
    assert cross_validated_atc_weight(atc_world) > 0.8
    assert cross_validated_atc_weight(weak[:1]) is None  # nothing to leave out
    assert cross_validated_atc_weight([weak[0], (np.zeros(0), 0.5, 50)]) is None  # an empty camera is no group
    cal = calibrate(DayStats(np.concatenate([c for c, _, _ in weak]), np.zeros(0)), 0.5, atc_weight=0.1)
    e = estimate(DayStats(weak[0][0], np.zeros(0)), cal)
    assert e["weighted"] == pytest.approx(0.1 * e["atc"] + 0.9 * e["doc"])
    assert calibrate(DayStats(weak[0][0], np.zeros(0)), 0.5).atc_weight != calibrate(  # NaN: equal weights
        DayStats(weak[0][0], np.zeros(0)), 0.5).atc_weight
    assert from_confidences(weak[0][0], "weighted", cal.threshold, 0.5, cal.mean_confidence, None) == \
        pytest.approx(e["atc_doc"])


def test_the_calibration_keeps_the_control_frames_mean_confidence_for_doc() -> None:
    rng = np.random.default_rng(1)
    ctl = rng.beta(6, 2, 1000)
    cal = calibrate(DayStats(ctl, np.full(10, 0.9)), 0.7)
    assert cal.mean_confidence == pytest.approx(ctl.mean())
    day = ctl - 0.1  # every box 0.1 less sure
    e = estimate(DayStats(day, np.full(10, 0.9)), cal)
    assert e["doc"] == pytest.approx(0.6)
    assert e["atc_doc"] == pytest.approx((e["atc"] + e["doc"]) / 2)
    assert e["atc"] < 0.6  # ATC moves more than DoC with the same shift
    assert np.isnan(calibrate(DayStats(np.zeros(0), np.zeros(0)), 0.5).mean_confidence)


def test_flip_agreement_hand_computed() -> None:
    a = _dets([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], [0.9, 0.8, 0.1], [0, 1, 2])
    # matches box 0 (IoU 0.82) and box 1 only in class 0 -> no match; the 0.1 box is below min_confidence
    b = _dets([[1, 0, 11, 10], [20, 20, 30, 30]], [0.7, 0.6], [0, 0])
    assert flip_agreement(a, b, 0.25) == pytest.approx(2 * 1 / (2 + 2))
    assert flip_agreement(a, a, 0.25) == 1.0
    assert flip_agreement(Detections.empty(), Detections.empty(), 0.25) == 1.0
    assert flip_agreement(a, Detections.empty(), 0.25) == 0.0
    assert np.isnan(flip_agreement(a, None, 0.25))
    far = _dets([[0, 0, 10, 10]], [0.9], [0])
    shifted = _dets([[6, 0, 16, 10]], [0.9], [0])  # IoU 0.25 < 0.5
    assert flip_agreement(far, shifted, 0.25) == 0.0
    assert flip_agreement(far, shifted, 0.25, iou=0.2) == 1.0


def test_greedy_matching_takes_each_box_once() -> None:
    a = _dets([[0, 0, 10, 10], [1, 0, 11, 10]], [0.9, 0.9], [0, 0])
    b = _dets([[0, 0, 10, 10]], [0.9], [0])
    assert flip_agreement(a, b, 0.25) == pytest.approx(2 * 1 / 3)


def test_day_stats_and_calibration_from_detections() -> None:
    d = [_dets([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.2], [0, 1]), _dets([], [], [])]
    f = [d[0], None]
    s = DayStats.of(d, f, 0.25)
    assert s.confidences == pytest.approx([0.9]) and np.isnan(s.flip[1]) and s.flip[0] == 1.0
    assert s.mean_flip == 1.0
    assert detection_confidences(d, 0.1) == pytest.approx([0.9, 0.2])
    cal = calibrate(s, 0.6)
    assert cal.map50 == 0.6 and cal.flip == 1.0 and cal.n_frames == 2
    half = DayStats(np.array([0.9]), np.array([0.5, np.nan]))
    e = estimate(half, cal)
    assert e["flip"] == pytest.approx(0.3) and e["combined"] == pytest.approx((e["atc"] + 0.3) / 2)


def test_agreement_counts_within_tolerance_and_skips_nan() -> None:
    a = agreement([0.5, 0.62, 0.9, float("nan")], [0.52, 0.55, 0.7, 0.3])
    assert a["n"] == 3 and a["within"] == pytest.approx(1 / 3)
    assert a["mae"] == pytest.approx((0.02 + 0.07 + 0.2) / 3)
    assert a["pearson_r"] == pytest.approx(float(np.corrcoef([0.5, 0.62, 0.9], [0.52, 0.55, 0.7])[0, 1]))
    assert agreement([], [])["n"] == 0


def test_the_monitor_calibrates_atc_on_the_pooled_control_frames_and_estimates_each_camera_day() -> None:
    from detloop.settings import load_settings
    from flows.drift import DriftRun, camera_day_estimate
    from tasks.drift import Features
    from tasks.live_accuracy import LiveAccuracy, LivePoint, atc_calibration

    s = load_settings("configs/test.yaml", overrides={"drift": {"live_rounds": 1, "min_confidence": 0.25}})
    preds = [_dets([[0, 0, 9, 9]], [c], [0]) for c in (0.3, 0.5, 0.7, 0.9, 0.95)]
    sources = ["round:a", "round:b", "round:b", "round:b", "round:b"]  # only the last round is pooled
    overall = LivePoint("pooled", "all", 4, 4, map=0.4, map50=0.5)
    t, mc, w = atc_calibration(preds, sources, ["round:a", "round:b"], set(), overall, s)
    assert t is not None and atc_share(np.array([0.5, 0.7, 0.9, 0.95], np.float32), t) == pytest.approx(0.5)
    assert mc == pytest.approx(np.mean([0.5, 0.7, 0.9, 0.95])) and w is None  # no cameras: equal weights
    none = (None, None, None)
    # round b a drift round: the last weekly round, a, calibrates (a burst of drift rounds does not starve it)
    assert atc_calibration(preds, sources, ["round:a", "round:b"], {"round:b"}, overall, s) == atc_calibration(
        preds, sources, ["round:a"], set(), overall, s)
    assert atc_calibration(preds, sources, ["round:a", "round:b"], {"round:b"}, overall, s)[1] == pytest.approx(0.3)
    assert atc_calibration(preds, sources, ["round:a", "round:b"], {"round:a", "round:b"}, overall, s) == none
    assert atc_calibration(preds, sources, ["round:b"], set(), None, s) == none  # no live mAP yet
    # two cameras with a pooled point each: ATC's weight is cross-validated between them
    cams = ["cam0", "cam0", "cam0", "cam1", "cam1"]
    points = [overall, LivePoint("pooled", "cam0", 2, 2, map50=0.4), LivePoint("pooled", "cam1", 2, 2, map50=0.6)]
    w2 = atc_calibration(preds, sources, ["round:a", "round:b"], set(), overall, s, cams, points)[2]
    groups = [(np.array([0.5, 0.7]), 0.4, 2), (np.array([0.9, 0.95]), 0.6, 2)]  # round:a's frame is not recent
    assert w2 is not None and w2 == pytest.approx(cross_validated_atc_weight(groups))

    live = LiveAccuracy("1", None, 0.9, atc_threshold=0.8)
    atc_estimate = lambda r, c, d: camera_day_estimate(r, c, d, "atc")  # noqa: E731
    f = Features.empty()
    day = Features(np.array(["cam0", "cam0", "cam1"]), np.array(["2026-01-20"] * 3), np.zeros(3), np.zeros(3),
                   np.array([2, 1, 1]), None, np.array([0, 0, 1, 2]), np.array([0.9, 0.3, 0.85, 0.4]),
                   np.zeros(4, np.int64), np.zeros(4))
    run = DriftRun("2026-01-21", ["2026-01-20"], "1", {}, f, {}, {}, {"2026-01-20": day}, live=live)
    assert atc_estimate(run, "cam0", "2026-01-20") == pytest.approx(2 / 3)  # 0.9, 0.85 of 0.9, 0.3, 0.85
    assert atc_estimate(run, "cam1", "2026-01-20") == 0.0
    assert atc_estimate(run, "cam0", None) is None
    run.live = LiveAccuracy("1", None, 0.9)  # no calibration (e.g. no labelled control arm yet)
    assert atc_estimate(run, "cam0", "2026-01-20") is None
    # DoC needs the calibration's mAP50 and mean confidence: cam0's mean against 0.7 at mAP50 0.5
    run.live = LiveAccuracy("1", None, 0.9, pooled=[overall], atc_threshold=0.8, mean_confidence=0.7)
    doc = 0.5 + (0.9 + 0.3 + 0.85) / 3 - 0.7
    assert camera_day_estimate(run, "cam0", "2026-01-20", "doc") == pytest.approx(doc)
    assert camera_day_estimate(run, "cam0", "2026-01-20", "atc_doc") == pytest.approx((2 / 3 + doc) / 2)
    assert camera_day_estimate(run, "cam0", "2026-01-20") == pytest.approx((2 / 3 + doc) / 2)  # the default
    run.live.atc_weight = 0.25  # cross-validated: the default estimator follows it
    assert camera_day_estimate(run, "cam0", "2026-01-20") == pytest.approx(0.25 * 2 / 3 + 0.75 * doc)
    # the daily estimate goes to MLflow per camera (on days with stats), and the live section says what it rests on
    from flows.drift import label_free_line, metric_rows
    from tasks.drift import CameraDayStats, Verdict

    run.stats = {"2026-01-20": {"cam0": CameraDayStats("cam0", "2026-01-20", 2, 10, 2, 10, "camera", True)}}
    run.verdicts = {"2026-01-20": {"cam0": Verdict("cam0", "2026-01-20", "clean", [])}}
    got = {k: v for k, v, _ in metric_rows(run)}
    assert got["cam0.est_map50"] == pytest.approx(0.25 * 2 / 3 + 0.75 * doc) and "cam1.est_map50" not in got
    assert "ATC's weight beside DoC 0.25 (cross-validated" in label_free_line(run.live)
    assert label_free_line(LiveAccuracy("1", None, 0.9)) == ""
    assert "drift verdicts" not in label_free_line(run.live)
    run.live.atc_weight = 0.05  # a weak champion: the estimate rests on DoC and the report says what that means
    assert "read drops from the drift verdicts" in label_free_line(run.live)
    assert LiveAccuracy.from_dict(live.to_dict()).atc_threshold == 0.8
    assert LiveAccuracy.from_dict({k: v for k, v in live.to_dict().items() if k != "atc_threshold"}).atc_threshold \
        is None  # a live record cached before the field existed still loads
