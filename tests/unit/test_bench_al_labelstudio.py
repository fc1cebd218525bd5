"""``--via-label-studio`` of the active-learning benchmark: the pure parts, and the oracle's bookkeeping
against an in-memory stand-in for the Label Studio API (the real server: tests/integration)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import benchmarks.al_labelstudio as als
from benchmarks.al import AnnotatorNoise, BenchConfig, annotate, quick_config
from benchmarks.al_data import BenchFrame
from benchmarks.al_labelstudio import (
    LabelStudioOracle,
    annotation_result,
    bench_round_id,
    bench_task,
    compare_labels,
    frame_key,
    labels_by_key,
    project_title,
)
from detloop.detections import Detections
from detloop.errors import DataError, ServiceError
from tasks.ls_tasks import convert_round_tasks
from tests.fakes import FakeLabelStudio, FakeStore

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["disc", "square", "triangle", "ring", "star"]
NOISE = AnnotatorNoise(jitter=0.05, p_miss_small=0.3, p_flip=0.2)


def bframe(name: str, n: int = 5, w: int = 640, h: int = 480, tmp: Path | None = None) -> BenchFrame:
    rng = np.random.default_rng(len(name) + n)
    xy = rng.uniform(0, 1, (n, 2)) * [w - 130, h - 130]  # boxes inside the frame
    sz = rng.uniform(8, 120, (n, 2))
    truth = Detections(np.hstack([xy, xy + sz]), np.ones(n), rng.integers(0, 5, n))
    image = f"/nonexistent/{name}.jpg"
    if tmp is not None:
        image = str(tmp / f"{name}.jpg")
        Path(image).write_bytes(b"\xff\xd8jpeg-" + name.encode())
    return BenchFrame(name, image, truth, w, h, "cam1")


def exported(task: dict[str, Any], tid: int, results: list[list[dict[str, Any]]], cancelled: bool = False) -> dict[str, Any]:
    """A task as the export API returns it: id, data, annotations (oldest first), predictions."""
    anns = [{"id": 100 * tid + j, "result": r, "was_cancelled": cancelled,
             "updated_at": f"2026-01-01T00:00:{j:02d}Z"} for j, r in enumerate(results)]
    return {"id": tid, "data": task["data"], "annotations": anns, "predictions": task.get("predictions", [])}


# ---- pure helpers ------------------------------------------------------------------------------
def test_names_are_derived_from_the_run() -> None:
    f = bframe("cam1__2026-01-05_0007")
    assert project_title("8cb267d3ce") == "detloop-bench-8cb267d3ce"
    assert bench_round_id("default-1a2b3c4d", 2, 3) == "bench-default-1a2b3c4d-s2-r3"
    assert frame_key("detloop-bench-x", f) == "bench/al/detloop-bench-x/frames/cam1__2026-01-05_0007.jpg"


def test_bench_task_is_the_loops_task_of_an_s3_frame() -> None:
    f = bframe("f1")
    t = bench_task(f, "detloop-data", "bench/al/p/frames/f1.jpg", "bench-random-s0-r1", "control", 3, CLASSES)
    d = t["data"]
    assert d["image"] == "s3://detloop-data/bench/al/p/frames/f1.jpg"
    assert (d["s3_key"], d["bucket"], d["round_id"], d["arm"]) == ("bench/al/p/frames/f1.jpg", "detloop-data",
                                                                   "bench-random-s0-r1", "control")
    assert (d["width"], d["height"], d["rank"], d["bench_frame"], d["camera"]) == (640, 480, 3, "f1", "cam1")
    assert t["predictions"] == []  # no pre-annotation: the benchmark's annotator does not look at one
    json.dumps(t)


def test_annotation_round_trip_through_the_loops_converter() -> None:
    frames = [bframe("a", 6), bframe("b", 4, w=320, h=240), bframe("neg", 0)]
    keys = [f"k/{f.name}.jpg" for f in frames]
    direct = [annotate(f, NOISE, 1, 5) for f in frames]
    tasks = []
    for i, (f, k, d) in enumerate(zip(frames, keys, direct, strict=True)):
        t = bench_task(f, "b", k, "rid", "control" if f.name == "b" else "selected", i, CLASSES)
        res = annotation_result(d, f, CLASSES)
        assert all(r["from_name"] == "label" and r["to_name"] == "image" and "score" not in r for r in res)
        tasks.append(exported(t, 10 + i, [res]))
    tasks.append(exported(bench_task(bframe("other"), "b", "k/other.jpg", "another-round", "selected", 0, CLASSES),
                          99, [[]]))
    pulled = convert_round_tasks(tasks, "rid", CLASSES)
    got = labels_by_key(pulled, list(reversed(keys)))[::-1]  # in the order asked for
    for d, g in zip(direct, got, strict=True):
        assert d.equals(g, atol=1e-6)
    assert len(got[2]) == 0  # a frame with no box is a valid negative
    assert pulled.report["by_arm"] == {"selected": 2, "control": 1}
    assert compare_labels(direct, got) == {"frames_differing": 0, "max_abs_px": pytest.approx(0.0, abs=1e-6),
                                           "boxes_missing": 0}


def test_degenerate_boxes_are_the_one_difference_to_the_direct_path() -> None:
    """A box the annotator clipped to nothing (its truth lies outside the frame) is written by the direct
    path but dropped by the loop's validation (``label_studio.min_box_pixels``); the report counts it."""
    f = bframe("edge", 2)
    f.truth.xyxy[1] = [700.0, 100.0, 760.0, 150.0]  # right of a 640 px frame
    direct = annotate(f, AnnotatorNoise(jitter=1e-6, p_miss_small=0, p_flip=0), 0, 5)  # jitter clips to the frame
    assert len(direct) == 2 and direct.xyxy[1, 0] == direct.xyxy[1, 2] == 640.0
    t = bench_task(f, "b", "k/edge.jpg", "rid", "selected", 0, CLASSES)
    pulled = convert_round_tasks([exported(t, 1, [annotation_result(direct, f, CLASSES)])], "rid", CLASSES)
    got = labels_by_key(pulled, ["k/edge.jpg"])
    assert got[0].equals(direct[np.array([True, False])], atol=1e-6)
    assert pulled.report["boxes_dropped"] == 1
    assert compare_labels([direct], got) == {"frames_differing": 1, "max_abs_px": 0.0, "boxes_missing": 1}


def test_latest_annotation_wins_and_unlabelled_frames_are_refused() -> None:
    f = bframe("a", 3)
    t = bench_task(f, "b", "k/a.jpg", "rid", "selected", 0, CLASSES)
    first = annotation_result(annotate(f, NOISE, 0, 5), f, CLASSES)
    fixed = Detections(np.array([[1.0, 2.0, 30.0, 40.0]]), np.ones(1), np.array([4]))
    pulled = convert_round_tasks([exported(t, 1, [first, annotation_result(fixed, f, CLASSES)])], "rid", CLASSES)
    assert labels_by_key(pulled, ["k/a.jpg"])[0].equals(fixed, atol=1e-6)
    skipped = convert_round_tasks([exported(t, 1, [[]], cancelled=True)], "rid", CLASSES)
    with pytest.raises(DataError, match=r"1 of 1 frame\(s\).*k/a.jpg.*1 skipped"):
        labels_by_key(skipped, ["k/a.jpg"])
    with pytest.raises(DataError, match="0 labelled"):
        labels_by_key(convert_round_tasks([], "rid", CLASSES), ["k/a.jpg"])


def test_compare_labels_reports_shifts_class_changes_and_drops() -> None:
    a = Detections(np.array([[0.0, 0, 10, 10], [20, 20, 30, 30]]), np.ones(2), np.array([0, 1]))
    shifted = Detections(a.xyxy + np.array([0.5, 0, 0, 0]), np.ones(2), a.class_id)
    flipped = Detections(a.xyxy, np.ones(2), np.array([0, 2]))
    assert compare_labels([a, a, a], [shifted, flipped, a[np.array([True, False])]]) == {
        "frames_differing": 2, "max_abs_px": 0.5, "boxes_missing": 1}


def test_run_key_does_not_depend_on_how_labels_travel(monkeypatch: pytest.MonkeyPatch) -> None:
    # the bootstrap key of caches made before --via-label-studio existed stays valid; the run key changed once,
    # with issue 22's control retirement (retire_control_after: a run's fine-tunes can differ from before).
    # Those caches are YOLO11n's (the default before issue 20): with that family the keys are unchanged
    monkeypatch.setenv("DETLOOP_MODEL__ARCH", "yolo11n.yaml")
    assert BenchConfig().run_key() == "38161cb654" and BenchConfig().bootstrap_key() == "c0aad6bfa1"
    assert quick_config().run_key() == "4eb9224b90"
    via = BenchConfig(via_label_studio=True, label_studio_project="mine")
    assert via.run_key() == BenchConfig().run_key() and via.bootstrap_key() == BenchConfig().bootstrap_key()


def test_keys_hold_the_model_family(monkeypatch: pytest.MonkeyPatch) -> None:
    # another family (the default yolo11n-p2 since issue 20) never reuses a YOLO11n cache; given bootstrap weights
    # make the family irrelevant
    monkeypatch.setenv("DETLOOP_MODEL__ARCH", "yolo11n.yaml")
    legacy = (BenchConfig().run_key(), BenchConfig().bootstrap_key())
    given = BenchConfig(bootstrap_weights="/nonexistent/champion.pt").bootstrap_key()
    monkeypatch.setenv("DETLOOP_MODEL__ARCH", "yolo11n-p2.yaml")
    p2 = (BenchConfig().run_key(), BenchConfig().bootstrap_key())
    assert p2[0] != legacy[0] and p2[1] != legacy[1]
    monkeypatch.delenv("DETLOOP_MODEL__ARCH")
    assert (BenchConfig().run_key(), BenchConfig().bootstrap_key()) == p2  # the shipped default: yolo11n-p2
    assert BenchConfig(bootstrap_weights="/nonexistent/champion.pt").bootstrap_key() == given


# ---- the oracle against an in-memory Label Studio ----------------------------------------------------
@pytest.fixture
def settings(tmp_path: Path) -> Any:
    from detloop.settings import load_settings

    return load_settings(REPO / "configs" / "test.yaml", env={}, overrides={"data_dir": str(tmp_path / "dd")})


def test_oracle_labels_once_and_a_resumed_round_creates_nothing(settings: Any, tmp_path: Path) -> None:
    frames = [bframe(f"f{i}", n=i % 4, tmp=tmp_path) for i in range(5)]
    ls, store = FakeLabelStudio(), FakeStore()
    o = LabelStudioOracle(settings, "detloop-bench-t", CLASSES, NOISE, ls=ls, store=store, log=lambda m: None)
    o.check()
    got = o.label(frames, 3, 1, "random", control={"f4"})
    for f, g in zip(frames, got, strict=True):
        assert g.equals(annotate(f, NOISE, 3, 5), atol=1e-6)
    rep = o.last_report
    assert (rep["tasks_created"], rep["annotations_submitted"], rep["images_uploaded"]) == (5, 5, 5)
    assert rep["vs_direct"]["frames_differing"] == 0 and rep["round_id"] == "bench-random-s3-r1"
    assert {t["data"]["bench_frame"]: t["data"]["arm"] for t in ls.tasks.values()}["f4"] == "control"
    assert store.objects[(settings.s3.data_bucket, frame_key("detloop-bench-t", frames[0]))] == \
        Path(frames[0].image).read_bytes()
    # the same round again, from a fresh process (new oracle): nothing is created, uploaded or annotated
    o2 = LabelStudioOracle(settings, "detloop-bench-t", CLASSES, NOISE, ls=ls, store=store, log=lambda m: None)
    again = o2.label(frames, 3, 1, "random", control={"f4"})
    assert all(a.equals(b) for a, b in zip(got, again, strict=True))
    assert (o2.last_report["tasks_created"], o2.last_report["annotations_submitted"],
            o2.last_report["images_uploaded"], o2.last_report["tasks_reused"]) == (0, 0, 0, 5)
    assert len(ls.tasks) == 5 and all(len(t["annotations"]) == 1 for t in ls.tasks.values())
    assert list(ls.projects) == ["detloop-bench-t"]
    # another round of another arm reuses the images and the project but gets its own tasks
    o2.label(frames[:2], 3, 2, "entropy_sum")
    assert o2.last_report["images_uploaded"] == 0 and o2.last_report["tasks_created"] == 2 and len(ls.tasks) == 7


def test_oracle_completes_a_half_done_round(settings: Any, tmp_path: Path) -> None:
    """A crash after the import and one annotation: the rest is annotated, nothing is duplicated."""
    frames = [bframe(f"f{i}", n=3, tmp=tmp_path) for i in range(4)]
    ls, store = FakeLabelStudio(), FakeStore()
    o = LabelStudioOracle(settings, "p", CLASSES, NOISE, ls=ls, store=store, log=lambda m: None)
    pid = o.project.id
    rid = bench_round_id("random", 0, 1)
    keys = [frame_key("p", f) for f in frames]
    ids = ls.import_tasks(pid, [bench_task(f, o.bucket, k, rid, "selected", i, CLASSES)
                                for i, (f, k) in enumerate(zip(frames[:3], keys[:3], strict=True))])
    ls.create_annotation(ids[0], annotation_result(annotate(frames[0], NOISE, 0, 5), frames[0], CLASSES))
    got = o.label(frames, 0, 1, "random")
    assert (o.last_report["tasks_created"], o.last_report["tasks_reused"], o.last_report["annotations_submitted"]) \
        == (1, 3, 3)
    assert len(ls.tasks) == 4 and all(len(t["annotations"]) == 1 for t in ls.tasks.values())
    assert all(g.equals(annotate(f, NOISE, 0, 5), atol=1e-6) for f, g in zip(frames, got, strict=True))


def test_oracle_returns_what_label_studio_holds(settings: Any, tmp_path: Path) -> None:
    """A reviewer on the server removes every frame's last box: the oracle returns the reviewed labels."""
    frames = [bframe(f"f{i}", n=3, tmp=tmp_path) for i in range(3)]
    msgs: list[str] = []
    o = LabelStudioOracle(settings, "p", CLASSES, AnnotatorNoise(0, 0, 0), ls=FakeLabelStudio(edit=lambda r: r[:-1]),
                          store=FakeStore(), log=msgs.append)
    got = o.label(frames, 0, 1, "random")
    assert [len(g) for g in got] == [2, 2, 2]
    assert o.last_report["vs_direct"] == {"frames_differing": 3, "max_abs_px": 0.0, "boxes_missing": 3}
    assert any("differ from the direct annotator" in m for m in msgs)
    with pytest.raises(DataError, match="paid twice"):
        o.label([frames[0], frames[0]], 0, 2, "random")


def test_a_label_studio_that_is_down_is_one_line_naming_the_url(tmp_path: Path) -> None:
    from detloop.settings import load_settings

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    token = "0123456789abcdef0123456789abcdef01234567"
    st = load_settings(REPO / "configs" / "test.yaml", env={"LABEL_STUDIO_API_KEY": token},
                       overrides={"data_dir": str(tmp_path), "label_studio": {"url": url}})
    o = LabelStudioOracle(st, "p", CLASSES, NOISE, store=FakeStore(), log=lambda m: None)
    with pytest.raises(ServiceError) as err:
        o.check()
    msg = str(err.value)
    assert url in msg and "not reachable" in msg and "\n" not in msg and token not in msg


# ---- the Runner's hook ---------------------------------------------------------------------------
def test_runner_trains_on_what_label_studio_returns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from ultralytics.nn.tasks import DetectionModel

    import benchmarks.al as al

    net = DetectionModel("yolo11n.yaml", nc=len(CLASSES), verbose=False)
    pt = tmp_path / "untrained.pt"
    torch.save({"model": net, "train_args": {}}, pt)
    monkeypatch.setattr(al, "train_once", lambda *a, **k: (pt, 0.0))
    fake = FakeLabelStudio(edit=lambda r: r[:1])  # the server keeps only each frame's first box

    class Oracle(LabelStudioOracle):
        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, ls=fake, store=FakeStore(), **k)

    monkeypatch.setattr(als, "LabelStudioOracle", Oracle)
    preflights: list[Any] = []  # no services in a unit test: the preflight is recorded, not sent
    monkeypatch.setattr(als, "check_services", lambda settings, *a, **k: preflights.append(settings))
    cfg = BenchConfig(arms=["random", "default"], seeds=[0], rounds=1, budget=4, epochs=1, bootstrap_epochs=1,
                      sizes={"seed": 5, "pool": 14, "eval": 4, "val": 2}, config=str(REPO / "configs" / "test.yaml"),
                      work_dir=str(tmp_path / "work"), threads=1, via_label_studio=True)
    s = al.run_benchmark(cfg, tmp_path / "al.json", tmp_path / "c.png", tmp_path / "r.png", log=lambda m: None)
    assert s["labels_via"] == {"this_invocation": "label-studio", "rounds": {"label-studio": 2, "none": 1}}
    assert len(preflights) == 1  # the services are checked once, before any work
    assert list(fake.projects) == [project_title(cfg.run_key())]
    assert len(fake.tasks) == 8  # random 4 + default 2 new + 2 control
    root = Path(s["outputs"]["work_dir"])
    rec = json.loads((root / "runs" / "random" / "s0" / "r1.json").read_text())
    assert rec["labels_via"] == "label-studio" and rec["label_studio"]["tasks_created"] == 4
    pool = {f.name: f for f in al.Runner(cfg, log=lambda m: None, preflight=False).data.pool}
    for name in rec["new_frame_names"]:
        f = pool[name]
        txt = (root / "runs" / "random" / "s0" / "labelled" / "labels" / f"{name}.txt").read_text()
        direct = annotate(f, cfg.noise, 0, len(CLASSES))
        assert Detections.from_yolo_txt(txt, f.width, f.height, 5).equals(direct[:1], atol=0.01)
    assert rec["new_boxes_drawn"] == sum(min(1, len(annotate(pool[n], cfg.noise, 0, 5))) for n in rec["new_frame_names"])
    # the direct path (default) records how its labels came too
    cfg2 = BenchConfig(**{**cfg.__dict__, "via_label_studio": False, "work_dir": str(tmp_path / "w2")})
    s2 = al.run_benchmark(cfg2, tmp_path / "al2.json", tmp_path / "c2.png", tmp_path / "r2.png", log=lambda m: None)
    assert s2["labels_via"] == {"this_invocation": "direct", "rounds": {"direct": 2, "none": 1}}
    assert len(fake.tasks) == 8  # Label Studio untouched


def test_runner_checks_the_services_before_rendering_or_training(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import benchmarks.al as al

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("DETLOOP_LABEL_STUDIO__URL", url)
    monkeypatch.setenv("DETLOOP_DATA_DIR", str(tmp_path / "dd"))
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "f" * 40)
    monkeypatch.setattr(al, "train_once", lambda *a, **k: pytest.fail("trained although Label Studio is down"))
    cfg = BenchConfig(arms=["random"], seeds=[0], rounds=1, budget=2, sizes={"seed": 3, "pool": 4, "eval": 2, "val": 1},
                      config=str(REPO / "configs" / "test.yaml"), work_dir=str(tmp_path / "work"), via_label_studio=True)
    with pytest.raises(ServiceError, match=f"Label Studio at {url} is not reachable"):
        al.run_benchmark(cfg, tmp_path / "al.json", tmp_path / "c.png", tmp_path / "r.png", log=lambda m: None)
    assert not (tmp_path / "work").exists()  # nothing rendered
    # --summary-only needs no service
    summary = al.run_benchmark(cfg, tmp_path / "al.json", tmp_path / "c.png", tmp_path / "r.png", summary_only=True,
                               log=lambda m: None)
    assert summary["labels_via"] == {"this_invocation": "label-studio", "rounds": {}}
