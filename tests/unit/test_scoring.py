"""Scoring pieces that need no model or service: raw-head decoding, JPEG header, preprocessing, records."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from detloop.contracts import FrameRef
from detloop.detections import Detections
from detloop.ops import Letterbox, letterbox_image
from detloop.postprocess import decode_raw, flip_raw
from detloop.preprocess import decode_for_model, jpeg_size, letterbox_u8, prepare, to_tensors
from tasks.scoring import ScoredFrame


def random_raw(rng: np.random.Generator, nc: int = 5, anchors: int = 2100, size: int = 320) -> np.ndarray:
    raw = np.empty((4 + nc, anchors), np.float32)
    raw[0] = rng.uniform(0, size, anchors)
    raw[1] = rng.uniform(0, size, anchors)
    raw[2] = rng.uniform(4, 60, anchors)
    raw[3] = rng.uniform(4, 60, anchors)
    raw[4:] = 1 / (1 + np.exp(-rng.normal(-3, 2, (nc, anchors))))
    return raw


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_decode_raw_matches_reference_decoder(seed: int) -> None:
    rng = np.random.default_rng(seed)
    raw = random_raw(rng)
    lb = Letterbox.compute(640, 480, 320)
    fast = decode_raw(raw, lb, 0.05, 0.6, 100, 30000)
    ref = Detections.from_yolo_raw(raw, lb, conf_threshold=0.05, iou_threshold=0.6, max_det=100)
    assert len(fast) == len(ref) > 10
    assert fast.equals(ref, atol=1e-3)
    np.testing.assert_allclose(fast.class_scores, ref.class_scores, atol=1e-6)


@pytest.mark.parametrize("nms", ["hard", "linear", "gaussian"])
def test_max_det_caps_detections_after_nms_not_candidates_before(nms: str) -> None:
    """12 objects with 20 overlapping candidates each, later objects scoring lower: every object keeps its best box
    although 240 candidates exceed max_det (OpenCV's top_k cuts candidates before suppression; it must not)."""
    objects, per = 12, 20
    raw = np.zeros((4 + 5, objects * per), np.float32)
    for k in range(objects):
        for j in range(per):
            a = k * per + j
            raw[:4, a] = [20 + 24 * k + 0.2 * j, 100, 16, 16]  # 16 px boxes 24 px apart: disjoint objects
            raw[4 + k % 5, a] = 0.95 - 0.05 * k - 0.001 * j
    lb = Letterbox.compute(320, 320, 320)
    d = decode_raw(raw, lb, 0.01, 0.5, 100, 30000, nms=nms)
    best = {round(float(x)) for x in d.xyxy[d.confidence >= 0.3, 0]}
    assert {round(20 + 24 * k - 8) for k in range(objects)} <= best  # each object's best box survives
    assert len(decode_raw(raw, lb, 0.01, 0.5, 5, 30000, nms=nms)) == 5  # max_det still caps the output
    ref = Detections.from_yolo_raw(raw, lb, conf_threshold=0.01, iou_threshold=0.5, max_det=100)
    if nms == "hard":
        assert len(d) == objects and d.equals(ref, atol=1e-3)


def test_decode_raw_empty_and_candidate_cap() -> None:
    raw = np.zeros((9, 100), np.float32)
    d = decode_raw(raw, Letterbox.compute(320, 320, 320), 0.05, 0.6, 100, 1000)
    assert len(d) == 0 and d.num_classes == 5
    rng = np.random.default_rng(5)
    raw = random_raw(rng)
    capped = decode_raw(raw, Letterbox.compute(320, 320, 320), 0.0, 0.6, 1000, 50)
    assert len(capped) <= 50
    assert capped.confidence.min() >= np.sort(raw[4:].max(0))[-50] - 1e-6


def test_flip_raw_mirrors_centres() -> None:
    raw = np.zeros((1, 6, 3), np.float32)
    raw[0, 0] = [10, 160, 300]
    np.testing.assert_allclose(flip_raw(raw, 320)[0, 0], [310, 160, 20])


def test_jpeg_size_and_reduced_decode() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    data = cv2.imencode(".jpg", img)[1].tobytes()
    assert jpeg_size(data) == (640, 480)
    assert jpeg_size(b"\x89PNG....") is None
    small, w, h, why = decode_for_model(data, 320, fast=True)
    assert why is None and (w, h) == (640, 480) and small is not None and small.shape == (240, 320, 3)
    full, w, h, why = decode_for_model(data, 320, fast=False)
    assert full is not None and full.shape == (480, 640, 3)
    _, _, _, why = decode_for_model(data[:1000], 320)
    assert why is not None and "truncated" in why


def test_prepare_matches_letterbox_image_on_full_decode() -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (300, 500, 3), dtype=np.uint8)
    t, lb, b, c = prepare(img, 320)
    boxed, lb2 = letterbox_image(img, 320)
    assert lb == lb2
    np.testing.assert_allclose(t, boxed[:, :, ::-1].transpose(2, 0, 1) / 255.0, atol=1e-6)
    grey = cv2.cvtColor(cv2.resize(img, lb.resized, interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2GRAY)
    assert b == pytest.approx(grey.mean() / 255, abs=1e-6) and c == pytest.approx(grey.std() / 255, abs=1e-6)


def test_batch_conversion_into_the_reused_buffer_matches_per_frame_prepare() -> None:
    rng = np.random.default_rng(2)
    frames = [rng.integers(0, 255, (240 + 8 * i, 320, 3), dtype=np.uint8) for i in range(3)]
    boxed = [letterbox_u8(f, 320)[0] for f in frames]
    assert all(b.shape == (320, 320, 3) and b.dtype == np.uint8 for b in boxed)
    first = to_tensors(boxed, reuse=True)
    np.testing.assert_array_equal(first, np.stack([prepare(f, 320)[0] for f in frames]))
    np.testing.assert_array_equal(first, to_tensors(boxed))
    second = to_tensors(boxed[:2], reuse=True)  # the same thread's next (smaller) batch reuses the memory
    assert second.shape == (2, 3, 320, 320) and np.shares_memory(first, second)
    np.testing.assert_array_equal(second, to_tensors(boxed[:2]))
    assert not np.shares_memory(to_tensors(boxed), to_tensors(boxed))  # without reuse: fresh arrays


def test_reduced_decode_keeps_frame_geometry() -> None:
    img = np.zeros((480, 640, 3), np.uint8)
    img[100:200, 300:400] = 255  # a white square at x 300..400, y 100..200 in frame pixels
    data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    small, w, h, _ = decode_for_model(data, 320)
    t, lb, _, _ = prepare(small, 320, w, h)  # type: ignore[arg-type]
    ys, xs = np.nonzero(t[0] > 0.5)
    box = lb.to_frame(np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]]))[0]
    np.testing.assert_allclose(box, [300, 100, 400, 200], atol=2.5)


def test_scored_frame_record_round_trip() -> None:
    det = Detections(np.array([[1, 2, 30, 40]]), np.array([0.7]), np.array([2]),
                     class_scores=np.array([[0.1, 0.2, 0.7]]))
    f = ScoredFrame(FrameRef("b", "frames/camera=a/date=2026-01-01/x.jpg", "e", "a", "2026-01-01"), 64, 48, det,
                    np.ones(4, np.float32), 0.4, 0.1, tta=det)
    g = ScoredFrame.from_record(f.to_record(), f.embedding)
    assert g.detections.equals(det) and g.tta is not None and g.committee is None
    np.testing.assert_allclose(g.detections.class_scores, det.class_scores)
    assert (g.brightness, g.contrast, g.frame.key) == (0.4, 0.1, f.frame.key)


@pytest.fixture(scope="module")
def random_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A randomly initialised YOLO11n (.pt) and its scoring artifact (ONNX + meta)."""
    import os

    d = tmp_path_factory.mktemp("scorer")
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(d / "yolocfg"))
    from tasks.export import make_random_artifact

    art = make_random_artifact(d / "rand", ["disc", "square", "triangle", "ring", "star"], 320)
    return d / "rand.pt", art


def test_torch_fallback_matches_onnx_scorer(random_model: tuple[Path, Path]) -> None:
    from detloop.settings import ModelSettings
    from tasks.scoring import OnnxScorer, TorchScorer, load_scorer

    pt, art = random_model
    onnx = load_scorer(art)
    torch_sc = load_scorer(pt, ModelSettings(input_size=320))
    assert isinstance(onnx, OnnxScorer) and isinstance(torch_sc, TorchScorer)
    assert torch_sc.meta.class_names == onnx.meta.class_names
    rng = np.random.default_rng(0)
    x = rng.random((2, 3, 320, 320), dtype=np.float32)
    raw_o, emb_o = onnx.infer(x)
    raw_t, emb_t = torch_sc.infer(x)
    assert raw_o.shape == raw_t.shape == (2, 9, 2100)
    assert emb_o is not None and emb_t is not None and emb_o.shape == emb_t.shape
    np.testing.assert_allclose(raw_t[:, :4], raw_o[:, :4], atol=0.05)  # box pixels (fused vs unfused BN)
    np.testing.assert_allclose(raw_t[:, 4:], raw_o[:, 4:], atol=2e-3)
    np.testing.assert_allclose(emb_t, emb_o, atol=2e-3)


def test_load_scorer_errors_are_one_line(tmp_path: Path) -> None:
    from detloop.errors import DataError
    from tasks.scoring import load_scorer

    with pytest.raises(DataError, match="model not found"):
        load_scorer(tmp_path / "nope")
    with pytest.raises(DataError, match="not a scoring artifact"):
        load_scorer(tmp_path)


def test_concurrent_workers_score_the_same_frames_in_input_order(random_model: tuple[Path, Path]) -> None:
    """Batches scored by several workers come back in input order with the same detections."""
    from detloop.settings import ModelSettings
    from tasks.scoring import inference_workers, load_scorer, score
    from tests.fakes import FakeStore

    _, art = random_model
    store = FakeStore()
    rng = np.random.default_rng(3)
    refs = []
    for i in range(23):  # not a multiple of the batch size
        img = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
        ok, buf = cv2.imencode(".jpg", img)
        assert ok
        key = f"f/{i:03d}.jpg"
        store.put_bytes("b", key, buf.tobytes())
        refs.append(FrameRef("b", key, "e", "cam0", "2030-01-01"))
    store.put_bytes("b", "f/bad.jpg", b"not an image")
    refs.insert(5, FrameRef("b", "f/bad.jpg", "e", "cam0", "2030-01-01"))
    results = {}
    for workers in (1, 3):
        ms = ModelSettings(batch_size=4, inference_workers=workers)
        scorer = load_scorer(art, ms)
        assert inference_workers(ms, scorer) == workers
        results[workers] = score(refs, scorer, store, ms)
    one, three = results[1], results[3]
    assert [f.frame.key for f in three.frames] == [r.key for r in refs if r.key != "f/bad.jpg"]
    assert [q.key for q in three.quarantined] == ["f/bad.jpg"]
    for a, b in zip(one.frames, three.frames, strict=True):
        assert a.frame.key == b.frame.key and a.detections.equals(b.detections, atol=1e-4)
        np.testing.assert_allclose(a.embedding, b.embedding, atol=1e-5)


def test_torch_scorer_is_scored_one_batch_at_a_time(random_model: tuple[Path, Path]) -> None:
    from detloop.settings import ModelSettings
    from tasks.scoring import inference_workers, load_scorer

    pt, art = random_model
    ms = ModelSettings(input_size=320, inference_workers=4)
    assert inference_workers(ms, load_scorer(pt, ms)) == 1
    assert inference_workers(ms, load_scorer(art, ms), committee=load_scorer(pt, ms)) == 1
    assert inference_workers(ms, load_scorer(art, ms)) == 4
