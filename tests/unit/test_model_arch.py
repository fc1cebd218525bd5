"""``model.arch`` families and the NMS-free decode: which names are accepted, where ``model.nms_free`` is refused,
the top-k decode, and the exported YOLO26 heads against Ultralytics' own forward pass (random weights, no training)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

CLASSES = ["disc", "square", "triangle", "ring", "star"]


def _settings(tmp_path: Path, model: dict[str, Any]) -> Any:
    from detloop.settings import REPO_ROOT, load_settings

    return load_settings(REPO_ROOT / "configs" / "test.yaml", env={},
                         overrides={"data_dir": str(tmp_path / "data"), "model": model})


# ---- settings ---------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["yolo11n.yaml", "yolo11n-p2.yaml", "yolo26n.yaml", "yolo26n-p2.yaml", "yolo26s.yaml"])
def test_supported_archs_load(arch: str, tmp_path: Path) -> None:
    from detloop.model_arch import arch_source, parse_arch

    s = _settings(tmp_path, {"arch": arch})
    info = parse_arch(s.model.arch)
    assert info.end2end == arch.startswith("yolo26") and info.p2 == ("-p2" in arch)
    src = arch_source(arch)
    assert Path(src).is_file() if arch == "yolo11n-p2.yaml" else src == arch  # ours vs Ultralytics' own file
    assert s.model.export_head == "one2many"


@pytest.mark.parametrize(("model", "message"), [
    ({"arch": "yolov5n.yaml"}, "unknown model arch"),
    ({"arch": "yolo11s-p2.yaml"}, "unknown model arch"),  # detloop ships the YOLO11 P2 file at scale n only
    ({"arch": "yolo11n.yaml", "nms_free": True}, "one-to-one head"),
    ({"arch": "yolo26n.yaml", "nms_free": True, "backend": "torch"}, "backend onnx"),
    ({"arch": "yolo26n.yaml", "nms_free": True, "tiling": {"enabled": True}}, "tiling"),
    ({"arch": "yolo26n.yaml", "nms_free": True, "tiling": {"cameras": {"cam2": {"enabled": True}}}}, "cam2"),
])
def test_nonsense_is_refused_on_load_naming_the_field(model: dict[str, Any], message: str, tmp_path: Path) -> None:
    from detloop.errors import ConfigError

    with pytest.raises(ConfigError, match=message) as err:
        _settings(tmp_path, model)
    assert "model" in str(err.value)


def test_nms_free_yolo26_exports_the_one_to_one_head(tmp_path: Path) -> None:
    s = _settings(tmp_path, {"arch": "yolo26n-p2.yaml", "nms_free": True})
    assert s.model.export_head == "one2one"


# ---- the top-k decode ---------------------------------------------------------------------------
def _raw() -> np.ndarray:
    """``(4 + 3, 5)``: two near-identical boxes (IoU ~0.9, same class), one other, two below threshold."""
    boxes = np.array([[50, 50, 20, 20], [51, 50, 20, 20], [150, 150, 30, 30], [10, 10, 5, 5], [200, 30, 8, 8]],
                     np.float32).T
    scores = np.array([[0.9, 0.1, 0.05], [0.8, 0.3, 0.0], [0.1, 0.2, 0.7], [0.01, 0.0, 0.02], [0.0, 0.04, 0.0]],
                      np.float32).T
    return np.concatenate([boxes, scores])


def test_topk_keeps_overlapping_boxes_that_nms_deletes() -> None:
    from detloop.ops import Letterbox
    from detloop.postprocess import DecodeParams, decode_one, for_head

    lb = Letterbox.compute(320, 320, 320)
    p = DecodeParams(conf_threshold=0.05, iou_threshold=0.6, max_det=10, max_candidates=100, nms="hard")
    nms = decode_one(_raw(), lb, p)
    topk = decode_one(_raw(), lb, for_head(p, "one2one"))
    assert len(nms) == 2 and len(topk) == 3  # hard NMS deletes the duplicate; a one-to-one head keeps it
    np.testing.assert_allclose(topk.confidence, [0.9, 0.8, 0.7])
    np.testing.assert_array_equal(topk.class_id, [0, 0, 2])
    np.testing.assert_allclose(topk.class_scores, _raw()[4:, [0, 1, 2]].T)  # the class vectors travel along
    assert len(decode_one(_raw(), lb, for_head(DecodeParams(0.05, 0.6, 2, 100), "one2one"))) == 2  # max_det
    assert for_head(p, "one2many") == p
    with pytest.raises(ValueError, match="unknown head"):
        for_head(p, "both")


# ---- export of both YOLO26 heads vs Ultralytics --------------------------------------------------
@pytest.fixture(scope="module")
def yolo26_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import os

    d = tmp_path_factory.mktemp("yolo26")
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(d / "yolocfg"))
    from tasks.export import make_random_weights

    return make_random_weights(d / "rand26.pt", CLASSES, seed=1, arch="yolo26n.yaml")


def _ultralytics(weights: Path, x: np.ndarray, end2end: bool) -> np.ndarray:
    import torch
    from ultralytics import YOLO

    m = YOLO(str(weights)).model.float().eval()
    m.end2end = end2end
    with torch.no_grad():
        y = m(torch.from_numpy(x))
    return (y[0] if isinstance(y, (tuple, list)) else y).numpy()


def test_yolo26_one_to_many_export_equals_ultralytics_nms_head(yolo26_weights: Path, tmp_path: Path) -> None:
    from tasks.export import export_scoring_artifact, open_session, read_meta, run_onnx

    art = export_scoring_artifact(yolo26_weights, tmp_path / "o2m", CLASSES, 128, head="one2many")
    x = np.random.default_rng(0).random((2, 3, 128, 128), dtype=np.float32)
    raw, emb = run_onnx(open_session(art, 1), x)
    assert read_meta(art).head == "one2many" and emb.shape == (2, read_meta(art).embedding_dim)
    np.testing.assert_allclose(raw, _ultralytics(yolo26_weights, x, end2end=False), atol=2e-3)


def test_yolo26_nms_free_export_keeps_class_vectors_of_ultralytics_one_to_one_head(
        yolo26_weights: Path, tmp_path: Path) -> None:
    """Every (box, class, score) Ultralytics' NMS-free head outputs is an anchor of our ``(B, 4 + C, A)`` export
    with that class's score; our top-k decode's best detection is Ultralytics' first."""
    from detloop.ops import Letterbox
    from detloop.postprocess import DecodeParams, decode_one, for_head
    from tasks.export import export_scoring_artifact, open_session, read_meta, run_onnx

    art = export_scoring_artifact(yolo26_weights, tmp_path / "o2o", CLASSES, 128, head="one2one")
    assert read_meta(art).head == "one2one"
    x = np.random.default_rng(1).random((1, 3, 128, 128), dtype=np.float32)
    raw, _ = run_onnx(open_session(art, 1), x)
    e2e = _ultralytics(yolo26_weights, x, end2end=True)[0]  # (300 or A, 6): x1, y1, x2, y2, score, class
    cx, cy, w, h = raw[0, :4]
    ours = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)  # (A, 4)
    for row in e2e[:50]:
        a = int(np.abs(ours - row[:4]).sum(1).argmin())
        np.testing.assert_allclose(ours[a], row[:4], atol=2e-3)
        assert raw[0, 4 + int(row[5]), a] == pytest.approx(row[4], abs=1e-4)
    d = decode_one(raw[0], Letterbox.compute(128, 128, 128), for_head(DecodeParams(0.0, 0.6, 100, 100000), "one2one"))
    assert d.confidence[0] == pytest.approx(e2e[0, 4], abs=1e-4)  # the same best score (anchors may tie on it)
    same = np.abs(d.xyxy - e2e[0, :4].clip(0, 128)).sum(1) < 1e-2  # our boxes are clipped to the frame
    assert same.any() and d.class_id[same][0] == int(e2e[0, 5])
    assert d.confidence[same][0] == pytest.approx(e2e[0, 4], abs=1e-4)
    assert d.class_scores is not None and d.class_scores.shape == (len(d), len(CLASSES))


def test_nms_free_export_of_a_model_without_one_to_one_head_is_refused(tmp_path: Path) -> None:
    from detloop.errors import DataError
    from tasks.export import export_scoring_artifact, make_random_weights

    pt = make_random_weights(tmp_path / "r11.pt", CLASSES, arch="yolo11n.yaml")
    with pytest.raises(DataError, match="one-to-one head"):
        export_scoring_artifact(pt, tmp_path / "x", CLASSES, 64, head="one2one")
    assert not (tmp_path / "x").exists()
