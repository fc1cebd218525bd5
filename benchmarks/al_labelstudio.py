"""Label Studio as the labelling channel of the active-learning benchmark (``--via-label-studio``).

By default :mod:`benchmarks.al` labels a round's paid frames (the strategy's new frames and the
``default`` arm's control frames) by calling the simulated annotator (:func:`benchmarks.al.annotate`)
directly. With ``--via-label-studio`` the same labels travel through the real Label Studio server of
the configured stack and come back through the loop's own reader, so the benchmark also exercises
what the product does with a round:

1. one project per benchmark run, titled ``detloop-bench-<run key>`` (found by title: a resumed or
   repeated run reuses it), label config generated from the class list
   (:meth:`detloop.clients.labelstudio.LabelStudioClient.ensure_project`), with the data bucket
   attached as a never-synced S3 import storage (the way ``tasks.annotation.push_round`` does it);
2. each paid frame's image is uploaded once to ``s3://<data bucket>/bench/al/<project title>/frames/``
   and becomes one task built by :func:`tasks.ls_tasks.build_task` (``data.image`` = its ``s3://``
   URI, ``data.round_id`` = ``bench-<arm>-s<seed>-r<round>``, ``data.arm`` = selected / control);
   tasks already in the round are listed first and skipped (the loop's dedupe on
   ``data.round_id`` + ``data.s3_key``), and imports go through the loop's crash-safe batch import;
3. the simulated annotator submits, through the API, an annotation whose boxes are exactly
   ``annotate(frame, noise, seed, num_classes)``, only on tasks that have none yet;
4. the round's tasks are read back through the export API and converted by
   :func:`tasks.ls_tasks.convert_round_tasks` (annotation policy, unknown-label check, clipping,
   boxes under ``label_studio.min_box_pixels`` dropped); those ``Detections`` are what the arm trains on.

Not used on purpose: ``push_round`` / ``pull_round`` as a whole. They also write a round record and
task-id and report files under ``rounds/`` in the data bucket, and the product's round watcher would
then treat benchmark rounds as open labelling rounds.
"""

from __future__ import annotations

import mimetypes
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.al_data import AnnotatorNoise, BenchFrame, annotate, labelled_name
from detloop.detections import Detections
from detloop.errors import DataError
from detloop.settings import Settings

S3_PREFIX = "bench/al"
STRATEGY = "benchmark"
# the task fields needed to dedupe (data.s3_key) and to see whether a task is annotated (counters)
LIST_FIELDS = "id,data,total_annotations,cancelled_annotations"


# --------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------
def project_title(run_key: str) -> str:
    """Label Studio project of one benchmark run."""
    return f"detloop-bench-{run_key}"


def bench_round_id(arm: str, seed: int, round_index: int) -> str:
    """``data.round_id`` of an (arm, seed, round): the dedupe scope of its tasks inside the project."""
    return f"bench-{arm}-s{seed}-r{round_index}"


def frame_key(title: str, frame: BenchFrame) -> str:
    """S3 key of a pool frame's image (shared by every arm, seed and round of the project)."""
    return f"{S3_PREFIX}/{title}/frames/{labelled_name(frame)}"


def bench_task(frame: BenchFrame, bucket: str, key: str, round_id: str, arm: str, rank: int,
               class_names: Sequence[str]) -> dict[str, Any]:
    """Import-format task of one paid frame, built by the loop's :func:`tasks.ls_tasks.build_task`.

    Args:
        arm: ``selected`` (trained on) or ``control`` (paid, never trained on).
        rank: position of the frame in the round (kept in ``data.rank``).

    Returns:
        The task without a pre-annotation (the benchmark's annotator ignores it) and with
        ``data.bench_frame`` = the frame's name.
    """
    from detloop.contracts import FrameRef, SelectedFrame
    from tasks.ls_tasks import build_task

    sf = SelectedFrame(frame=FrameRef(bucket, key, "", frame.camera, ""), width=frame.width, height=frame.height,
                       arm=arm, strategy=STRATEGY, uncertainty=0.0, rank=rank, reason="benchmark")  # type: ignore[arg-type]
    task = build_task(sf, round_id, None, class_names, 1.0)
    task["predictions"] = []
    # the benchmark's simulated annotator may see the arm (product tasks are blind): the reader takes it from here
    task["data"].update(bench_frame=frame.name, arm=arm, rank=rank)
    return task


def annotation_result(dets: Detections, frame: BenchFrame, class_names: Sequence[str]) -> list[dict[str, Any]]:
    """What the simulated annotator submits for ``frame``: rectangles in percent, as the editor sends them."""
    from detloop.clients.labelstudio import FROM_NAME, TO_NAME

    return dets.to_label_studio(frame.width, frame.height, class_names, FROM_NAME, TO_NAME, with_score=False)


def labels_by_key(pulled: Any, keys: Sequence[str]) -> list[Detections]:
    """The pulled labels of ``keys`` in that order (``pulled``: a :class:`tasks.ls_tasks.PulledRound`).

    Raises:
        DataError: a frame came back without a submitted annotation (skipped, pending or missing).
    """
    by_key = {f.key: f.detections for f in pulled.frames}
    missing = [k for k in keys if k not in by_key]
    if missing:
        r = pulled.report
        raise DataError(
            f"round {pulled.round_id}: {len(missing)} of {len(keys)} frame(s) came back from Label Studio without a "
            f"submitted annotation (e.g. {missing[:3]}; round: {r.get('labelled')} labelled, {r.get('skipped')} "
            f"skipped, {r.get('pending')} pending)")
    return [by_key[k] for k in keys]


def compare_labels(direct: Sequence[Detections], pulled: Sequence[Detections]) -> dict[str, Any]:
    """How far the labels that came back are from the direct annotator's (a check of the round trip).

    Boxes are compared in their order (Label Studio keeps the result order).

    Returns:
        ``frames_differing`` (box count or classes differ), ``max_abs_px`` (largest coordinate
        difference over frames with the same boxes; 0.0 when there is none) and ``boxes_missing``
        (direct boxes minus pulled boxes, e.g. dropped as degenerate).
    """
    differ, worst, missing = 0, 0.0, 0
    for a, b in zip(direct, pulled, strict=True):
        missing += len(a) - len(b)
        if len(a) != len(b) or not np.array_equal(a.class_id, b.class_id):
            differ += 1
            continue
        if len(a):
            worst = max(worst, float(np.abs(a.xyxy.astype(np.float64) - b.xyxy.astype(np.float64)).max()))
    return {"frames_differing": differ, "max_abs_px": round(worst, 6), "boxes_missing": int(missing)}


# --------------------------------------------------------------------------------------------
# The oracle
# --------------------------------------------------------------------------------------------
def check_services(settings: Settings, ls: Any | None = None, store: Any | None = None) -> None:
    """Fail fast, in one line naming the URL, when Label Studio or S3 is down or refuses the credentials.

    Label Studio is asked once (``whoami``, no retries) unless a client is given; S3 through the S3
    client (``ensure_bucket`` of the data bucket).

    Raises:
        ServiceError: from the clients' own error handling.
    """
    from detloop.clients.labelstudio import LabelStudioClient
    from detloop.clients.s3 import S3Store

    (ls or LabelStudioClient(settings)).whoami()
    (store or S3Store(settings)).ensure_bucket(settings.s3.data_bucket)


class LabelStudioOracle:
    """Labels benchmark frames through a real Label Studio server (one project per benchmark run).

    Args:
        settings: detloop settings of the stack (URL, token and S3 credentials come from them, i.e.
            from the environment or the stack's secrets file; none is ever logged).
        title: the project's title (:func:`project_title` of the run key).
        class_names: the benchmark's classes, in class-id order (the label config's labels).
        noise: the simulated annotator's noise.
        ls, store: clients (tests); built from ``settings`` otherwise.
    """

    def __init__(self, settings: Settings, title: str, class_names: Sequence[str], noise: AnnotatorNoise,
                 ls: Any | None = None, store: Any | None = None, log: Callable[[str], None] = print):
        from detloop.clients.labelstudio import LabelStudioClient
        from detloop.clients.s3 import S3Store

        self.settings = settings.model_copy(deep=True)
        self.settings.label_studio.project_title = title
        self.title = title
        self.classes = list(class_names)
        self.noise = noise
        self._own_ls = ls is None
        self.ls = ls or LabelStudioClient(self.settings)
        self.store = store or S3Store(self.settings)
        self.bucket = self.settings.s3.data_bucket
        self.log = log
        self._project: Any = None
        self._uploaded: set[str] = set()
        self.last_report: dict[str, Any] = {}

    def check(self) -> None:
        """:func:`check_services` with this oracle's clients (an own Label Studio client is asked once)."""
        check_services(self.settings, None if self._own_ls else self.ls, self.store)

    @property
    def project(self) -> Any:
        """The run's project (found by title or created) with the data bucket attached as image storage."""
        if self._project is None:
            ls_cfg = self.settings.label_studio
            p = self.ls.ensure_project(self.title, self.classes)
            self.ls.ensure_s3_storage(p.id, self.bucket, ls_cfg.presign, ls_cfg.presign_ttl_minutes)
            self._project = p
            self.log(f"Label Studio project {self.title!r} (id {p.id}) at {self.ls.url}")
        return self._project

    def _upload(self, frames: Sequence[BenchFrame], keys: Sequence[str]) -> int:
        n = 0
        for f, k in zip(frames, keys, strict=True):
            if k in self._uploaded:
                continue
            if not self.store.exists(self.bucket, k):
                ctype = mimetypes.guess_type(f.image)[0] or "application/octet-stream"
                self.store.put_bytes(self.bucket, k, Path(f.image).read_bytes(), content_type=ctype)
                n += 1
            self._uploaded.add(k)
        return n

    def label(self, frames: Sequence[BenchFrame], seed: int, round_index: int, arm: str,
              control: Collection[str] = ()) -> list[Detections]:
        """Label ``frames`` through Label Studio; returns the labels the loop's reader made of them.

        Idempotent per (arm, seed, round): tasks already in the round are reused, and tasks that
        already have an annotation are not annotated again, so a resumed round creates nothing new.

        Args:
            frames: the round's paid frames (pool frames, unique names).
            seed: the annotator-noise seed.
            arm: the arm's cache name (``default-<hash>`` for the configured selection).
            control: names of the frames that are control frames (paid, not trained on).

        Returns:
            One ``Detections`` per frame, in order (frame pixels, confidence 1).

        Raises:
            ServiceError: Label Studio or S3 failed (one line naming the URL).
            DataError: a frame came back without a submitted annotation, or with unknown labels.
        """
        from detloop.clients.labelstudio import data_filter
        from tasks.annotation import round_tasks
        from tasks.ls_tasks import batched, convert_round_tasks, task_state

        t0 = time.perf_counter()
        rid = bench_round_id(arm, seed, round_index)
        keys = [frame_key(self.title, f) for f in frames]
        dupes = sorted(k for k, n in Counter(keys).items() if n > 1)
        if dupes:
            raise DataError(f"round {rid}: {len(dupes)} frame(s) paid twice, e.g. {dupes[:3]}")
        pid = self.project.id
        uploaded = self._upload(frames, keys)
        t_up = time.perf_counter()
        listed = {str((t.get("data") or {}).get("s3_key")): t
                  for t in self.ls.iter_tasks(pid, [data_filter("round_id", rid)], fields="task_only",
                                              include=LIST_FIELDS)}
        ids = {k: int(t["id"]) for k, t in listed.items()}
        todo = [bench_task(f, self.bucket, k, rid, "control" if f.name in control else "selected", i, self.classes)
                for i, (f, k) in enumerate(zip(frames, keys, strict=True)) if k not in listed]
        for batch in batched(todo, self.settings.label_studio.import_batch_size):
            new_ids = self.ls.import_tasks(pid, batch)
            ids.update({t["data"]["s3_key"]: i for t, i in zip(batch, new_ids, strict=True)})
        t_imp = time.perf_counter()
        nc = len(self.classes)
        direct = [annotate(f, self.noise, seed, nc) for f in frames]
        submitted = 0
        for f, k, dets in zip(frames, keys, direct, strict=True):
            if k in listed and task_state(listed[k]) != "pending":
                continue  # annotated (or skipped by a person) before: never a second annotation
            self.ls.create_annotation(ids[k], annotation_result(dets, f, self.classes))
            submitted += 1
        t_ann = time.perf_counter()
        ls_cfg = self.settings.label_studio
        pulled = convert_round_tasks(round_tasks(self.ls, pid, rid, "all"), rid, self.classes,
                                     ls_cfg.annotation_policy, ls_cfg.min_box_pixels)
        labels = labels_by_key(pulled, keys)
        t_end = time.perf_counter()
        self.last_report = {
            "project": self.title, "project_id": pid, "round_id": rid, "frames": len(frames),
            "images_uploaded": uploaded, "tasks_created": len(todo), "tasks_reused": len(frames) - len(todo),
            "annotations_submitted": submitted, "tasks_in_round": pulled.report["tasks"],
            "boxes_clipped": pulled.report["boxes_clipped"], "boxes_dropped": pulled.report["boxes_dropped"],
            "vs_direct": compare_labels(direct, labels),
            "seconds": {"upload": round(t_up - t0, 3), "import": round(t_imp - t_up, 3),
                        "annotate": round(t_ann - t_imp, 3), "pull": round(t_end - t_ann, 3),
                        "total": round(t_end - t0, 3)},
        }
        vs = self.last_report["vs_direct"]
        if vs["frames_differing"] or vs["max_abs_px"] > 1.0:
            self.log(f"round {rid}: labels from Label Studio differ from the direct annotator's: {vs} "
                     f"(boxes dropped by validation: {pulled.report['boxes_dropped']})")
        return labels
