"""Self-training's rule (tasks/pseudo_labels.py): which frames and boxes become free labels, and when none do."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from detloop.detections import Detections
from detloop.settings import PseudoLabelSettings, load_settings
from tasks.pseudo_labels import frame_pseudo_labels, pseudo_label


def dets(*conf: float) -> Detections:
    n = len(conf)
    xy = np.arange(n, dtype=np.float32)[:, None] * 20
    return Detections(np.hstack([xy, xy, xy + 10, xy + 10]), np.array(conf, np.float32), np.arange(n) % 3)


S = PseudoLabelSettings(enabled=True, min_conf=0.7, ignore_below=0.2, per_budget=1.0)


def test_a_frame_qualifies_only_when_every_box_is_sure_or_faint() -> None:
    lab = frame_pseudo_labels(dets(0.9, 0.75, 0.1, 0.05), S)
    assert lab is not None and lab.confidence.tolist() == pytest.approx([0.9, 0.75])  # faint boxes: background
    assert frame_pseudo_labels(dets(0.9, 0.5), S) is None  # 0.5: an object it cannot vouch for
    assert frame_pseudo_labels(dets(0.9, 0.2), S) is None  # ignore_below is in the doubtful band
    assert frame_pseudo_labels(dets(0.1, 0.05), S) is None  # nothing confident: teaches only background
    assert frame_pseudo_labels(Detections.empty(3), S) is None
    edge = frame_pseudo_labels(dets(0.7, 0.19), S)  # min_conf is a label
    assert edge is not None and len(edge) == 1


def test_a_round_takes_a_seeded_sample_of_qualifying_frames_up_to_its_share_of_the_budget() -> None:
    cands = [dets(0.9), dets(0.5), dets(0.8, 0.1), dets(0.95, 0.85), dets(0.1), dets(0.99)]  # 0, 2, 3, 5 qualify
    a = pseudo_label(cands, S, quality=0.6, weak_below=0.3, budget=3, seed=7)
    assert a.stood_down is None and a.qualifying == 4 and a.candidates == 6
    assert len(a.indices) == 3 and set(a.indices) <= {0, 2, 3, 5} and len(set(a.indices)) == 3
    assert [len(x) for x in a.labels] == [len(frame_pseudo_labels(cands[i], S)) for i in a.indices]
    assert pseudo_label(cands, S, 0.6, 0.3, 3, 7).indices == a.indices  # reproducible
    assert {tuple(pseudo_label(cands, S, 0.6, 0.3, 3, s).indices) for s in range(20)} != {tuple(a.indices)}
    half = pseudo_label(cands, S.model_copy(update={"per_budget": 0.5}), 0.6, 0.3, 4, 0)
    assert len(half.indices) == 2
    d = a.to_dict()
    assert d["frames"] == 3 and d["boxes"] == sum(len(x) for x in a.labels) and d["stood_down"] is None


def test_a_weak_or_unknown_champion_labels_nothing() -> None:
    cands = [dets(0.9)] * 5
    weak = pseudo_label(cands, S, quality=0.3, weak_below=0.3, budget=5, seed=0)
    assert weak.indices == [] and "weak" in (weak.stood_down or "")
    unknown = pseudo_label(cands, S, quality=None, weak_below=0.3, budget=5, seed=0)
    assert unknown.indices == [] and "unknown" in (unknown.stood_down or "")
    assert pseudo_label(cands, S, quality=float("nan"), weak_below=0.3, budget=5, seed=0).indices == []


def test_bad_settings_name_the_field_and_range() -> None:
    with pytest.raises(ValidationError, match=r"ignore_below must be in \[0, min_conf\]"):
        PseudoLabelSettings(min_conf=0.5, ignore_below=0.6)
    with pytest.raises(ValidationError, match="per_budget"):
        PseudoLabelSettings(per_budget=0)
    assert load_settings("configs/local.yaml").selection.pseudo_labels.enabled is False  # off until measured
