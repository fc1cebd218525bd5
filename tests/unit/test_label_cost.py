"""The labelling cost model: action counts from pre-annotations vs final boxes, seconds, expected seconds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detloop.detections import Detections
from detloop.errors import ConfigError
from detloop.label_cost import (
    ADJUST,
    DELETE,
    OUTCOME_BINS,
    VERIFY,
    LabelActions,
    OutcomeTally,
    count_actions,
    expected_seconds,
    fit_outcome_rates,
    match_outcomes,
)
from detloop.settings import LabellingCostSettings, load_settings

COST = LabellingCostSettings()


def dets(boxes: list[list[float]], classes: list[int]) -> Detections:
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    return Detections(xyxy=b, confidence=np.ones(len(b), np.float32), class_id=np.asarray(classes, np.int64))


def test_each_action_is_counted() -> None:
    final = dets([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50], [60, 60, 70, 70]], [0, 0, 1, 0])
    pre = dets([[0, 0, 10, 10],  # exact, same class: verify
                [20, 20, 30, 34],  # IoU 0.71 ... adjusted below because of the class
                [40, 40, 50, 56],  # IoU 0.625: adjust
                [90, 90, 99, 99]],  # nothing there: delete
               [0, 1, 1, 0])
    a = count_actions(pre, final, COST)
    assert a == LabelActions(frames=1, verify=1, adjust=2, draw=1, delete=1)
    assert a.seconds(COST) == pytest.approx(3.0 + 1.6 + 2 * 4.0 + 7.0 + 1.0)


def test_no_pre_annotations_means_drawing_everything() -> None:
    final = dets([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 1])
    a = count_actions(dets([], []), final, COST)
    assert (a.verify, a.adjust, a.draw, a.delete) == (0, 0, 2, 0)
    assert count_actions(final, dets([], []), COST).delete == 2


def test_matching_is_one_to_one() -> None:
    final = dets([[0, 0, 10, 10]], [0])
    pre = dets([[0, 0, 10, 10], [0, 0, 10, 11]], [0, 0])  # a duplicate: one verified, one deleted
    a = count_actions(pre, final, COST)
    assert (a.verify, a.delete, a.draw) == (1, 1, 0)


def test_actions_add_and_cost_scales_with_prices() -> None:
    a = LabelActions(1, 2, 0, 1, 0) + LabelActions(1, 0, 1, 0, 3)
    assert a == LabelActions(2, 2, 1, 1, 3)
    classic = LabellingCostSettings(draw_seconds=30.0)
    assert a.seconds(classic) - a.seconds(COST) == pytest.approx(23.0)


def test_expected_seconds_prices_confident_boxes_as_verifications_and_candidates_as_misses() -> None:
    s = expected_seconds(np.array([1.0, 0.0, 0.5]), np.array([0, 1, 1]), np.array([0.5]), np.array([2]), 3, COST)
    assert s == pytest.approx([3.0 + 1.6, 3.0 + 1.0 + 0.5 * 1.6 + 0.5 * 1.0, 3.0 + 0.5 * 7.0])


def test_expected_seconds_grows_with_boxes_but_per_box_value_does_not() -> None:
    crowded = expected_seconds(np.full(20, 0.9), np.zeros(20, np.int64), np.zeros(0), np.zeros(0, np.int64), 1, COST)
    single = expected_seconds(np.full(1, 0.9), np.zeros(1, np.int64), np.zeros(0), np.zeros(0, np.int64), 1, COST)
    assert crowded[0] > 5 * single[0]


def test_inconsistent_ious_are_refused_naming_the_field(tmp_path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("classes: [a]\nlabelling_cost: {verify_iou: 0.5, match_iou: 0.6}\n")
    with pytest.raises(ConfigError, match="match_iou"):
        load_settings(cfg)
    cfg.write_text("classes: [a]\nlabelling_cost: {draw_seconds: -1}\n")
    with pytest.raises(ConfigError, match="draw_seconds"):
        load_settings(cfg)


def test_the_simulated_annotator_prices_its_submission_against_the_task_predictions() -> None:
    from detloop.ls_format import FROM_NAME, TO_NAME
    from detloop.sim.annotator import labelling_actions, pre_annotations

    names = ["a", "b"]
    truth = dets([[0, 0, 10, 10], [20, 20, 40, 40]], [0, 1])
    shown = dets([[0, 0, 10, 10], [60, 60, 70, 70]], [0, 0])
    task = {"predictions": [{"result": shown.to_label_studio(100, 100, names, FROM_NAME, TO_NAME)}]}
    result = truth.to_label_studio(100, 100, names, FROM_NAME, TO_NAME, with_score=False)
    assert len(pre_annotations(task, names, 100, 100)) == 2
    a = labelling_actions(task, result, names, 100, 100, COST)
    assert (a.verify, a.adjust, a.draw, a.delete) == (1, 0, 1, 1)
    assert labelling_actions({"predictions": [17]}, result, names, 100, 100, COST).draw == 2  # ids only: none shown


# ---- the outcome ledger and calibrated expected seconds -----------------------------------------------
def scored(boxes: list[list[float]], classes: list[int], conf: list[float]) -> Detections:
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    return Detections(xyxy=b, confidence=np.asarray(conf, np.float32), class_id=np.asarray(classes, np.int64))


def test_match_outcomes_codes_each_pre_annotation_and_the_final_boxes_it_explains() -> None:
    final = dets([[0, 0, 10, 10], [40, 40, 50, 50], [60, 60, 70, 70]], [0, 1, 0])
    pre = dets([[0, 0, 10, 10], [40, 40, 50, 56], [90, 90, 99, 99]], [0, 1, 0])
    outcome, matched = match_outcomes(pre, final, COST)
    assert outcome.tolist() == [VERIFY, ADJUST, DELETE]
    assert matched.tolist() == [True, True, False]
    assert count_actions(pre, final, COST) == LabelActions(frames=1, verify=1, adjust=1, draw=1, delete=1)


def test_tally_records_shown_outcomes_and_candidates_by_confidence_bin() -> None:
    final = dets([[0, 0, 10, 10], [40, 40, 50, 50], [60, 60, 70, 70], [80, 0, 90, 10]], [0, 1, 0, 0])
    shown = scored([[0, 0, 10, 10], [40, 40, 50, 56], [90, 90, 99, 99]], [0, 1, 0], [0.95, 0.55, 0.3])
    cand = scored([[60, 60, 70, 71], [20, 80, 30, 90]], [0, 0], [0.15, 0.05])  # one found, one not
    t = OutcomeTally()
    t.add_frame(shown, final, COST, cand)
    assert t.shown[9].tolist() == [1, 0, 0] and t.shown[5].tolist() == [0, 1, 0] and t.shown[3].tolist() == [0, 0, 1]
    assert t.candidates[1].tolist() == [1, 0] and t.candidates[0].tolist() == [0, 1]
    assert (t.frames, t.frames_with_candidates, t.draws_unexplained) == (1, 1, 1)  # the box at x=80: no hint
    t.add_frame(shown, final, COST)  # candidates not recorded (a task pushed before the ledger)
    assert (t.frames, t.frames_with_candidates, int(t.shown.sum())) == (2, 1, 6)
    summary = t.summary()
    assert summary["shown_boxes"] == 6 and summary["adjusted"] == 0.333
    assert summary["by_confidence (verified/adjusted/deleted)"] == {"0.3-0.4": "0/0/2", "0.5-0.6": "0/2/0",
                                                                      "0.9-1.0": "2/0/0"}
    assert summary["candidates_found"] == "1 of 2" and summary["unhinted_draws_per_frame"] == 1.0
    back = OutcomeTally.from_dict(json.loads(json.dumps(t.to_dict())))
    assert back.to_dict() == t.to_dict() and (back + back).frames == 4
    with pytest.raises(ValueError, match="bins"):
        OutcomeTally.from_dict({**t.to_dict(), "bins": 5})


def test_fitted_rates_follow_the_ledger_and_shrink_to_the_model_where_it_is_thin() -> None:
    empty = fit_outcome_rates(OutcomeTally(), prior_boxes=20)
    centres = (np.arange(OUTCOME_BINS) + 0.5) / OUTCOME_BINS
    assert empty.shown[:, 0] == pytest.approx(centres) and empty.shown[:, 1] == pytest.approx(0)
    assert empty.found == pytest.approx(centres) and empty.extra_draws == 0
    t = OutcomeTally()
    t.shown[5] = [0, 180, 20]  # boxes of confidence 0.5-0.6 were nearly all adjusted
    t.candidates[1] = [0, 50]
    t.frames, t.frames_with_candidates, t.draws_unexplained = 40, 40, 20
    r = fit_outcome_rates(t, prior_boxes=20)
    assert r.shown[5, 1] == pytest.approx(180 / 220) and r.shown[5].sum() == pytest.approx(1)
    assert r.shown[9] == pytest.approx(empty.shown[9])  # no data in that bin: the model
    assert r.found[1] == pytest.approx(20 * 0.15 / 70) and r.extra_draws == pytest.approx(0.5)
    assert fit_outcome_rates(t, prior_boxes=0).shown[5].tolist() == pytest.approx([0, 0.9, 0.1])


def test_calibrated_expected_seconds_price_the_adjusts_the_uncalibrated_model_cannot_see() -> None:
    t = OutcomeTally()
    t.shown[5] = [0, 200, 0]  # uncertain boxes get adjusted ...
    t.shown[9] = [200, 0, 0]  # ... confident ones verified
    t.frames = t.frames_with_candidates = 50
    t.draws_unexplained = 25
    rates = fit_outcome_rates(t, prior_boxes=0)
    conf, frame = np.array([0.55, 0.95]), np.array([0, 1])
    plain = expected_seconds(conf, frame, np.zeros(0), np.zeros(0, np.int64), 2, COST)
    cal = expected_seconds(conf, frame, np.zeros(0), np.zeros(0, np.int64), 2, COST, rates)
    assert plain[0] < plain[1]  # uncalibrated: the uncertain box is cheaper (deleting costs less than verifying)
    assert cal[0] == pytest.approx(3.0 + 4.0 + 0.5 * 7.0) and cal[1] == pytest.approx(3.0 + 1.6 + 0.5 * 7.0)
    assert cal[0] > cal[1]
