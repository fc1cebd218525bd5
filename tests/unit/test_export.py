"""Scoring artifact: ONNX raw head + embedding vs Ultralytics' own predict (letterbox included).

Uses a randomly initialised YOLO11n whose class biases are spread out, so some anchors score high and
NMS keeps real boxes; no training and no services needed (~10 s).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

CLASSES = ["disc", "square", "triangle", "ring", "star"]


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import os

    d = tmp_path_factory.mktemp("export")
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(d / "yolocfg"))
    import torch
    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    m = DetectionModel("yolo11n.yaml", nc=len(CLASSES), verbose=False)
    m.names = dict(enumerate(CLASSES))
    head = m.model[-1]
    with torch.no_grad():
        for seq in head.cv3:  # class branches: spread the biases so scores cover (0, 1)
            seq[-1].bias.normal_(-2.0, 2.0)
    y = YOLO("yolo11n.yaml")
    y.model = m
    p = d / "rand.pt"
    y.save(str(p))
    return p


def test_meta_and_shapes(random_weights: Path, tmp_path: Path) -> None:
    from tasks.export import export_scoring_artifact, open_session, preprocess, run_onnx

    out = export_scoring_artifact(random_weights, tmp_path / "art", CLASSES, 320)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["class_names"] == CLASSES
    assert meta["input_size"] == 320 and meta["stride"] == 32
    assert meta["embedding_dim"] == 64 + 128 + 256  # YOLO11n neck maps fed to Detect
    sess = open_session(out)
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 255, size=(240, 320, 3), dtype=np.uint8) for _ in range(3)]
    batch, _ = preprocess(imgs, 320)
    raw, emb = run_onnx(sess, batch)  # dynamic batch of 3 although exported with 1
    assert raw.shape == (3, 4 + len(CLASSES), meta["num_anchors"])
    assert emb.shape == (3, meta["embedding_dim"])
    assert np.all((raw[:, 4:] >= 0) & (raw[:, 4:] <= 1))


def test_class_mismatch_refused(random_weights: Path, tmp_path: Path) -> None:
    from detloop.errors import DataError
    from tasks.export import export_scoring_artifact

    with pytest.raises(DataError, match="differ"):
        export_scoring_artifact(random_weights, tmp_path / "x", [*CLASSES[:-1], "hexagon"], 320)


def test_parity_with_yolo_predict(random_weights: Path, tmp_path: Path) -> None:
    """ONNX + letterbox_image + Detections.from_yolo_raw == YOLO.predict on the same frames."""
    from ultralytics import YOLO

    from detloop.detections import Detections
    from detloop.synth_shapes import make_frame
    from tasks.export import export_scoring_artifact, open_session, preprocess, run_onnx

    out = export_scoring_artifact(random_weights, tmp_path / "art", CLASSES, 320)
    sess = open_session(out)
    rng = np.random.default_rng(3)
    frames = []
    for shape in [(320, 320), (240, 320), (360, 480), (200, 150)]:
        img, _, _ = make_frame(rng, size=max(shape))
        frames.append(np.ascontiguousarray(img[: shape[0], : shape[1]]))
    batch, lbs = preprocess(frames, 320)
    raw, _ = run_onnx(sess, batch)
    model = YOLO(str(random_weights))
    n_boxes = 0
    for img, lb, r in zip(frames, lbs, raw, strict=True):
        ours = Detections.from_yolo_raw(r, lb, conf_threshold=0.25, iou_threshold=0.7, max_det=300)
        res = model.predict(img[:, :, ::-1], imgsz=320, conf=0.25, iou=0.7, rect=False, verbose=False, device="cpu")[0]
        ref = Detections.from_ultralytics(res)
        n_boxes += len(ref)
        assert len(ours) == len(ref)
        oi, ri = np.lexsort(ours.xyxy.T[::-1]), np.lexsort(ref.xyxy.T[::-1])
        np.testing.assert_allclose(ours.xyxy[oi], ref.xyxy[ri], atol=0.05)
        np.testing.assert_array_equal(ours.class_id[oi], ref.class_id[ri])
        np.testing.assert_allclose(ours.confidence[oi], ref.confidence[ri], atol=1e-3)
    assert n_boxes > 0  # the comparison must cover real boxes
