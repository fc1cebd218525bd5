"""Pure parts of the loss / TTA benchmark (issue 19): the labeller's edits of a pre-annotation, the AP statistic."""

from __future__ import annotations

import numpy as np

from benchmarks.loss_tta import annotation_edits, ap_stat, edits_summary
from detloop.detections import Detections


def _d(boxes: list[list[float]], cls: list[int], conf: list[float] | None = None) -> Detections:
    n = len(boxes)
    return Detections(xyxy=np.asarray(boxes, np.float32).reshape(n, 4),
                      confidence=np.asarray(conf if conf is not None else [1.0] * n, np.float32),
                      class_id=np.asarray(cls, np.int64))


def test_annotation_edits_one_box_of_each_kind() -> None:
    truth = _d([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10]], [0, 1, 0, 2])
    pre = _d([[0, 0, 10, 10],        # right
              [20, 0, 30, 10],       # wrong class (truth 1, said 0)
              [40, 0, 44, 4],        # IoU 0.16 with truth 3: redraw
              [100, 100, 110, 110],  # touches nothing: spurious
              [0, 0, 10, 9]],        # a duplicate of the first (its truth already taken): IoU 0 to free truth: spurious
             [0, 0, 0, 1, 0], [0.9, 0.8, 0.7, 0.6, 0.5])
    e = annotation_edits(truth, pre)
    assert e == {"boxes": 5, "truth": 4, "ok": 1, "wrong_class": 1, "redraw": 1, "spurious": 2, "missing": 1}
    s = edits_summary([e, annotation_edits(truth, _d([], []))])
    assert s["missing"] == 1 + 4 and s["fix_share"] == 4 / 5 and s["missing_share"] == 5 / 8
    assert s["edits_per_frame"] == (4 + 5) / 2


def test_ap_stat_averages_seeds_and_scores_the_rare_class_alone() -> None:
    gts = [_d([[0, 0, 50, 50], [60, 60, 100, 100]], [0, 1]), _d([[10, 10, 60, 60]], [1])]
    perfect = [_d([[0, 0, 50, 50], [60, 60, 100, 100]], [0, 1], [0.9, 0.8]), _d([[10, 10, 60, 60]], [1], [0.9])]
    miss_rare = [_d([[0, 0, 50, 50]], [0], [0.9]), _d([], [])]
    stat = ap_stat(gts, [[perfect], [miss_rare], [perfect, miss_rare]], num_classes=2, rare=1, crowded=[0])
    v = stat(np.arange(2)).reshape(3, 4)  # arms x (mAP, small AP, rare AP, crowded AP)
    assert np.allclose(v[0, [0, 2]], 1.0) and np.isclose(v[1, 2], 0.0) and np.isclose(v[1, 0], 0.5)
    assert np.allclose(v[2, [0, 2]], (v[0, [0, 2]] + v[1, [0, 2]]) / 2)  # seeds averaged
    assert np.isclose(v[1, 3], 0.5)  # crowded frames only: frame 0 (class 0 right, class 1 missed)
