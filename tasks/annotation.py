"""Annotation round trips with Label Studio: push a round out, measure progress, pull labels back.

Out (:func:`push_round`): each :class:`~detloop.contracts.SelectedFrame` becomes one task whose
``data.image`` is the frame's ``s3://`` URI (Label Studio serves it through an attached, never
synced, S3 storage), with a pre-annotation (``model_version`` = the registry version that scored the
frame, ``score`` = the frame's uncertainty) and data fields ``s3_key, bucket, round_id, arm, strategy,
uncertainty, width, height, camera, date``. Pushing is idempotent: the round's tasks already in the
project are listed first (server-side filter on ``data.round_id``) and their keys skipped, so a second
push, or a re-run after a crash half-way, creates no duplicate.

Back (:func:`pull_round`): only the round's tasks are read. Per task:

- no annotation: ``pending``; only cancelled (skipped) annotations: ``skipped``; both are excluded;
- several annotations: policy ``latest`` (the most recently updated submitted one) or ``consensus``
  (boxes that a strict majority of the annotations agree on: same class, IoU >= 0.5, coordinates
  averaged; with one or two annotations that is the intersection of what they drew);
- label names outside the configured classes: :class:`UnknownLabelsInRound` listing every name and
  the task ids (nothing is written);
- boxes are clipped to the frame; boxes narrower or lower than ``label_studio.min_box_pixels`` after
  clipping are dropped; both are counted in the report and listed per task;
- a submitted annotation with no box is a valid negative frame.

Label quality is measured per frame against the pre-annotation the annotator saw (the task's
prediction), by greedy one-to-one matching in decreasing IoU: same class and IoU >= 0.5 =
``accepted``; any remaining pair with IoU >= 0.1 (or a class change) = ``moved``; predicted boxes left
= ``deleted``; human boxes left = ``added`` (the model's misses). A frame is *hard* when anything was
moved, deleted or added: the trainer oversamples those.

:func:`copy_frames` copies each labelled frame into content-addressed storage
(``blobs/sha256/<hh>/<sha256>.<ext>`` in the data bucket) so a dataset version never points at a
production frame that the bucket's lifecycle rule may expire.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

import numpy as np

from detloop.contracts import SelectedFrame
from detloop.detections import Detections, UnknownLabelsError
from detloop.errors import DataError
from detloop.ops import box_iou
from detloop.settings import Settings

TaskState = Literal["labelled", "skipped", "pending"]
IOU_ACCEPT = 0.5
IOU_MOVED = 0.1


class UnknownLabelsInRound(DataError):
    """Annotations use label names outside the configured classes."""

    def __init__(self, round_id: str, unknown: dict[str, list[int]], known: Sequence[str]):
        self.unknown = unknown
        parts = ", ".join(f"{name!r} (tasks {ids[:10]}{'...' if len(ids) > 10 else ''})" for name, ids in
                          sorted(unknown.items()))
        super().__init__(f"round {round_id}: unknown label name(s) {parts}; configured classes are {list(known)}")


# ------------------------------------------------------------------------------------------------
# Out: selected frames -> tasks (pure)
# ------------------------------------------------------------------------------------------------
def build_task(
    sf: SelectedFrame,
    round_id: str,
    model_version: str | None,
    class_names: Sequence[str],
    conf_threshold: float,
) -> dict[str, Any]:
    """One Label Studio task (import format) for a selected frame.

    The pre-annotation keeps predicted boxes with confidence >= ``conf_threshold`` (frame pixels,
    converted to percent); its ``score`` is the frame's uncertainty.
    """
    from detloop.clients.labelstudio import FROM_NAME, IMAGE_FIELD, TO_NAME

    dets = Detections.from_dict(sf.predictions) if sf.predictions else Detections.empty()
    dets = dets[dets.confidence >= conf_threshold]
    task: dict[str, Any] = {
        "data": {
            IMAGE_FIELD: sf.frame.uri,
            "s3_key": sf.frame.key,
            "bucket": sf.frame.bucket,
            "round_id": round_id,
            "arm": sf.arm,
            "strategy": sf.strategy,
            "uncertainty": float(sf.uncertainty),
            "rank": int(sf.rank),
            "width": int(sf.width),
            "height": int(sf.height),
            "camera": sf.frame.camera,
            "date": sf.frame.date,
            # the pre-annotation again, in frame pixels: label quality is measured against exactly
            # this, and the export API (the fast read path) returns predictions as ids only
            "pre": {k: v for k, v in dets.to_dict().items() if k in ("xyxy", "confidence", "class_id")},
        },
        "predictions": [
            {
                "model_version": str(model_version) if model_version is not None else "none",
                "score": float(sf.uncertainty),
                "result": dets.to_label_studio(sf.width, sf.height, class_names, FROM_NAME, TO_NAME),
            }
        ],
    }
    return task


def batched(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# ------------------------------------------------------------------------------------------------
# Task state, annotation policy, validation, quality (pure)
# ------------------------------------------------------------------------------------------------
def _submitted(task: dict[str, Any]) -> list[dict[str, Any]]:
    return [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]


def task_state(task: dict[str, Any]) -> TaskState:
    """``labelled`` (a submitted annotation), ``skipped`` (only cancelled ones) or ``pending`` (none).

    Works on tasks listed with ``fields="all"`` (annotation list) or ``task_only`` (counters).
    """
    anns = task.get("annotations")
    if anns is not None and (anns or "total_annotations" not in task):
        if any(not a.get("was_cancelled") for a in anns):
            return "labelled"
        return "skipped" if anns else "pending"
    if int(task.get("total_annotations") or 0) > 0:
        return "labelled"
    if int(task.get("cancelled_annotations") or 0) > 0:
        return "skipped"
    return "pending"


def round_progress(tasks: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Counts ``{"total","labelled","skipped","pending"}`` of a round's tasks."""
    c = Counter(task_state(t) for t in tasks)
    return {"total": sum(c.values()), "labelled": c["labelled"], "skipped": c["skipped"], "pending": c["pending"]}


def _ann_time(a: dict[str, Any]) -> tuple[str, int]:
    return (str(a.get("updated_at") or a.get("created_at") or ""), int(a.get("id") or 0))


def latest_annotation(task: dict[str, Any]) -> dict[str, Any] | None:
    """The most recently updated submitted annotation, or None."""
    anns = _submitted(task)
    return max(anns, key=_ann_time) if anns else None


def consensus(parts: Sequence[Detections], iou_threshold: float = IOU_ACCEPT) -> Detections:
    """Boxes a strict majority of annotators agree on (same class, IoU >= threshold), averaged.

    Args:
        parts: one ``Detections`` per annotation of the same frame.

    Returns:
        Detections with confidence = share of annotators supporting each box.
    """
    k = len(parts)
    if k == 0:
        return Detections.empty()
    if k == 1:
        return parts[0]
    clusters: list[dict[str, Any]] = []  # {"cls", "boxes": [(annot idx, xyxy)]}
    for ai, d in enumerate(parts):
        for j in range(len(d)):
            box, c = d.xyxy[j], int(d.class_id[j])
            best, best_iou = None, iou_threshold
            for cl in clusters:
                if cl["cls"] != c or any(a == ai for a, _ in cl["boxes"]):
                    continue
                ref = np.mean([b for _, b in cl["boxes"]], axis=0)
                iou = float(box_iou(ref[None], box[None])[0, 0])
                if iou >= best_iou:
                    best, best_iou = cl, iou
            if best is None:
                clusters.append({"cls": c, "boxes": [(ai, box)]})
            else:
                best["boxes"].append((ai, box))
    kept = [cl for cl in clusters if len(cl["boxes"]) * 2 > k]
    if not kept:
        return Detections.empty()
    return Detections(
        xyxy=np.array([np.mean([b for _, b in cl["boxes"]], axis=0) for cl in kept]),
        confidence=np.array([len(cl["boxes"]) / k for cl in kept]),
        class_id=np.array([cl["cls"] for cl in kept]),
    )


def clip_boxes(dets: Detections, width: int, height: int, min_px: float) -> tuple[Detections, int, int]:
    """Clip boxes to the frame and drop degenerate ones.

    Returns:
        (kept detections, number of boxes clipped, number dropped because narrower or lower than
        ``min_px`` pixels after clipping, zero-area and fully-outside boxes included).
    """
    if not len(dets):
        return dets, 0, 0
    xy = dets.xyxy.astype(np.float64)
    lo = np.minimum(xy[:, :2], xy[:, 2:])  # a flipped box is still the same rectangle
    hi = np.maximum(xy[:, :2], xy[:, 2:])
    xy = np.concatenate([lo, hi], axis=1)
    clipped = xy.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, width)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, height)
    w = clipped[:, 2] - clipped[:, 0]
    h = clipped[:, 3] - clipped[:, 1]
    keep = (w >= max(min_px, 1e-9)) & (h >= max(min_px, 1e-9))
    changed = np.abs(clipped - xy).max(axis=1) > 1e-3
    out = Detections(xyxy=clipped[keep], confidence=dets.confidence[keep], class_id=dets.class_id[keep])
    return out, int((changed & keep).sum()), int((~keep).sum())


@dataclass
class Quality:
    """Label quality of one frame against its pre-annotation (box counts)."""

    predicted: int = 0
    accepted: int = 0
    moved: int = 0
    deleted: int = 0
    added: int = 0

    @property
    def hard(self) -> bool:
        return bool(self.moved or self.deleted or self.added)

    def __add__(self, o: Quality) -> Quality:
        return Quality(*(a + b for a, b in zip(astuple_q(self), astuple_q(o), strict=True)))


def astuple_q(q: Quality) -> tuple[int, int, int, int, int]:
    return (q.predicted, q.accepted, q.moved, q.deleted, q.added)


def label_quality(pred: Detections, human: Detections, iou_accept: float = IOU_ACCEPT,
                  iou_moved: float = IOU_MOVED) -> Quality:
    """Match predicted to human boxes one-to-one, greedily by decreasing IoU.

    Args:
        pred: ``(P,)`` boxes of the pre-annotation, frame pixels.
        human: ``(H,)`` boxes the annotator submitted, frame pixels.

    Returns:
        accepted (IoU >= ``iou_accept``, same class), moved (IoU >= ``iou_moved`` otherwise, class
        changes included), deleted (predicted, unmatched), added (human, unmatched).
    """
    q = Quality(predicted=len(pred))
    if not len(pred) or not len(human):
        q.deleted, q.added = len(pred), len(human)
        return q
    iou = box_iou(pred.xyxy, human.xyxy)
    same = pred.class_id[:, None] == human.class_id[None, :]
    # accepted pairs first (same class, high IoU), then anything overlapping enough
    used_p: set[int] = set()
    used_h: set[int] = set()
    for stage in ("accept", "move"):
        cand = np.argwhere((iou >= iou_accept) & same) if stage == "accept" else np.argwhere(iou >= iou_moved)
        order = np.argsort(-iou[cand[:, 0], cand[:, 1]], kind="stable") if len(cand) else []
        for idx in order:
            i, j = (int(v) for v in cand[idx])
            if i in used_p or j in used_h:
                continue
            used_p.add(i)
            used_h.add(j)
            if stage == "accept":
                q.accepted += 1
            else:
                q.moved += 1
    q.deleted = len(pred) - len(used_p)
    q.added = len(human) - len(used_h)
    return q


# ------------------------------------------------------------------------------------------------
# Back: tasks -> validated labels (pure over task dicts)
# ------------------------------------------------------------------------------------------------
@dataclass
class LabelledFrame:
    """One labelled frame of a round, ready to become a dataset entry."""

    task_id: int
    bucket: str
    key: str
    width: int
    height: int
    arm: str
    camera: str
    date: str
    detections: Detections
    quality: Quality
    annotations: int = 1
    sha256: str | None = None
    blob_key: str | None = None

    @property
    def hard(self) -> bool:
        return self.quality.hard

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("detections", "quality")}
        d["detections"] = self.detections.to_dict()
        d["quality"] = asdict(self.quality)
        d["hard"] = self.hard
        return d


@dataclass
class PulledRound:
    round_id: str
    frames: list[LabelledFrame]
    report: dict[str, Any] = field(default_factory=dict)
    entries: list[Any] = field(default_factory=list)  # DatasetEntry per frame once copied


def convert_round_tasks(
    tasks: Sequence[dict[str, Any]],
    round_id: str,
    class_names: Sequence[str],
    policy: str = "latest",
    min_box_pixels: float = 1.0,
) -> PulledRound:
    """Validate and convert the round's tasks (``fields="all"`` dicts) into labelled frames + report.

    Raises:
        UnknownLabelsInRound: when any submitted box names a class outside ``class_names``.
    """
    from detloop.clients.labelstudio import FROM_NAME

    frames: list[LabelledFrame] = []
    unknown: dict[str, list[int]] = {}
    counts = Counter()
    issues: list[dict[str, Any]] = []
    quality = Quality()
    negatives = 0
    multi = 0
    for t in tasks:
        data = t.get("data") or {}
        if data.get("round_id") != round_id:
            continue  # defensive: the server filter already did this
        state = task_state(t)
        counts[state] += 1
        if state != "labelled":
            continue
        tid = int(t["id"])
        w, h = int(data.get("width") or 0), int(data.get("height") or 0)
        anns = _submitted(t)
        chosen = anns if policy == "consensus" else [latest_annotation(t)]
        multi += len(anns) > 1
        parts = []
        for a in chosen:
            res = [r for r in (a or {}).get("result") or [] if r.get("from_name", FROM_NAME) == FROM_NAME]
            if not w or not h:  # size from the results when the task lacks it
                for r in res:
                    w, h = int(r.get("original_width") or w), int(r.get("original_height") or h)
            try:
                parts.append(Detections.from_label_studio(res, class_names, w or None, h or None))
            except UnknownLabelsError as err:
                for name in err.unknown:
                    unknown.setdefault(name, []).append(tid)
        if unknown:
            continue
        if not w or not h:
            issues.append({"task_id": tid, "key": data.get("s3_key"), "issue": "no image size; task excluded"})
            counts["excluded_no_size"] += 1
            continue
        dets = consensus(parts) if policy == "consensus" else parts[0]
        dets = Detections(xyxy=dets.xyxy, confidence=np.ones(len(dets), np.float32), class_id=dets.class_id)
        dets, n_clip, n_drop = clip_boxes(dets, w, h, min_box_pixels)
        if n_clip or n_drop:
            issues.append({"task_id": tid, "key": data.get("s3_key"), "clipped": n_clip, "dropped": n_drop})
        counts["boxes_clipped"] += n_clip
        counts["boxes_dropped"] += n_drop
        pred = _preannotation(t, class_names, w, h)
        q = label_quality(pred, dets)
        quality = quality + q
        negatives += len(dets) == 0
        frames.append(LabelledFrame(
            task_id=tid, bucket=str(data.get("bucket") or _bucket_of(data.get("image", ""))),
            key=str(data.get("s3_key")), width=w, height=h, arm=str(data.get("arm", "selected")),
            camera=str(data.get("camera", "")), date=str(data.get("date", "")), detections=dets, quality=q,
            annotations=len(anns),
        ))
    if unknown:
        raise UnknownLabelsInRound(round_id, unknown, class_names)
    frames.sort(key=lambda f: f.key)
    report = {
        "round_id": round_id,
        "policy": policy,
        "tasks": sum(counts[s] for s in ("labelled", "skipped", "pending")),
        "labelled": counts["labelled"],
        "skipped": counts["skipped"],
        "pending": counts["pending"],
        "excluded_no_size": counts["excluded_no_size"],
        "frames": len(frames),
        "negative_frames": negatives,
        "multi_annotated": multi,
        "hard_frames": sum(f.hard for f in frames),
        "boxes": int(sum(len(f.detections) for f in frames)),
        "boxes_clipped": counts["boxes_clipped"],
        "boxes_dropped": counts["boxes_dropped"],
        "quality": quality_report(quality),
        "by_arm": dict(Counter(f.arm for f in frames)),
        "issues": issues,
    }
    return PulledRound(round_id, frames, report)


def _preannotation(task: dict[str, Any], class_names: Sequence[str], w: int, h: int) -> Detections:
    """What the annotator was shown: ``data.pre`` (frame pixels), else the task's last prediction."""
    pre = (task.get("data") or {}).get("pre")
    if isinstance(pre, dict):
        return Detections.from_dict(pre)
    preds = [p for p in task.get("predictions") or [] if isinstance(p, dict)]
    if not preds:
        return Detections.empty()
    try:
        return Detections.from_label_studio(preds[-1].get("result", []), class_names, w, h)
    except UnknownLabelsError:
        return Detections.empty()


def quality_report(q: Quality) -> dict[str, Any]:
    """Counts plus shares: accepted/moved/deleted of predicted boxes, added per human box."""
    human = q.accepted + q.moved + q.added
    return {
        **asdict(q),
        "accepted_share": q.accepted / q.predicted if q.predicted else None,
        "moved_share": q.moved / q.predicted if q.predicted else None,
        "deleted_share": q.deleted / q.predicted if q.predicted else None,
        "added_share": q.added / human if human else None,
    }


def _bucket_of(uri: str) -> str:
    return uri[5:].split("/", 1)[0] if uri.startswith("s3://") else ""


# ------------------------------------------------------------------------------------------------
# Content-addressed copies and the new dataset version
# ------------------------------------------------------------------------------------------------
def split_for(frame: LabelledFrame, val_share: float, salt: str = "") -> str:
    """``control`` for the control arm (never trained on), else a stable grouped train/val split."""
    from detloop.contracts import frame_hour, parse_frame_key
    from detloop.datasets import assign_split

    if frame.arm == "control":
        return "control"
    parsed = parse_frame_key(frame.key)
    camera = frame.camera or (parsed[0] if parsed else "")
    day = frame.date or (parsed[1].isoformat() if parsed else "")
    hour = frame_hour(parsed[2]) if parsed else 0
    return assign_split(camera, day, hour, val_share, salt)


def copy_frames(
    store: Any, settings: Settings, frames: Sequence[LabelledFrame], round_id: str, threads: int = 8
) -> list[Any]:
    """Copy each frame (and its YOLO txt label) into content-addressed storage in the data bucket.

    Fills ``frame.sha256`` / ``frame.blob_key`` and returns one ``detloop.datasets.DatasetEntry``
    per frame (split from :func:`split_for`, ``source = round:<round_id>``). An object already
    present is not uploaded again, so a re-run costs only the reads.
    """
    from concurrent.futures import ThreadPoolExecutor

    from detloop.contracts import frame_hour, parse_frame_key
    from detloop.datasets import blob_key, store_labelled_frame

    def one(f: LabelledFrame) -> Any:
        body = store.get_bytes(f.bucket, f.key)
        ext = f.key.rsplit(".", 1)[-1].lower() if "." in f.key else "jpg"
        parsed = parse_frame_key(f.key)
        entry = store_labelled_frame(
            store, settings.s3.data_bucket, body, f.detections, width=f.width, height=f.height,
            classes=settings.classes, camera=f.camera or (parsed[0] if parsed else ""),
            date=f.date or (parsed[1].isoformat() if parsed else ""), hour=frame_hour(parsed[2]) if parsed else 0,
            split=split_for(f, settings.rounds.val_share), source=f"round:{round_id}",
            arm=f.arm, hard=f.hard, key=f.key, ext=ext,
        )
        f.sha256, f.blob_key = entry.frame_sha, blob_key(entry.frame_sha, ext)
        return entry

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        return list(pool.map(one, frames))


def build_round_version(
    store: Any,
    settings: Settings,
    round_id: str,
    entries: Sequence[Any],
    parent_id: str | None = "latest",
    golden_id: str | None = "latest",
) -> tuple[str, Any, dict[str, Any]]:
    """Write the dataset version ``parent + this round's entries`` (kind ``train``).

    Args:
        entries: ``DatasetEntry`` of the round (from :func:`copy_frames`).
        parent_id: previous train version; ``"latest"``: the latest ``train`` version, else the latest
            ``seed`` version, else none; None: no parent.
        golden_id: golden version whose frames must never be trained on; ``"latest"``: the latest
            golden version; None: no golden check.

    Returns:
        (version id, manifest, report with counts and the frames excluded as golden).
    """
    from detloop import datasets as ds
    from tasks import rounds

    if parent_id == "latest":
        parent_id = ds.latest_version(store, settings, "train") or ds.latest_version(store, settings, "seed")
    parent = ds.load_manifest(store, settings, parent_id) if parent_id else None
    if golden_id == "latest":
        golden_id = ds.latest_version(store, settings, "golden")
    golden = {e.frame_sha for e in ds.load_manifest(store, settings, golden_id).entries} if golden_id else set()
    kept = [e for e in entries if e.frame_sha not in golden]
    manifest = ds.build_version("train", settings.classes, kept, parent=parent, parent_id=parent_id, rounds=[round_id])
    vid = ds.save_manifest(store, settings, manifest, note=f"labels of round {round_id}")
    if rounds.load_round(store, settings, round_id) is not None:
        rounds.mark_round(store, settings, round_id, dataset_version=vid)
    report = {
        "version": vid,
        "parent": parent_id,
        "round_id": round_id,
        "new_entries": len(kept),
        "excluded_golden": len(entries) - len(kept),
        "splits": manifest.counts(),
        "frames": len(manifest.entries),
    }
    return vid, manifest, report


# ------------------------------------------------------------------------------------------------
# Service-facing steps
# ------------------------------------------------------------------------------------------------
@dataclass
class PushReport:
    round_id: str
    project_id: int
    requested: int
    already_present: int
    imported: int
    task_ids: list[int]
    batches: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ensure_project(settings: Settings, ls: Any) -> Any:
    """The configured project (created from the class list, or reused and checked)."""
    return ls.ensure_project(settings.label_studio.project_title, settings.classes)


# what each reader needs from the server (``include``): serialising less is several times faster
INCLUDE = {
    "ids": "id",  # pull: which tasks, then the export API for their full content
    "task_only": "id,data",  # push: dedupe on data.s3_key
    "progress": "id,total_annotations,cancelled_annotations",  # watcher: counters only
}


def round_tasks(ls: Any, project_id: int, round_id: str, fields: str = "all") -> list[dict[str, Any]]:
    """All tasks of one round (server-side filter on ``data.round_id``).

    ``fields``: ``all`` (data, annotations with ``was_cancelled``, predictions; read through the
    export API), ``task_only`` (id and data) or ``progress`` (id and annotation counters).
    """
    from detloop.clients.labelstudio import data_filter

    flt = [data_filter("round_id", round_id)]
    if fields == "all":
        ids = [int(t["id"]) for t in ls.iter_tasks(project_id, flt, fields="task_only", include=INCLUDE["ids"])]
        return list(ls.export_tasks(project_id, ids))
    return list(ls.iter_tasks(project_id, flt, fields="task_only", include=INCLUDE[fields]))


def _import_batch(settings: Settings, ls: Any, project_id: int, round_id: str, batch: Sequence[dict[str, Any]],
                  sleep: Callable[[float], None]) -> dict[str, int]:
    """Import one batch; on failure, check what went in before trying the rest again (no duplicates).

    Returns:
        ``{s3_key: task_id}`` of the batch's tasks now in the project.
    """
    from detloop.errors import ServiceError

    todo = list(batch)
    done: dict[str, int] = {}
    delay = settings.label_studio.backoff_seconds
    for attempt in range(settings.label_studio.retries + 1):
        try:
            new_ids = ls.import_tasks(project_id, todo, retry=False)
            done.update({t["data"]["s3_key"]: i for t, i in zip(todo, new_ids, strict=False)})
            return done
        except ServiceError:
            if attempt == settings.label_studio.retries:
                raise
        sleep(delay)
        delay *= 2
        # the failed request may have gone through (a timeout after the commit): look before retrying
        now_present = {str((t.get("data") or {}).get("s3_key")): int(t["id"])
                       for t in round_tasks(ls, project_id, round_id, "task_only")}
        keys = {t["data"]["s3_key"] for t in todo}
        done.update({k: v for k, v in now_present.items() if k in keys})
        todo = [t for t in todo if t["data"]["s3_key"] not in now_present]
        if not todo:
            return done
    return done  # pragma: no cover


def push_round(
    settings: Settings,
    selected: Sequence[SelectedFrame],
    round_id: str,
    model_version: str | None,
    as_of: str,
    ls: Any | None = None,
    store: Any | None = None,
    now: datetime | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> PushReport:
    """Push a round's selected frames as tasks (idempotent) and open its round record.

    Args:
        selected: the frames (selected and control arms) with their predictions.
        round_id: stable id of the round (dedupe key together with each frame's S3 key).
        model_version: registry version whose predictions are the pre-annotations.
        as_of: ISO date of the round; the deadline is ``as_of + rounds.deadline_days``.

    Returns:
        What was imported; the round record is written only after every batch went in.
    """
    from detloop.clients.labelstudio import LabelStudioClient
    from detloop.clients.s3 import S3Store
    from tasks import rounds

    ls = ls or LabelStudioClient(settings)
    store = store or S3Store(settings)
    keys = [sf.frame.key for sf in selected]
    dupes = sorted(k for k, n in Counter(keys).items() if n > 1)
    if dupes:
        raise DataError(f"round {round_id}: {len(dupes)} frame key(s) selected twice, e.g. {dupes[:3]}")
    project = ensure_project(settings, ls)
    for bucket in sorted({sf.frame.bucket for sf in selected}):
        ls.ensure_s3_storage(project.id, bucket, settings.label_studio.presign, settings.label_studio.presign_ttl_minutes)
    listed = round_tasks(ls, project.id, round_id, "task_only")
    task_ids = {str((t.get("data") or {}).get("s3_key")): int(t["id"]) for t in listed}
    present = set(task_ids)
    todo = [sf for sf in selected if sf.frame.key not in present]
    tasks = [build_task(sf, round_id, model_version, settings.classes, settings.label_studio.prediction_conf_threshold)
             for sf in todo]
    ids: list[int] = []
    n_batches = 0
    for batch in batched(tasks, settings.label_studio.import_batch_size):
        new = _import_batch(settings, ls, project.id, round_id, batch, sleep)
        task_ids.update(new)
        ids += list(new.values())
        n_batches += 1
    save_task_ids(store, settings, round_id, task_ids)
    rounds.open_round(
        store, settings, round_id=round_id, as_of=as_of, model_version=model_version,
        n_selected=sum(sf.arm == "selected" for sf in selected), n_control=sum(sf.arm == "control" for sf in selected),
        now=now,
    )
    return PushReport(round_id, project.id, len(selected), len(present & set(keys)), len(ids), ids, n_batches)


def task_ids_key(round_id: str) -> str:
    from tasks.rounds import round_prefix

    return round_prefix(round_id) + "tasks.json"


def save_task_ids(store: Any, settings: Settings, round_id: str, task_ids: dict[str, int]) -> None:
    """``rounds/<round_id>/tasks.json``: production key -> Label Studio task id, and the project's title."""
    store.put_json(settings.s3.data_bucket, task_ids_key(round_id), {
        "round_id": round_id, "project_title": settings.label_studio.project_title,
        "label_studio_url": settings.label_studio.url, "tasks": task_ids})


def round_project_title(store: Any, settings: Settings, round_id: str) -> str | None:
    """Title of the Label Studio project a round was pushed to (None when unknown)."""
    if not store.exists(settings.s3.data_bucket, task_ids_key(round_id)):
        return None
    return store.get_json(settings.s3.data_bucket, task_ids_key(round_id)).get("project_title")


def load_task_ids(store: Any, settings: Settings, round_id: str) -> dict[str, int] | None:
    if not store.exists(settings.s3.data_bucket, task_ids_key(round_id)):
        return None
    return {str(k): int(v) for k, v in store.get_json(settings.s3.data_bucket, task_ids_key(round_id))["tasks"].items()}


def read_round_tasks(settings: Settings, round_id: str, ls: Any, store: Any, project_id: int) -> list[dict[str, Any]]:
    """Full tasks of a round (annotations, data) through the export API.

    The task ids come from ``rounds/<round_id>/tasks.json`` written by the push (saves a filtered
    listing, ~0.6 ms of server CPU per task); when that file is missing, or the last watch counted
    more tasks for the round than it lists, they come from a filtered listing.
    """
    from tasks import rounds

    ids = load_task_ids(store, settings, round_id)
    rec = rounds.load_round(store, settings, round_id)
    if ids is None or (rec is not None and int(rec.counts.get("total", 0)) > len(ids)):
        return round_tasks(ls, project_id, round_id, "all")
    return [t for t in ls.export_tasks(project_id, sorted(ids.values()))
            if (t.get("data") or {}).get("round_id") == round_id]


def pull_round(
    settings: Settings,
    round_id: str,
    ls: Any | None = None,
    store: Any | None = None,
    copy: bool = True,
    policy: str | None = None,
) -> PulledRound:
    """Read a round's labels, validate and convert them; copy the frames to content-addressed storage.

    The report is also written to ``rounds/<round_id>/labels_report.json``.
    """
    from detloop.clients.labelstudio import LabelStudioClient
    from detloop.clients.s3 import S3Store
    from tasks import rounds

    ls = ls or LabelStudioClient(settings)
    store = store or S3Store(settings)
    project = ensure_project(settings, ls)
    tasks = read_round_tasks(settings, round_id, ls, store, project.id)
    pulled = convert_round_tasks(tasks, round_id, settings.classes, policy or settings.label_studio.annotation_policy,
                                 settings.label_studio.min_box_pixels)
    if copy:
        entries = copy_frames(store, settings, pulled.frames, round_id)
        pulled.report["copied"] = len(entries)
        pulled.entries = entries
    store.put_json(settings.s3.data_bucket, rounds.round_prefix(round_id) + "labels_report.json", pulled.report)
    return pulled


def frames_summary(frames: Sequence[LabelledFrame]) -> dict[str, Any]:
    """Small summary used by CLIs and benchmarks."""
    return {
        "frames": len(frames),
        "hard": sum(f.hard for f in frames),
        "boxes": int(sum(len(f.detections) for f in frames)),
        "mean_boxes": (sum(len(f.detections) for f in frames) / len(frames)) if frames else math.nan,
    }
