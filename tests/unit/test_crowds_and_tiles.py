"""Soft-NMS and tiling in the path: scoring, evaluation and the registered pyfunc model give one frame the same
boxes under each configuration, and the configurations change what comes out (so the agreement is not vacuous)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

CLASSES = ["disc", "square", "triangle", "ring", "star"]
CAMERA = "cam7"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tasks.export import make_random_artifact

    return make_random_artifact(tmp_path_factory.mktemp("crowds") / "scoring", CLASSES, 320, seed=5)


def _frame(w: int = 800, h: int = 450, seed: int = 2) -> bytes:
    """Busy frame: many small, touching shapes (crowds) and one large one crossing the tile borders."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 100, np.uint8)
    cv2.rectangle(img, (250, 120), (560, 330), (40, 180, 220), -1)
    for _ in range(60):
        x, y = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        cv2.rectangle(img, (x, y), (x + 14, y + 12), tuple(int(c) for c in rng.integers(0, 255, 3)), -1)
    return bytes(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes())


CONFIGS: dict[str, dict[str, Any]] = {
    "hard-whole": {"nms": {"method": "hard"}},
    "gaussian-whole": {"nms": {"method": "gaussian", "sigma": 0.5}},
    "linear-tiled": {"nms": {"method": "linear", "iou_threshold": 0.5},
                     "tiling": {"enabled": True, "tile": 320, "overlap": 64, "full_frame": True}},
    "hard-tiled-this-camera-only": {"nms": {"method": "hard"},
                                    "tiling": {"cameras": {CAMERA: {"enabled": True, "tile": 256, "overlap": 48,
                                                                    "full_frame": False}}}},
}


def _settings(tmp_path: Path, model: dict[str, Any]) -> Any:
    from detloop.settings import load_settings

    # the same confidence floor and candidate cap in scoring and evaluation, so their boxes can be compared
    base = {"scoring_conf_threshold": 0.2, "conf_threshold": 0.2, "scoring_max_candidates": 30000,
            "inference_workers": 1, "read_threads": 1}
    return load_settings("configs/test.yaml", env={}, overrides={"data_dir": str(tmp_path / "data"),
                                                                 "model": {**base, **model}})


def _three_ways(artifact: Path, tmp_path: Path, settings: Any, jpeg: bytes) -> list[Any]:
    """The frame's detections from production scoring, from evaluation, and from the pyfunc model."""
    import mlflow.pyfunc
    import pandas as pd

    from detloop.contracts import FrameRef
    from detloop.serving import build_pyfunc_model
    from tasks.evaluation import EvalItem, predict_items
    from tasks.registry import serving_config
    from tasks.scoring import OnnxScorer, score
    from tests.fakes import FakeStore

    key = f"frames/camera={CAMERA}/date=2026-01-05/100000-a.jpg"
    store = FakeStore()
    store.put_bytes("prod", key, jpeg)
    scored = score([FrameRef("prod", key, "e", CAMERA, "2026-01-05")], OnnxScorer(artifact, threads=1), store,
                   settings.model).frames[0].detections
    img = tmp_path / "frame.jpg"
    img.write_bytes(jpeg)
    from detloop.detections import Detections

    evaluated = predict_items(artifact, [EvalItem(str(img), Detections.empty(len(CLASSES)), CAMERA)], settings)[0]
    files = tmp_path / "files"
    shutil.copytree(artifact, files / "scoring")
    model_dir = build_pyfunc_model(files, tmp_path / "model", serving_config(settings))
    served = mlflow.pyfunc.load_model(str(model_dir)).predict(pd.DataFrame({"image": [jpeg], "camera": [CAMERA]}))
    row = served.iloc[0]
    assert row["error"] == ""
    return [scored, evaluated, row]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_one_frame_gets_the_same_boxes_from_scoring_evaluation_and_the_pyfunc_model(
        artifact: Path, tmp_path: Path, name: str) -> None:
    settings = _settings(tmp_path, CONFIGS[name])
    scored, evaluated, row = _three_ways(artifact, tmp_path, settings, _frame())
    assert len(scored) > 0
    np.testing.assert_array_equal(scored.xyxy, evaluated.xyxy)
    np.testing.assert_array_equal(scored.class_id, evaluated.class_id)
    np.testing.assert_array_equal(scored.confidence, evaluated.confidence)
    np.testing.assert_allclose(np.asarray(row["boxes"], np.float64).reshape(-1, 4), scored.xyxy, atol=1e-3)
    np.testing.assert_array_equal(np.asarray(row["class_ids"], np.int64), scored.class_id)
    np.testing.assert_allclose(np.asarray(row["scores"], np.float64), scored.confidence, atol=1e-5)
    assert scored.class_scores is not None and scored.class_scores.shape == (len(scored), len(CLASSES))
    assert (scored.xyxy[:, 2] <= 800).all() and (scored.xyxy[:, 3] <= 450).all() and (scored.xyxy >= 0).all()


def test_the_configurations_change_the_boxes(artifact: Path, tmp_path: Path) -> None:
    """Soft-NMS keeps overlapping boxes hard NMS deletes (with lower scores); tiling finds a different set."""
    from detloop.contracts import FrameRef
    from tasks.scoring import OnnxScorer, score
    from tests.fakes import FakeStore

    key = f"frames/camera={CAMERA}/date=2026-01-05/100000-a.jpg"
    store = FakeStore()
    store.put_bytes("prod", key, _frame())
    ref = FrameRef("prod", key, "e", CAMERA, "2026-01-05")
    got = {}
    for name in CONFIGS:
        s = _settings(tmp_path / name, CONFIGS[name])
        got[name] = score([ref], OnnxScorer(artifact, threads=1), store, s.model).frames[0].detections
    hard, soft = got["hard-whole"], got["gaussian-whole"]
    assert len(soft) >= len(hard)
    from detloop.ops import box_iou

    iou = box_iou(soft.xyxy, soft.xyxy) - np.eye(len(soft))
    same = soft.class_id[:, None] == soft.class_id[None, :]
    assert (iou[same] > 0.6).any(), "soft-NMS keeps same-class neighbours that hard NMS (IoU 0.6) would delete"
    assert not np.array_equal(got["hard-tiled-this-camera-only"].xyxy, hard.xyxy)
    # the per-camera override tiles only its camera
    other = FrameRef("prod", key, "e", "cam0", "2026-01-05")
    s = _settings(tmp_path / "other", CONFIGS["hard-tiled-this-camera-only"])
    untiled = score([other], OnnxScorer(artifact, threads=1), store, s.model).frames[0].detections
    np.testing.assert_array_equal(untiled.xyxy, hard.xyxy)


@pytest.mark.parametrize(("field", "value", "message"), [
    ({"tiling": {"tile": 16}}, None, "tile"),
    ({"tiling": {"tile": 256, "overlap": 256}}, None, "overlap must be in"),
    ({"nms": {"sigma": 0.0}}, None, "sigma"),
    ({"nms": {"method": "cluster"}}, None, "method"),
])
def test_bad_postprocessing_config_is_refused_naming_the_field(field: dict[str, Any], value: Any, message: str,
                                                               tmp_path: Path) -> None:
    from detloop.errors import ConfigError

    with pytest.raises(ConfigError, match=message) as err:
        _settings(tmp_path, field)
    assert "model" in str(err.value) and "\n" not in str(err.value).strip()
