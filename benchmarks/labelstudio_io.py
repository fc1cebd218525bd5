"""Benchmark: Label Studio I/O through the real server (push and pull of 10,000 tasks).

    DETLOOP_CONFIG=configs/test.yaml .venv/bin/detloop stack up
    .venv/bin/python -m benchmarks.labelstudio_io [--config configs/test.yaml] [--tasks 10000] [--copy-frames 1000]

1. push: ``tasks.annotation.push_round`` of N selected frames with pre-annotations (3 boxes each):
   project lookup + label-config check, S3 storage check, dedupe listing of the round, batched import
   (``label_studio.import_batch_size``), round record write. Then the same push again (the dedupe
   listing of N tasks, nothing imported).
2. pull: N labelled tasks are set up with annotations embedded in an import (not timed separately
   from the push: reported as ``setup_s``), then ``tasks.annotation.pull_round(copy=False)``: list the
   round's tasks with annotations and predictions, pick the annotation per policy, convert to
   ``Detections``, clip/validate, label quality against the pre-annotation, report.
3. copy: ``tasks.round_version.copy_frames`` of M labelled frames (S3 get + content-addressed put of the
   frame and its YOLO txt), the retention step of a pull, timed on M frames written for the purpose.

The machine's 1-minute load average is recorded before and after: on a shared 2-core box the
timings scale with it, so each phase also records the CPU seconds of this process and of Label
Studio's process group (a load-independent measure of the work). The server's memory is the RSS of Label Studio's process group before and after. Writes
``benchmarks/results/labelstudio_io.json``. Uses a throwaway project (deleted at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import service_cpu_s

RESULTS = Path(__file__).resolve().parent / "results"
W, H = 640, 480


def _frames(n: int, bucket: str, prefix: str, seed: int = 0) -> list[Any]:
    from detloop.contracts import FrameRef, SelectedFrame
    from detloop.detections import Detections

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        cam, day = f"bench{i % 8}", f"2030-01-{1 + i % 28:02d}"
        key = f"{prefix}/camera={cam}/date={day}/{i % 24:02d}0000-{i:06d}.jpg"
        x = rng.uniform(0, W - 100, 3)
        y = rng.uniform(0, H - 100, 3)
        d = Detections(xyxy=np.c_[x, y, x + rng.uniform(10, 90, 3), y + rng.uniform(10, 90, 3)],
                       confidence=rng.uniform(0.3, 0.95, 3), class_id=rng.integers(0, 5, 3))
        out.append(SelectedFrame(frame=FrameRef(bucket, key, "e", cam, day), width=W, height=H,
                                 arm="control" if i % 10 == 0 else "selected", strategy="entropy",
                                 uncertainty=float(rng.uniform()), rank=i, reason="bench", predictions=d.to_dict()))
    return out


def _labelled_tasks(frames: list[Any], round_id: str, classes: list[str], seed: int = 1) -> list[dict[str, Any]]:
    """Import-format tasks with a pre-annotation and an embedded human annotation (jittered boxes)."""
    from detloop.detections import Detections
    from tasks.ls_tasks import build_task

    rng = np.random.default_rng(seed)
    tasks = []
    for sf in frames:
        t = build_task(sf, round_id, "bench", classes, 0.25)
        d = Detections.from_dict(sf.predictions)
        human = Detections(xyxy=d.xyxy + rng.normal(0, 3, d.xyxy.shape), confidence=np.ones(len(d)),
                           class_id=d.class_id)
        t["annotations"] = [{"result": human.to_label_studio(W, H, classes, with_score=False), "was_cancelled": False}]
        tasks.append(t)
    return tasks


class _Phase:
    """Wall time, this process's CPU time and the server's CPU time of one phase."""

    def __init__(self, settings: Any, res: dict[str, Any], name: str) -> None:
        self.settings, self.res, self.name = settings, res, name

    def __enter__(self) -> _Phase:
        self.t, self.c, self.sv = time.perf_counter(), time.process_time(), service_cpu_s(self.settings, "label-studio")
        return self

    def __exit__(self, *exc: object) -> None:
        self.res[f"{self.name}_s"] = round(time.perf_counter() - self.t, 2)
        self.res[f"{self.name}_client_cpu_s"] = round(time.process_time() - self.c, 2)
        sv = service_cpu_s(self.settings, "label-studio")
        if sv is not None and self.sv is not None:
            self.res[f"{self.name}_server_cpu_s"] = round(sv - self.sv, 2)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=os.environ.get("DETLOOP_CONFIG", "configs/test.yaml"))
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--copy-frames", type=int, default=1000)
    ap.add_argument("--out", default=str(RESULTS / "labelstudio_io.json"))
    args = ap.parse_args(argv)

    from detloop.clients.labelstudio import LabelStudioClient
    from detloop.clients.s3 import S3Store
    from detloop.offline import apply_offline_env
    from detloop.settings import load_settings
    from infra.stack import service_rss_mb
    from tasks import annotation, rounds
    from tasks.ls_tasks import batched
    from tasks.round_version import copy_frames

    s = load_settings(args.config)
    apply_offline_env(s)
    sfx = uuid.uuid4().hex[:8]
    s.label_studio.project_title = f"detloop-bench-{sfx}"
    ls, store = LabelStudioClient(s), S3Store(s)
    rss0 = service_rss_mb(s).get("label-studio")
    res: dict[str, Any] = {
        "tasks": args.tasks, "import_batch_size": s.label_studio.import_batch_size, "boxes_per_task": 3,
        "cpu_count": os.cpu_count(), "python": platform.python_version(), "label_studio_rss_mb_before": rss0,
        "loadavg_1min_before": round(os.getloadavg()[0], 2),
    }
    frames = _frames(args.tasks, s.s3.production_bucket, f"bench-{sfx}")
    try:
        # 1. push
        with _Phase(s, res, "push"):
            rep = annotation.push_round(s, frames, f"bench-push-{sfx}", "bench", "2030-01-01", ls=ls, store=store)
        res["push_imported"] = rep.imported
        with _Phase(s, res, "repush_noop"):
            again = annotation.push_round(s, frames, f"bench-push-{sfx}", "bench", "2030-01-01", ls=ls, store=store)
        res["repush_imported"] = again.imported
        res["label_studio_rss_mb_after_push"] = service_rss_mb(s).get("label-studio")

        # 2. pull
        rid = f"bench-pull-{sfx}"
        tasks = _labelled_tasks(_frames(args.tasks, s.s3.production_bucket, f"bench-{sfx}-l", seed=5), rid, s.classes)
        with _Phase(s, res, "setup_labelled_import"):
            task_ids: dict[str, int] = {}
            for batch in batched(tasks, s.label_studio.import_batch_size):
                ids = ls.import_tasks(rep.project_id, batch)
                task_ids.update({t["data"]["s3_key"]: i for t, i in zip(batch, ids, strict=True)})
            rounds.save_task_ids(store, s, rid, task_ids)  # what push_round records
        with _Phase(s, res, "pull_convert"):
            pulled = annotation.pull_round(s, rid, ls=ls, store=store, copy=False)
        res["pull_frames"] = len(pulled.frames)
        res["pull_quality"] = {k: pulled.report["quality"][k] for k in ("predicted", "accepted", "moved", "deleted",
                                                                        "added")}
        res["label_studio_rss_mb_after_pull"] = service_rss_mb(s).get("label-studio")

        # 3. copy (retention) of M frames
        m = min(args.copy_frames, len(pulled.frames))
        if m:
            body = np.random.default_rng(0).integers(0, 255, 30_000, dtype=np.uint8).tobytes()
            sub = pulled.frames[:m]
            for i, f in enumerate(sub):
                store.put_bytes(f.bucket, f.key, body[:-8] + i.to_bytes(8, "big"))
            with _Phase(s, res, "copy"):
                copy_frames(store, s, sub, rid)
            res["copy_frames"] = m
            res["copy_frame_bytes"] = len(body)
            for f in sub:
                store.delete(f.bucket, f.key)
    finally:
        p = ls.find_project(s.label_studio.project_title)
        if p is not None:
            ls.delete_project(p.id)
        for r in (f"bench-push-{sfx}", f"bench-pull-{sfx}"):
            for o in list(store.list(s.s3.data_bucket, f"rounds/{r}/")):
                store.delete(s.s3.data_bucket, o.key)
    res["loadavg_1min_after"] = round(os.getloadavg()[0], 2)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
