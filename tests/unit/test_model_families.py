"""Model families (issue 20): each ``model.arch`` (YOLO11n-P2, YOLO26n with NMS and NMS-free, YOLO26n-P2) trains from
scratch, exports, scores, evaluates, gates, registers and loads through MLflow's pyfunc; one frame gets the same
boxes from production scoring, evaluation and the pyfunc model.

MLflow is the real library on a SQLite tracking store in a temporary directory (no server): the training run, the
registered pyfunc version and the ``champion`` alias are real MLflow objects. Training is 1 epoch on 6 tiny frames
(the model learns nothing, so every candidate above a confidence of 0 is kept: the test is about the path, not
accuracy). The YOLO11n path against the real stack is
``tests/integration/test_training_registry.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

CLASSES = ["disc", "square", "triangle", "ring", "star"]
SIZE = 64
CAMERA = "cam3"
# (arch, nms_free): every family, and YOLO26 both ways; YOLO11n is covered by the existing tests
FAMILIES = [("yolo11n-p2.yaml", False), ("yolo26n.yaml", False), ("yolo26n.yaml", True), ("yolo26n-p2.yaml", True)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from detloop.synth_shapes import write_yolo_dataset

    return write_yolo_dataset(tmp_path_factory.mktemp("families") / "ds", CLASSES, n_train=6, n_val=3, size=SIZE,
                              r_range=(6, 14))


def _settings(tmp: Path, arch: str, nms_free: bool, **model: Any) -> Any:
    from detloop.settings import REPO_ROOT, load_settings

    return load_settings(REPO_ROOT / "configs" / "test.yaml", env={}, overrides={
        "data_dir": str(tmp / "data"),
        "mlflow": {"tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}", "experiment": "families",
                   "model_name": "families-detector"},
        "model": {"arch": arch, "nms_free": nms_free, "input_size": SIZE, "conf_threshold": 0.0,
                  "scoring_conf_threshold": 0.0, "scoring_max_candidates": 30000, "inference_workers": 1,
                  "read_threads": 1, **model},
        "training": {"batch": 4, "nbs": 4, "min_train_frames": 2, "workers": 0, "threads": 1},
        "evaluation": {"min_instances": 1, "latency_frames": 2},
        "gate": {"bootstrap_floor": 0.0},
    })


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "nms_free"), FAMILIES, ids=[f"{a.removesuffix('.yaml')}{'-nmsfree' * f}"
                                                              for a, f in FAMILIES])
def test_family_trains_exports_scores_evaluates_gates_and_serves(
        dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arch: str, nms_free: bool) -> None:
    import json

    import mlflow.pyfunc
    import pandas as pd

    from detloop.clients.registry import RegistryClient
    from detloop.contracts import FrameRef
    from detloop.detections import Detections
    from tasks.evaluation import EvalItem, evaluate_pair, gate_scores, predict_items, slice_from_data_yaml
    from tasks.promotion import decide
    from tasks.registry import promote, record_gate, register_challenger
    from tasks.scoring import OnnxScorer, score
    from tasks.training import train
    from tests.fakes import FakeStore

    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root (./mlruns) lands in the temporary directory
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    s = _settings(tmp_path, arch, nms_free)
    registry, store = RegistryClient(s), FakeStore()

    # train from scratch (the worker subprocess), tracked in MLflow
    res = train(dataset, s, registry, None, f"boot-{arch}", epochs=1, store=store)
    run = registry.client.get_run(res.run_id)
    assert run.data.params["arch"] == arch and run.data.params["mode"] == "bootstrap"
    import torch

    ckpt = torch.load(res.weights, map_location="cpu", weights_only=False)
    head = ckpt["model"].model[-1]
    assert len(head.stride) == (4 if "-p2" in arch else 3)  # the P2 level is there
    assert (getattr(head, "one2one_cv2", None) is not None) == arch.startswith("yolo26")

    # evaluate (exports the artifact with the configured head), gate, register, promote
    golden = slice_from_data_yaml("golden", dataset, "val", len(CLASSES))
    ch, _ = evaluate_pair(res.weights, None, [golden], s, work_dir=tmp_path / "eval")
    meta = json.loads((Path(ch.artifact) / "meta.json").read_text())
    assert meta["head"] == ("one2one" if nms_free else "one2many")
    assert meta["num_anchors"] == sum((SIZE // st) ** 2 for st in ((4, 8, 16, 32) if "-p2" in arch else (8, 16, 32)))
    if arch.startswith("yolo11"):  # the exported raw head equals Ultralytics' own torch head on the trained weights
        from ultralytics import YOLO

        from tasks.evaluation import _load_rgb
        from tasks.export import open_session, preprocess, run_onnx

        batch, _ = preprocess([_load_rgb(str(p)) for p in sorted((dataset.parent / "images" / "val").glob("*.png"))],
                              SIZE)
        raw, emb = run_onnx(open_session(Path(ch.artifact)), batch)
        with torch.no_grad():
            ref = YOLO(str(res.weights)).model.float().eval()(torch.from_numpy(batch))[0].numpy()
        np.testing.assert_allclose(raw, ref, atol=2e-2, rtol=1e-3)
        assert emb.shape == (len(batch), meta["embedding_dim"]) and meta["embedding_dim"] == (480 if "-p2" in arch else 448)
    decision = decide(gate_scores(ch), None, s.gate)
    assert decision.passed, decision
    version = register_challenger(s, registry, res.run_id, res.weights, Path(ch.artifact), ch)
    record_gate(registry, version, decision, res.run_id)
    promote(s, registry, store, version, decision, reason="test", actor="test")

    # one frame through scoring, evaluation and the champion loaded with mlflow.pyfunc
    img = sorted((dataset.parent / "images" / "val").glob("*.png"))[0]
    data = img.read_bytes()
    key = f"frames/camera={CAMERA}/date=2026-01-05/100000-a.png"
    store.put_bytes("prod", key, data)
    scored = score([FrameRef("prod", key, "e", CAMERA, "2026-01-05")], OnnxScorer(Path(ch.artifact), threads=1),
                   store, s.model).frames[0].detections
    evaluated = predict_items(Path(ch.artifact), [EvalItem(str(img), Detections.empty(len(CLASSES)), CAMERA)], s)[0]
    served = mlflow.pyfunc.load_model(f"models:/{s.mlflow.model_name}@champion").predict(
        pd.DataFrame({"image": [data], "camera": [CAMERA]})).iloc[0]
    assert served["error"] == ""
    assert len(scored) > 0
    np.testing.assert_array_equal(scored.xyxy, evaluated.xyxy)
    np.testing.assert_array_equal(scored.confidence, evaluated.confidence)
    np.testing.assert_allclose(np.asarray(served["boxes"], np.float64).reshape(-1, 4), scored.xyxy, atol=1e-3)
    np.testing.assert_array_equal(np.asarray(served["class_ids"], np.int64), scored.class_id)
    assert scored.class_scores is not None and scored.class_scores.shape == (len(scored), len(CLASSES))
    assert len(scored) <= s.model.max_det

    if nms_free and arch == "yolo26n.yaml":  # a fine-tune from the champion keeps the family and both heads
        ft = train(dataset, s, registry, res.weights, f"ft-{arch}", epochs=1, store=store, parent_version=version)
        assert registry.client.get_run(ft.run_id).data.params["arch"] == arch
        head = torch.load(ft.weights, map_location="cpu", weights_only=False)["model"].model[-1]
        assert head.one2one_cv2 is not None and head.cv2 is not None
