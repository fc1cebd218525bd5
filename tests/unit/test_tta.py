"""Offline test-time augmentation (issue 19): views mapped back and merged by the one decode (model.nms), config
refusals, never in serving, and the dynamic-HW ONNX export (same boxes at the native size)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detloop.errors import ConfigError, DataError
from detloop.ops import Letterbox, box_iou
from detloop.postprocess import DecodeParams, decode_raw
from detloop.settings import REPO_ROOT, load_settings
from detloop.tta import TtaScorer, tta_infer, view_side, views

NC = 2
S = 128


def blob_detector(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A fake model that is exactly flip-equivariant: one anchor per bright connected component (its bounding box,
    score 0.9 for class 0), padded with empty anchors to a size that depends on the input side (like a real head)."""
    import cv2

    b, side = x.shape[0], x.shape[-1]
    a = (side // 8) ** 2
    raw = np.zeros((b, 4 + NC, a), np.float32)
    for i in range(b):
        mask = (x[i].mean(axis=0) > 0.75).astype(np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)
        for k in range(1, n):
            x0, y0, w, h = (float(v) for v in stats[k, :4])
            raw[i, :4, k] = (x0 + w / 2, y0 + h / 2, w, h)
            raw[i, 4, k] = 0.9
    return raw, np.ones((b, 3), np.float32)


def _frame(boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    img = np.full((1, 3, S, S), 0.2, np.float32)
    for x0, y0, x1, y1 in boxes:
        img[0, :, y0:y1, x0:x1] = 1.0
    return img


PARAMS = DecodeParams(conf_threshold=0.1, iou_threshold=0.6, max_det=100, max_candidates=1000)
LB = Letterbox.compute(S, S, S)


def _decode(raw: np.ndarray, nms: str = "hard") -> np.ndarray:
    p = PARAMS
    return decode_raw(raw[0], LB, p.conf_threshold, p.iou_threshold, p.max_det, p.max_candidates, nms).xyxy


@pytest.mark.parametrize("nms", ["hard", "weighted", "linear", "gaussian"])
def test_flipped_view_of_a_symmetric_frame_merges_to_the_same_boxes(nms: str) -> None:
    x = _frame([(20, 40, 44, 70), (S - 44, 40, S - 20, 70)])  # mirror images of each other
    assert np.array_equal(x, x[..., ::-1])
    plain = _decode(blob_detector(x)[0], nms)
    raw, emb = tta_infer(blob_detector, x, views([1.0], flip=True), stride=32)
    assert raw.shape[2] == 2 * blob_detector(x)[0].shape[2] and emb is not None
    merged = _decode(raw, nms)
    assert len(plain) == 2
    if nms == "gaussian":  # Gaussian soft-NMS keeps an exact duplicate at score * exp(-1 / sigma): 0.9 -> 0.12
        d = decode_raw(raw[0], LB, 0.1, 0.6, 100, 1000, nms)
        assert np.allclose(d.confidence[:2], 0.9) and np.allclose(d.confidence[2:], 0.9 * np.exp(-1 / 0.5))
        merged = merged[:2]
    assert len(merged) == 2
    assert np.allclose(np.sort(merged, axis=0), np.sort(plain, axis=0))


def test_flipped_view_is_mapped_back_not_mirrored() -> None:
    """An asymmetric frame: the flipped view's box must land on the plain one (a missing un-flip gives 2 boxes)."""
    x = _frame([(10, 30, 40, 60)])
    raw, _ = tta_infer(blob_detector, x, views([1.0], flip=True), stride=32)
    merged = _decode(raw)
    assert len(merged) == 1 and np.allclose(merged[0], [10, 30, 40, 60])


def test_weighted_merge_fuses_two_views_of_an_object_to_their_score_weighted_mean() -> None:
    """Box voting (model.nms.method weighted): the flipped view of an off-centre blob, one pixel apart after the
    un-flip, fuses to the mean; a second class and a far box are not voted in; weights are the scores."""
    from detloop.ops import weighted_merge

    # two views of one object (equal scores), mirror-symmetric about x = 32 after the un-flip: [20, 44] and [22, 46]
    boxes = np.array([[20, 40, 44, 70], [22, 40, 46, 70], [21, 40, 45, 70], [80, 10, 90, 20]], np.float64)
    scores = np.array([0.9, 0.9, 0.6, 0.8])
    cls = np.array([0, 0, 1, 0])
    fused = weighted_merge(boxes, scores, cls, np.array([0, 3]), 0.6)
    assert np.allclose(fused[0], [21, 40, 45, 70])  # the mean of the two class-0 views; the class-1 box is out
    assert np.allclose(fused[1], boxes[3])  # alone in its cluster: unchanged
    w = weighted_merge(boxes, np.array([0.9, 0.3, 0.6, 0.8]), cls, np.array([0]), 0.6)
    assert np.allclose(w[0], (0.9 * boxes[0] + 0.3 * boxes[1]) / 1.2)  # weighted by score
    assert weighted_merge(boxes, scores, cls, np.zeros(0, np.int64), 0.6).shape == (0, 4)
    # through the decode: a frame and its flipped view whose boxes differ by the un-flip's rounding fuse
    raw = np.zeros((1, 4 + NC, 2), np.float32)
    raw[0, :4, 0] = (32, 55, 24, 30)  # [20, 40, 44, 70]
    raw[0, :4, 1] = (34, 55, 24, 30)  # [22, 40, 46, 70]
    raw[0, 4, :] = 0.9
    hard, weighted = _decode(raw, "hard"), _decode(raw, "weighted")
    assert len(hard) == len(weighted) == 1 and np.allclose(weighted[0], [21, 40, 45, 70])
    assert not np.allclose(hard[0], weighted[0])


def test_scaled_views_are_mapped_to_the_plain_views_pixels() -> None:
    x = _frame([(16, 32, 64, 96)])
    assert view_side(S, 0.5, 32) == 64 and view_side(S, 1.3, 32) == 160 and view_side(S, 0.1, 32) == 32
    tv = views([1.0, 0.5, 1.25], flip=False)
    raw, _ = tta_infer(blob_detector, x, tv, stride=32)
    assert raw.shape[2] == sum((view_side(S, s, 32) // 8) ** 2 for s, _ in tv)
    found = raw[0][:4, raw[0, 4] > 0.5].T  # (3 views, 4) boxes, cxcywh in the plain view's pixels
    xyxy = np.c_[found[:, :2] - found[:, 2:] / 2, found[:, :2] + found[:, 2:] / 2]
    assert len(xyxy) == 3 and box_iou(xyxy, np.array([[16, 32, 64, 96]])).min() > 0.9
    assert len(_decode(raw)) == 1  # the three views merge into one box


def test_scoring_with_the_tta_scorer_merges_views_into_the_scored_frame() -> None:
    """Production scoring's path (score_decoded: to_tensors, infer, decode_inputs) with the TTA scorer."""
    from detloop.contracts import FrameRef
    from detloop.preprocess import FrameInput, ModelInput
    from detloop.settings import ModelSettings
    from tasks.scoring import DecodedFrame, score_decoded

    class Blob:
        meta = type("M", (), {"stride": 32, "input_size": S, "head": "one2many"})()
        name, concurrent = "blob", True

        def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return blob_detector(batch)

    img = np.full((S, S, 3), 50, np.uint8)
    img[30:60, 10:40] = 255  # one bright object, left of centre
    frame = DecodedFrame(FrameRef("b", "cam0/2026-01-05/f.jpg", "e", "cam0", "2026-01-05"),
                         FrameInput.whole(ModelInput(img, LB, 0.3, 0.2)))
    ms = ModelSettings(input_size=S, scoring_conf_threshold=0.1)
    plain = score_decoded([frame], Blob(), ms)[0]
    merged = score_decoded([frame], TtaScorer(Blob(), [1.0, 0.5], flip=True), ms)[0]
    assert len(plain.detections) == 1 and len(merged.detections) == 1
    assert box_iou(merged.detections.xyxy, plain.detections.xyxy)[0, 0] > 0.9
    assert np.allclose(merged.embedding, plain.embedding)  # the plain view's embedding


def test_tta_config_is_refused_with_field_and_range() -> None:
    cfg = REPO_ROOT / "configs" / "test.yaml"
    s = load_settings(cfg, env={})
    assert not s.model.tta.scoring and not s.model.tta.evaluation and not s.model.tta.needs_dynamic_hw  # off
    on = load_settings(cfg, env={}, overrides={"model": {"tta": {"evaluation": True}}})
    assert on.model.tta.needs_dynamic_hw
    cases = [({"scales": [1.0, 0.1]}, "model.tta.scales.1: ", "greater than or equal to 0.25"),
             ({"scales": [1.0, 4.0]}, "model.tta.scales.1: ", "less than or equal to 3"),
             ({"scales": [0.83]}, "model.tta.scales: ", "must include 1.0"),
             ({"scales": []}, "model.tta.scales: ", "at least 1 item"),
             ({"flip": "sideways"}, "model.tta.flip: ", "valid boolean")]
    for value, field, allowed in cases:
        with pytest.raises(ConfigError) as err:
            load_settings(cfg, env={}, overrides={"model": {"tta": value}})
        assert field in str(err.value) and allowed in str(err.value), str(err.value)


def test_serving_never_uses_tta() -> None:
    from tasks.registry import serving_config

    cfg = REPO_ROOT / "configs" / "test.yaml"
    off = serving_config(load_settings(cfg, env={}))
    on = serving_config(load_settings(cfg, env={}, overrides={"model": {"tta": {"scoring": True, "evaluation": True}}}))
    assert on == off
    src = (REPO_ROOT / "detloop" / "serving.py").read_text() + (REPO_ROOT / "detloop" / "pyfunc_model.py").read_text()
    assert "detloop.tta" not in src and "tta_infer" not in src


class _StaticSession:
    def get_inputs(self) -> list:
        class _In:
            shape = ("batch", 3, 320, 320)
        return [_In()]


class _Fake:
    meta = type("M", (), {"stride": 32, "head": "one2many"})()
    name = "fake-v1"
    concurrent = True
    session = _StaticSession()

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return blob_detector(batch)


def test_tta_on_a_fixed_size_artifact_is_refused_unless_scale_1_only() -> None:
    with pytest.raises(DataError, match=r"model fake-v1: .*dynamic height and width.*model.tta.scales: \[1.0\]"):
        TtaScorer(_Fake(), [1.0, 0.83], flip=True)
    flip_only = TtaScorer(_Fake(), [1.0], flip=True)  # flips need no dynamic export
    raw, _ = flip_only.infer(_frame([(10, 30, 40, 60)]))
    assert raw.shape[2] == 2 * (S // 8) ** 2


@pytest.mark.slow
def test_dynamic_hw_export_gives_todays_boxes_at_the_native_size(tmp_path: Path) -> None:
    from detloop.postprocess import decode_frames
    from tasks.export import export_scoring_artifact, make_random_weights
    from tasks.scoring import OnnxScorer

    classes = ["a", "b", "c"]
    pt = make_random_weights(tmp_path / "w.pt", classes, seed=3)
    fixed = OnnxScorer(export_scoring_artifact(pt, tmp_path / "fixed", classes, 160), threads=1)
    dyn = OnnxScorer(export_scoring_artifact(pt, tmp_path / "dyn", classes, 160, dynamic_hw=True), threads=1)
    assert isinstance(dyn.session.get_inputs()[0].shape[2], str) and fixed.session.get_inputs()[0].shape[2] == 160
    x = np.random.default_rng(0).random((3, 3, 160, 160), dtype=np.float32)
    (ra, ea), (rb, eb) = fixed.infer(x), dyn.infer(x)
    assert ra.shape == rb.shape and np.allclose(ra, rb, atol=1e-4) and np.allclose(ea, eb, atol=1e-5)
    p = DecodeParams(0.05, 0.7, 100, 1000)
    lbs = [Letterbox.compute(200, 150, 160)] * 3
    for a, b in zip(decode_frames(ra, lbs, p), decode_frames(rb, lbs, p), strict=True):
        assert len(a) == len(b) > 0 and np.allclose(a.xyxy, b.xyxy, atol=1e-3)
    # other sizes run on the dynamic export only; the TTA scorer merges views there and refuses on the fixed one
    raw, _ = TtaScorer(dyn, [1.0, 0.8], flip=True).infer(x)
    assert raw.shape[2] == rb.shape[2] * 2 + dyn.infer(np.zeros((1, 3, 128, 128), np.float32))[0].shape[2]
    with pytest.raises(DataError, match="dynamic height and width"):
        TtaScorer(fixed, [1.0, 0.8], flip=False)
    # a model registered with a fixed-size artifact: evaluation with TTA exports its weights again, dynamic
    import shutil

    from tasks.evaluation import ensure_artifact

    reg = tmp_path / "registered"
    shutil.copytree(tmp_path / "fixed", reg / "scoring")
    (reg / "weights").mkdir()
    shutil.copyfile(pt, reg / "weights" / "best.pt")
    assert ensure_artifact(reg, classes, 160, tmp_path / "work") == reg / "scoring"
    again = ensure_artifact(reg, classes, 160, tmp_path / "work", dynamic_hw=True)
    assert again != reg / "scoring" and isinstance(OnnxScorer(again).session.get_inputs()[0].shape[2], str)
