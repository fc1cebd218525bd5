"""``detloop bench al --via-label-studio`` against the REAL test stack (Label Studio + SeaweedFS S3).

A tiny benchmark run (training replaced by an untrained YOLO11n, as in ``tests/unit/test_bench_al.py``)
labels its paid frames through Label Studio. Checked: the labels that come back (and are written for
training) are the annotator's, the tasks and images are really there, a resumed round creates no task
and no annotation, and the training labels follow what Label Studio holds (an edit made in Label Studio
shows up in the YOLO txt). Each run uses its own project title (uuid) and deletes it and its S3 objects.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.al import CONTROL, BenchConfig, annotate
from benchmarks.al_labelstudio import S3_PREFIX, bench_round_id, frame_key
from detloop.clients.labelstudio import LabelStudioClient
from detloop.detections import Detections

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["disc", "square", "triangle", "ring", "star"]


@pytest.fixture(scope="module")
def untrained_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from ultralytics.nn.tasks import DetectionModel

    net = DetectionModel("yolo11n.yaml", nc=len(CLASSES), verbose=False)
    net.names = dict(enumerate(CLASSES))
    pt = tmp_path_factory.mktemp("model") / "untrained.pt"
    torch.save({"model": net, "train_args": {}}, pt)
    return pt


@pytest.fixture
def env(stack_settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, untrained_pt: Path):  # type: ignore[no-untyped-def]
    """A tiny run configured for Label Studio (own project title), training replaced; cleaned up after."""
    import benchmarks.al as al
    from detloop.clients.s3 import S3Store

    trained: list[dict[str, Any]] = []

    def fake_train(cfg: Any, data_yaml: Path, init: Path | None, epochs: int, seed: int, out_dir: Path,
                   yolo_dir: Path, arch: str) -> tuple[Path, float]:
        trained.append({"dir": str(out_dir), "data": str(data_yaml)})
        out_dir.mkdir(parents=True, exist_ok=True)
        return untrained_pt, 0.0

    monkeypatch.setattr(al, "train_once", fake_train)
    title = f"detloop-bench-it-{uuid.uuid4().hex[:8]}"
    cfg = BenchConfig(arms=["random", "default"], seeds=[0], rounds=1, budget=4, epochs=1, bootstrap_epochs=1,
                      sizes={"seed": 5, "pool": 14, "eval": 4, "val": 2}, config=str(REPO / "configs" / "test.yaml"),
                      work_dir=str(tmp_path / "work"), threads=1, via_label_studio=True, label_studio_project=title)
    ls = LabelStudioClient(stack_settings)
    store = S3Store(stack_settings)
    yield {"cfg": cfg, "title": title, "ls": ls, "store": store, "s": stack_settings, "trained": trained}
    p = ls.find_project(title)
    if p is not None:
        ls.delete_project(p.id)
    for o in list(store.list(stack_settings.s3.data_bucket, f"{S3_PREFIX}/{title}/")):
        store.delete(stack_settings.s3.data_bucket, o.key)


def _run(cfg: BenchConfig, tmp: Path) -> tuple[dict[str, Any], Any]:
    import benchmarks.al as al

    runner = al.Runner(cfg, log=lambda m: None)
    s = al.run_benchmark(cfg, tmp / "al.json", tmp / "c.png", tmp / "r.png", log=lambda m: None)
    return s, runner


def _tasks(ls: LabelStudioClient, project_id: int) -> list[dict[str, Any]]:
    return list(ls.iter_tasks(project_id, fields="task_only", include="id,data,total_annotations,cancelled_annotations"))


def _close(a: Detections, b: Detections) -> bool:
    """Same classes in the same order, every coordinate within 1 px."""
    return (len(a) == len(b) and np.array_equal(a.class_id, b.class_id)
            and (not len(a) or float(np.abs(a.xyxy - b.xyxy).max()) <= 1.0))


def test_bench_round_via_label_studio(env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tasks.annotation import round_tasks
    from tasks.ls_tasks import convert_round_tasks

    cfg, ls, title = env["cfg"], env["ls"], env["title"]
    s, runner = _run(cfg, tmp_path)
    data, nc = runner.data, len(runner.data.classes)
    default_dir = runner.arm_dir_name("default")
    recs = {a: json.loads(runner.rec_path(a, 0, 1).read_text()) for a in ("random", "default", CONTROL)}

    # (c) the records and the summary say how the labels came
    assert recs["random"]["labels_via"] == recs["default"]["labels_via"] == "label-studio"
    assert recs[CONTROL]["labels_via"] == "none"  # the control arm pays for no frame
    assert s["labels_via"] == {"this_invocation": "label-studio", "rounds": {"label-studio": 2, "none": 1}}
    assert recs["default"]["control_frames"] == 2 and recs["default"]["new_frames"] == 2  # test.yaml: control_min 4
    for a in ("random", "default"):
        rep = recs[a]["label_studio"]
        assert rep["project"] == title and rep["tasks_created"] == rep["annotations_submitted"] == 4
        assert rep["tasks_reused"] == 0

    # one project, one task per paid frame (new and control), one annotation each
    project = ls.find_project(title)
    assert project is not None and project.id == recs["random"]["label_studio"]["project_id"]
    tasks = _tasks(ls, project.id)
    assert len(tasks) == 8 and all(int(t["total_annotations"]) == 1 for t in tasks)
    arms = sorted((t["data"]["round_id"], t["data"]["arm"]) for t in tasks)
    rid_r, rid_d = bench_round_id("random", 0, 1), bench_round_id(default_dir, 0, 1)
    assert arms == sorted([(rid_d, "control")] * 2 + [(rid_d, "selected")] * 2 + [(rid_r, "selected")] * 4)

    # (a) what Label Studio holds, read back with the loop's converter, is the annotator's labels ...
    paid = {a: recs[a]["new_frames_idx"] + recs[a]["control_idx"] for a in ("random", "default")}
    for a, rid in (("random", rid_r), ("default", rid_d)):
        pulled = {f.key: f.detections for f in convert_round_tasks(round_tasks(ls, project.id, rid), rid, CLASSES).frames}
        assert len(pulled) == 4
        for i in paid[a]:
            f = data.pool[i]
            assert _close(pulled[frame_key(title, f)], annotate(f, cfg.noise, 0, nc)), f.name
    # ... and the YOLO txt each arm trains on holds the same labels
    n_boxes = 0
    for a, d in (("random", "random"), ("default", default_dir)):
        for i in recs[a]["new_frames_idx"]:
            f = data.pool[i]
            txt = runner.root / "runs" / d / "s0" / "labelled" / "labels" / f"{f.name}.txt"
            got = Detections.from_yolo_txt(txt.read_text(), f.width, f.height, nc)
            assert _close(got, annotate(f, cfg.noise, 0, nc)), f.name
            n_boxes += len(got)
    assert n_boxes > 0  # the check compared boxes, not only empty frames

    # the image of a task reaches the editor from S3 (Label Studio resolves the s3:// URI)
    t0 = next(t for t in tasks if t["data"]["round_id"] == rid_r)
    f0 = next(f for f in data.pool if f.name == t0["data"]["bench_frame"])
    status, body, _ = ls.fetch_as_browser(int(t0["id"]), t0["data"]["image"])
    assert status == 200 and body == Path(f0.image).read_bytes()

    # (b) the same rounds again (records gone, e.g. a crash after labelling): no new task, no new annotation
    for a in ("random", "default"):
        runner.rec_path(a, 0, 1).unlink()
    _run(cfg, tmp_path)
    again = _tasks(ls, project.id)
    assert sorted(int(t["id"]) for t in again) == sorted(int(t["id"]) for t in tasks)
    assert all(int(t["total_annotations"]) == 1 for t in again)
    for a in ("random", "default"):
        rec = json.loads(runner.rec_path(a, 0, 1).read_text())
        rep = rec["label_studio"]
        assert rec["new_frames_idx"] + rec["control_idx"] == paid[a]  # the same frames were paid again
        assert (rep["tasks_created"], rep["tasks_reused"], rep["annotations_submitted"]) == (0, 4, 0)

    # training labels follow Label Studio: a corrected annotation (the latest one wins) reaches the txt
    i = recs["random"]["new_frames_idx"][0]
    f = data.pool[i]
    tid = next(int(t["id"]) for t in tasks if t["data"]["round_id"] == rid_r and t["data"]["bench_frame"] == f.name)
    fixed = Detections(xyxy=np.array([[10.0, 12.0, 60.0, 70.0]]), confidence=np.ones(1), class_id=np.array([4]))
    ls.create_annotation(tid, fixed.to_label_studio(f.width, f.height, CLASSES, with_score=False))
    runner.rec_path("random", 0, 1).unlink()
    _run(cfg, tmp_path)
    txt = runner.root / "runs" / "random" / "s0" / "labelled" / "labels" / f"{f.name}.txt"
    assert _close(Detections.from_yolo_txt(txt.read_text(), f.width, f.height, nc), fixed)
    rep = json.loads(runner.rec_path("random", 0, 1).read_text())["label_studio"]
    assert rep["annotations_submitted"] == 0 and rep["vs_direct"]["frames_differing"] == 1
