"""Error-weighted selection (issue 19): per-frame multipliers from the champion's error breakdown, applied to the
score before the acquisition (off by default), the weights the settings choose, and where they are stored."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detloop.contracts import FrameRef, ScoredFrame
from detloop.detections import Detections
from detloop.settings import ErrorWeightingSettings, SelectionSettings
from tasks.error_analysis import read_breakdown, selection_weights, store_breakdown
from tasks.selection import frame_error_weights, pool_from_frames, select

NAMES = ["car", "person", "bike"]
C = len(NAMES)


def frame(i: int, camera: str, classes: list[int], conf: float = 0.6) -> ScoredFrame:
    """A frame of ``camera`` with one box per entry of ``classes`` (top class that class, at ``conf``)."""
    s = np.full((len(classes), C), 0.05, np.float32)
    for j, c in enumerate(classes):
        s[j, c] = conf
    xyxy = np.array([[10 * j, 0, 10 * j + 8, 8] for j in range(len(classes))], np.float32).reshape(-1, 4)
    det = Detections(xyxy, s.max(1) if len(s) else np.zeros(0), s.argmax(1) if len(s) else np.zeros(0),
                     class_scores=s.reshape(-1, C))
    ref = FrameRef("prod", f"frames/camera={camera}/date=2026-01-05/{i:06d}.jpg", f"e{i}", camera, "2026-01-05")
    return ScoredFrame(ref, 64, 48, det, np.zeros(4, np.float32))


def sel(**kw: object) -> SelectionSettings:
    base = {"budget": 2, "strategy": "entropy", "aggregation": "max", "diversity": "none", "control_share": 0.0,
            "control_min": 0, "class_balance": False}
    base.update(kw)
    return SelectionSettings(**base)


def on(**kw: object) -> dict[str, object]:
    return {"enabled": True, **kw}


WEIGHTS = {"class": {"person": 2.0, "car": 0.5}, "camera": {"cam-dark": 1.5, "cam-day": 0.8}}


def test_a_frame_weighs_its_camera_times_its_most_failing_detected_class() -> None:
    frames = [
        frame(0, "cam-dark", [0, 1]),  # car 0.5, person 2.0 -> max 2.0; x camera 1.5 = 3.0
        frame(1, "cam-day", [0]),  # car 0.5 x 0.8 = 0.4
        frame(2, "cam-dark", []),  # no detection: camera only, 1.5
        frame(3, "cam-new", [2]),  # unknown camera and a class without a weight: 1
        frame(4, "cam-day", [1], conf=0.2),  # its only box is under the threshold: camera only, 0.8
    ]
    pool, _ = pool_from_frames(frames, C)
    w = frame_error_weights(pool, [f.frame.camera for f in frames], WEIGHTS, 10.0, 0.25, NAMES)
    assert w.tolist() == pytest.approx([3.0, 0.4, 1.5, 1.0, 0.8])


def test_the_product_is_clipped_to_the_cap_both_ways() -> None:
    frames = [frame(0, "cam-dark", [1]), frame(1, "cam-day", [0])]
    pool, _ = pool_from_frames(frames, C)
    w = frame_error_weights(pool, ["cam-dark", "cam-day"], {"class": {"person": 3.0, "car": 1 / 3},
                                                              "camera": {"cam-dark": 3.0, "cam-day": 1 / 3}},
                            3.0, 0.25, NAMES)
    assert w.tolist() == pytest.approx([3.0, 1 / 3])


def test_class_weights_without_names_are_keyed_by_index() -> None:
    frames = [frame(0, "c", [1]), frame(1, "c", [2])]
    pool, _ = pool_from_frames(frames, C)
    assert frame_error_weights(pool, ["c", "c"], {"class": {"1": 2.0}}, 3.0, 0.25).tolist() == [2.0, 1.0]


def test_disabled_weighting_ranks_exactly_as_without_weights() -> None:
    rng = np.random.default_rng(0)
    frames = [frame(i, f"cam-{'dark' if i % 2 else 'day'}", list(rng.integers(0, C, int(rng.integers(0, 4)))),
                    conf=float(rng.uniform(0.3, 0.9))) for i in range(40)]
    base = select(frames, None, sel(budget=10))
    off = select(frames, None, sel(budget=10), slice_weights=WEIGHTS)
    assert off.final_scores.tolist() == base.final_scores.tolist()
    assert [f.frame.key for f in off.selected] == [f.frame.key for f in base.selected]
    assert off.report["error_weighting"] == {"enabled": False} and "error_weight" not in off.report["pool"]


def test_enabled_weighting_lifts_the_failing_class_and_camera_and_reports_it() -> None:
    # equal uncertainty everywhere: only the error weight can order the frames
    frames = [frame(0, "cam-day", [0]), frame(1, "cam-day", [1]), frame(2, "cam-dark", [0]), frame(3, "cam-day", [2])]
    src = {"round_id": "r-7", "version": "3", "slice": "golden", "role": "champion"}
    res = select(frames, None, sel(budget=2, error_weighting=on(cap=10.0)), class_names=NAMES,
                 slice_weights={**WEIGHTS, "source": src})
    w = res.report["pool"]["error_weight"]
    assert w == pytest.approx([0.4, 1.6, 0.75, 0.8])
    assert res.final_scores.tolist() == pytest.approx((res.final_scores[3] / 0.8 * np.array(w)).tolist())
    assert [f.frame.key for f in res.selected] == [frames[1].frame.key, frames[3].frame.key]
    rep = res.report["error_weighting"]
    assert rep["up_weighted"] == 1 and rep["down_weighted"] == 3 and rep["source"] == src
    assert rep["weights"] == {"class": WEIGHTS["class"], "camera": WEIGHTS["camera"]}
    assert "error weight 1.60" in res.selected[0].reason
    assert any("error weighting" in n and "r-7" in n for n in res.notes)
    json.dumps(res.report)


def test_enabled_without_a_breakdown_weighs_every_frame_one_and_says_so() -> None:
    frames = [frame(i, "cam-day", [i % C]) for i in range(6)]
    base = select(frames, None, sel())
    res = select(frames, None, sel(error_weighting=on()), slice_weights=None)
    assert res.final_scores.tolist() == base.final_scores.tolist()
    assert any("no error breakdown" in n for n in res.notes) and res.report["error_weighting"]["weights"] is None


def test_selection_weights_follow_the_settings_slice_and_kinds() -> None:
    groups = {"class_car": {"sufficient": True, "ap": 0.9}, "class_person": {"sufficient": True, "ap": 0.3},
              "camera_a": {"sufficient": True, "ap": 0.2}, "camera_b": {"sufficient": True, "ap": 0.8}}
    b = {"control": {"groups": groups}}
    assert selection_weights(b, ErrorWeightingSettings()) == {"class": {}, "camera": {}}  # golden is missing
    w = selection_weights(b, ErrorWeightingSettings(slice="control", kinds=["camera"], cap=10.0))
    assert w["class"] == {} and w["camera"]["a"] > 1.0 > w["camera"]["b"]
    assert w["camera"]["a"] == pytest.approx(1 + (0.8 / 0.5 - 1))  # failure 0.8 over the mean failure 0.5
    assert all(v == 1.0 for v in selection_weights(b, ErrorWeightingSettings(slice="control", strength=0.0)
                                                   )["class"].values())


def test_a_breakdown_is_stored_per_model_version_and_read_back() -> None:
    from tests.fakes import FakeStore

    store = FakeStore()
    assert read_breakdown(store, "data", "det", "4") is None
    key = store_breakdown(store, "data", "det", "4", {"golden": {"groups": {}}}, {"round_id": "r-1"})
    assert key == "errors/det/v4.json"
    got = read_breakdown(store, "data", "det", "4")
    assert got["breakdowns"] == {"golden": {"groups": {}}} and got["source"] == {"round_id": "r-1"}
    assert read_breakdown(store, "data", "other-model", "4") is None


def test_a_round_breaks_the_challenger_down_too_when_the_selection_weighs_by_errors_and_stores_both(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from types import SimpleNamespace

    from detloop.settings import Settings
    from flows.steps import store_errors
    from tasks.error_analysis import write_pair_breakdowns
    from tasks.evaluation import EvalItem, EvalReport, EvalSlice
    from tests.fakes import FakeStore

    gt = Detections(np.array([[0, 0, 50, 50], [60, 0, 90, 40]], np.float32), np.ones(2), np.array([0, 1]))
    miss = gt[np.array([True, False])]
    slices = [EvalSlice("golden", [EvalItem("x.png", gt, "cam1")]), EvalSlice("control", [EvalItem("y.png", gt)])]

    def pair() -> tuple[EvalReport, EvalReport]:
        preds = {"golden": [miss], "control": [gt]}
        return EvalReport("challenger", {}, predictions=dict(preds)), EvalReport("champion", {}, predictions=preds)

    s = Settings(classes=["a", "b"], evaluation={"min_instances": 1})
    ch, cp = pair()
    write_pair_breakdowns(ch, cp, slices, s, tmp_path / "off")
    assert set(cp.error_breakdown) == {"golden", "control"} and ch.error_breakdown == {}
    s.selection.error_weighting.enabled = True
    ch, cp = pair()
    write_pair_breakdowns(ch, cp, slices, s, tmp_path / "on")
    assert list(ch.error_breakdown) == ["golden"]  # the weighting slice only
    assert ch.error_breakdown["golden"]["groups"]["class_b"]["ap"] == 0.0

    clients = SimpleNamespace(store=FakeStore())
    keys = store_errors.fn(s, clients, {"5": ("challenger", ch), "4": ("champion", EvalReport("old", {}))},
                           {"round_id": "r-2"})
    assert keys == [f"errors/{s.mlflow.model_name}/v5.json"]  # a report without a breakdown is not stored
    got = read_breakdown(clients.store, s.s3.data_bucket, s.mlflow.model_name, "5")
    assert got["source"] == {"round_id": "r-2", "role": "challenger"} and got["breakdowns"] == ch.error_breakdown


def test_bench_al_weighs_by_the_models_breakdown_on_its_evaluation_set() -> None:
    from benchmarks.al import eval_slice_weights
    from benchmarks.al_data import BenchFrame
    from detloop.settings import Settings

    box = Detections(np.array([[0, 0, 40, 40]], np.float32), np.ones(1), np.array([0]))
    frames = [BenchFrame(f"f{i}", "x.png", box, 64, 64, "night" if i % 2 else "day") for i in range(8)]
    found = Detections(box.xyxy, np.array([0.9]), box.class_id)
    preds = [Detections.empty() if f.camera == "night" else found for f in frames]  # misses every night box
    s = Settings(classes=["car", "person"], evaluation={"min_instances": 2},
                 selection={"error_weighting": {"enabled": True, "slice": "golden", "cap": 3.0}})
    w = eval_slice_weights(frames, preds, s.classes, s)
    assert w["camera"]["night"] > 1.0 > w["camera"]["day"]
    assert w["class"] == {"car": 1.0}  # one class: its failure is the mean ("person" has no instances)
    assert w["source"]["slice"] == "golden" and w["source"]["frames"] == 8


def test_bench_al_default_arm_selects_with_error_weights_when_enabled(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Wiring only (training replaced by an untrained model): the env override gives the default arm its own cache
    directory, the round weighs by the evaluation predictions of its current model (not inferred again) and records
    the weights it selected with."""
    from pathlib import Path

    import torch
    from ultralytics.nn.tasks import DetectionModel

    import benchmarks.al as al
    from detloop.settings import load_settings

    repo = Path(__file__).resolve().parents[2]
    classes = ["disc", "square", "triangle", "ring", "star"]
    net = DetectionModel("yolo11n.yaml", nc=len(classes), verbose=False)
    net.names = dict(enumerate(classes))
    random_pt = tmp_path / "untrained.pt"
    torch.save({"model": net, "train_args": {}}, random_pt)

    def fake_train(cfg, data_yaml, init, epochs, seed, out_dir, yolo_dir, arch):  # type: ignore[no-untyped-def]
        out_dir.mkdir(parents=True, exist_ok=True)
        return random_pt, 0.0

    monkeypatch.setattr(al, "train_once", fake_train)
    cfg = al.BenchConfig(arms=["random", "default"], seeds=[0], rounds=1, budget=4, epochs=1, bootstrap_epochs=1,
                         sizes={"seed": 5, "pool": 12, "eval": 6, "val": 2}, config=str(repo / "configs" / "test.yaml"),
                         work_dir=str(tmp_path / "work"), threads=1)
    plain = f"default-{al.selection_key(load_settings(cfg.config).selection)}"
    monkeypatch.setenv("DETLOOP_SELECTION__ERROR_WEIGHTING__ENABLED", "true")
    weighted = f"default-{al.selection_key(load_settings(cfg.config).selection)}"
    assert weighted != plain
    evals: list[str] = []
    real_infer = al.infer

    def counting_infer(weights, frames, idx, *a, **k):  # type: ignore[no-untyped-def]
        if len(list(idx)) == 6 and a[-1] is False:  # the evaluation set (6 frames), no embeddings
            evals.append(str(weights))
        return real_infer(weights, frames, idx, *a, **k)

    monkeypatch.setattr(al, "infer", counting_infer)
    s = al.run_benchmark(cfg, tmp_path / "al.json", tmp_path / "c.png", tmp_path / "r.png", log=lambda m: None)
    rec = json.loads((Path(s["outputs"]["work_dir"]) / "runs" / weighted / "s0" / "r1.json").read_text())
    ew = rec["selection"]["error_weighting"]
    assert ew["enabled"] is True and ew["source"]["evaluated_on"] == "bench eval set"
    assert set(ew["weights"]) == {"class", "camera"}
    assert rec["selection"]["selection_settings"]["error_weighting"]["enabled"] is True
    # the evaluation set is inferred once per model: the bootstrap and each of the 3 arms' round-1 model; the weights
    # of round 1 come from the bootstrap's evaluation predictions
    assert len(evals) == 1 + 3
    # a resumed run (the bootstrap evaluated in an earlier invocation) infers the bootstrap's predictions again
    (Path(s["outputs"]["work_dir"]) / "runs" / weighted / "s0" / "r1.json").unlink()
    evals.clear()
    al.run_benchmark(cfg, tmp_path / "al.json", tmp_path / "c.png", tmp_path / "r.png", log=lambda m: None)
    assert sum("/bootstrap/" in w for w in evals) == 1 and len(evals) == 1 + 1  # the weights, then r1's evaluation
