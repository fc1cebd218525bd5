"""The served model: the same preprocessing and decode as production scoring, as an MLflow pyfunc model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

from detloop.postprocess import DecodeParams
from detloop.serving import Detector, ServingConfig

CLASSES = ["disc", "square", "triangle", "ring", "star"]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tasks.export import make_random_artifact

    return make_random_artifact(tmp_path_factory.mktemp("serving") / "scoring", CLASSES, 320, seed=3)


def frame_jpeg(w: int, h: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 110, np.uint8)
    for _ in range(4):
        x, y = int(rng.integers(20, w - 60)), int(rng.integers(20, h - 60))
        cv2.rectangle(img, (x, y), (x + 40, y + 30), tuple(int(c) for c in rng.integers(0, 255, 3)), -1)
    return bytes(cv2.imencode(".jpg", img)[1].tobytes())


def test_detector_gives_the_boxes_production_scoring_gives(artifact: Path) -> None:
    """Scoring's own path (prefetching reader, ONNX scorer, decode_batch) and the served Detector agree exactly."""
    from detloop.contracts import FrameRef
    from detloop.settings import ModelSettings
    from tasks.scoring import OnnxScorer, score, scoring_decode
    from tests.fakes import FakeStore

    ms = ModelSettings(scoring_conf_threshold=0.2)
    store = FakeStore()
    refs = []
    for i, (w, h) in enumerate([(640, 480), (1280, 720), (300, 500)]):  # 1280 px decodes at reduced scale
        key = f"frames/camera=c/date=2026-01-05/10000{i}-a.jpg"
        store.put_bytes("prod", key, frame_jpeg(w, h, i))
        refs.append(FrameRef("prod", key, "e", "c", "2026-01-05"))
    scored = score(refs, OnnxScorer(artifact, threads=1), store, ms)
    det = Detector(artifact, ServingConfig(scoring_decode(ms), ms.fast_decode, CLASSES), threads=1)
    served = det.detect([store.get_bytes("prod", r.key) for r in refs])
    assert sum(len(f.detections) for f in scored.frames) > 0
    for f, d in zip(scored.frames, served, strict=True):
        assert not isinstance(d, str)
        np.testing.assert_array_equal(f.detections.xyxy, d.xyxy)
        np.testing.assert_array_equal(f.detections.class_id, d.class_id)
        np.testing.assert_array_equal(f.detections.confidence, d.confidence)


def test_detector_rows_params_and_bad_images(artifact: Path) -> None:
    cfg = ServingConfig(DecodeParams(0.05, 0.6, 100, 2000), True, CLASSES, {c: 0.9 for c in CLASSES})
    det = Detector(artifact, cfg, threads=1)
    img = frame_jpeg(640, 360, 7)
    low = det.rows([img])[0]
    high = det.rows([img], {"conf_threshold": 0.5})[0]
    strict = det.rows([img], {"class_thresholds": True})[0]
    bad = det.rows([b"not an image"])[0]
    assert (low["width"], low["height"], low["error"]) == (640, 360, "")
    # a request's params decode exactly as a model configured with them (no "fewer boxes at a higher threshold":
    # this random model scores every anchor alike, and NMS among equal scores keeps an arbitrary subset)
    configured = Detector(artifact, ServingConfig(DecodeParams(0.5, 0.6, 100, 2000), True, CLASSES,
                                                  {c: 0.9 for c in CLASSES}), threads=1).rows([img])[0]
    assert high == configured and high["boxes"] and all(s >= 0.5 for s in high["scores"])
    assert det.rows([img], {"max_det": 3})[0]["boxes"] == low["boxes"][:3]
    assert all(s >= 0.9 for s in strict["scores"])
    assert all(0.0 <= s <= 1.0 for s in low["scores"]) and all(len(b) == 4 for b in low["boxes"])
    assert [CLASSES[c] for c in low["class_ids"]] == low["class_names"]
    assert bad["boxes"] == [] and "not an image" in bad["error"]


def test_pyfunc_model_directory_has_signature_example_and_no_torch(artifact: Path, tmp_path: Path) -> None:
    from detloop.serving import build_pyfunc_model

    files = tmp_path / "files"
    shutil.copytree(artifact, files / "scoring")
    (files / "weights").mkdir()
    (files / "weights" / "best.pt").write_bytes(b"checkpoint")
    (files / "thresholds.json").write_text(json.dumps({"thresholds": {c: 0.3 for c in CLASSES}}))
    out = build_pyfunc_model(files, tmp_path / "model", ServingConfig(DecodeParams(0.05, 0.6, 100, 2000), True,
                                                                       CLASSES, {c: 0.3 for c in CLASSES}, "m"))
    mlmodel = yaml.safe_load((out / "MLmodel").read_text())
    sig: dict[str, Any] = mlmodel["signature"]
    assert json.loads(sig["inputs"]) == [{"type": "binary", "name": "image", "required": True},
        {"type": "string", "name": "camera", "required": False}]
    assert {c["name"] for c in json.loads(sig["outputs"])} >= {"boxes", "class_ids", "class_names", "scores"}
    assert {p["name"] for p in json.loads(sig["params"])} == {"conf_threshold", "iou_threshold", "max_det",
                                                              "class_thresholds"}
    reqs = (out / "requirements.txt").read_text()
    assert "onnxruntime" in reqs and "torch" not in reqs and "ultralytics" not in reqs
    assert (out / "artifacts" / "scoring" / "model.onnx").read_bytes() == (artifact / "model.onnx").read_bytes()
    assert (out / "weights" / "best.pt").read_bytes() == b"checkpoint"
    assert (out / "code" / "detloop" / "postprocess.py").is_file() and (out / "serving_input_example.json").is_file()
