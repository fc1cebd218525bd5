"""The Label Studio task format (pure): selected frames out as tasks, annotated tasks back as labelled frames.

Out (:func:`build_task`): each :class:`~detloop.contracts.SelectedFrame` becomes one task whose
``data.image`` is the frame's ``s3://`` URI (Label Studio serves it through an attached, never
synced, S3 storage), with a pre-annotation and data fields ``s3_key, bucket, round_id, width, height,
camera, date`` plus the pre-annotation in frame pixels (``pre``). Nothing in a task tells a labeller
which arm a frame is in: ``arm``, ``rank``, ``uncertainty`` and ``strategy`` stay in detloop's round
record (:func:`tasks.rounds.save_round_frames`), and :func:`shuffled` orders a round's tasks at random
(seeded by the round id) so control frames do not come last.

Pre-annotations: every round's predictions carry one constant ``model_version``
(:data:`detloop.ls_format.PREDICTION_MODEL_VERSION`): Label Studio's labelling queue and data manager show
only predictions whose version equals the project's, and a constant stays right when two rounds are open at
once (the registry version that scored a round is in its round record). The prediction ``score`` is the
model's mean confidence over the pre-annotated boxes and each box's ``score`` its confidence, all in [0, 1].

Back (:func:`convert_round_tasks`): only the round's tasks are read. Per task:

- no annotation: ``pending``; only cancelled (skipped) annotations: ``skipped``; both are excluded;
- several annotations: policy ``latest`` (the most recently updated submitted one) or ``consensus``
  (boxes that a strict majority of the annotations agree on: same class, IoU >= 0.5, coordinates
  averaged; with one or two annotations that is the intersection of what they drew);
- label names outside the configured classes: with ``unknown_labels="quarantine"`` (the setting's default)
  the task is left out and listed under ``quarantined`` in the report with its reason, the round's other
  tasks are used; with ``"fail"``, :class:`UnknownLabelsInRound` lists every name and the task ids (nothing
  is written);
- boxes are clipped to the frame; boxes narrower or lower than ``label_studio.min_box_pixels`` after
  clipping are dropped; both are counted in the report and listed per task;
- a submitted annotation with no box is a valid negative frame.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from detloop.contracts import LabelledFrame, Quality, SelectedFrame
from detloop.detections import Detections, UnknownLabelsError
from detloop.errors import DataError
from detloop.label_cost import OutcomeTally
from detloop.ls_format import FROM_NAME, IMAGE_FIELD, PREDICTION_MODEL_VERSION, TO_NAME
from detloop.settings import LabellingCostSettings
from tasks.label_quality import clip_boxes, consensus, label_quality, quality_report

TaskState = Literal["labelled", "skipped", "pending"]


class UnknownLabelsInRound(DataError):
    """Annotations use label names outside the configured classes."""

    def __init__(self, round_id: str, unknown: dict[str, list[int]], known: Sequence[str]):
        self.unknown = unknown
        parts = ", ".join(f"{name!r} (tasks {ids[:10]}{'...' if len(ids) > 10 else ''})" for name, ids in
                          sorted(unknown.items()))
        super().__init__(f"round {round_id}: unknown label name(s) {parts}; configured classes are {list(known)}")


def build_task(
    sf: SelectedFrame,
    round_id: str,
    model_version: str | None,
    class_names: Sequence[str],
    conf_threshold: float,
) -> dict[str, Any]:
    """One Label Studio task (import format) for a selected frame; blind to the frame's arm.

    The pre-annotation keeps predicted boxes with confidence >= ``conf_threshold`` (frame pixels,
    converted to percent); its ``score`` is their mean confidence (0 when none is kept). ``model_version``
    (the registry version that scored the frame) is recorded in the round record, not in the task.
    """
    scored = Detections.from_dict(sf.predictions) if sf.predictions else Detections.empty()
    dets = scored[scored.confidence >= conf_threshold]
    below = scored[scored.confidence < conf_threshold]
    task: dict[str, Any] = {
        "data": {
            IMAGE_FIELD: sf.frame.uri,
            "s3_key": sf.frame.key,
            "bucket": sf.frame.bucket,
            "round_id": round_id,
            "width": int(sf.width),
            "height": int(sf.height),
            "camera": sf.frame.camera,
            "date": sf.frame.date,
            # the pre-annotation again, in frame pixels: label quality is measured against exactly
            # this, and the export API (the fast read path) returns predictions as ids only
            "pre": _boxes(dets),
            # the sub-threshold candidates, not shown: the outcome ledger learns which were missed objects
            "cand": _boxes(below),
        },
        "predictions": [
            {
                "model_version": PREDICTION_MODEL_VERSION,
                "score": prediction_score(dets),
                "result": dets.to_label_studio(sf.width, sf.height, class_names, FROM_NAME, TO_NAME),
            }
        ],
    }
    return task


def _boxes(dets: Detections) -> dict[str, Any]:
    return {k: v for k, v in dets.to_dict().items() if k in ("xyxy", "confidence", "class_id")}


def prediction_score(dets: Detections) -> float:
    """The pre-annotation's score for Label Studio: the mean box confidence in [0, 1] (0 for no box)."""
    return round(float(np.clip(dets.confidence, 0.0, 1.0).mean()), 4) if len(dets) else 0.0


def shuffled(tasks: Sequence[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """A round's tasks in a random order fixed by ``seed`` (the round's): arms and ranks interleaved."""
    import random

    out = list(tasks)
    random.Random(seed).shuffle(out)
    return out


def batched(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


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
    arms: dict[str, str] | None = None,
    unknown_labels: str = "fail",
    cost: LabellingCostSettings | None = None,
) -> PulledRound:
    """Validate and convert the round's tasks (``fields="all"`` dicts) into labelled frames + report.

    Args:
        arms: each frame's S3 key to its arm (the round record's, :func:`tasks.rounds.load_round_frames`);
            a key it lacks falls back to the task's ``data.arm`` (rounds pushed before tasks were blind), then
            ``selected``.
        unknown_labels: ``"fail"`` or ``"quarantine"`` (leave such tasks out, listed in ``report["quarantined"]``).
        cost: with it, ``report["label_outcomes"]`` is the round's outcome ledger
            (:class:`detloop.label_cost.OutcomeTally`: what labellers did with the pre-annotations, by confidence).

    Raises:
        UnknownLabelsInRound: with ``unknown_labels="fail"``, when any submitted box names a class outside
            ``class_names``.
    """
    frames: list[LabelledFrame] = []
    unknown: dict[str, list[int]] = {}
    counts = Counter()
    issues: list[dict[str, Any]] = []
    quality = Quality()
    negatives = 0
    multi = 0
    outcomes = OutcomeTally()
    quarantined: list[dict[str, Any]] = []
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
        task_unknown: list[str] = []
        for a in chosen:
            res = [r for r in (a or {}).get("result") or [] if r.get("from_name", FROM_NAME) == FROM_NAME]
            if not w or not h:  # size from the results when the task lacks it
                for r in res:
                    w, h = int(r.get("original_width") or w), int(r.get("original_height") or h)
            try:
                parts.append(Detections.from_label_studio(res, class_names, w or None, h or None))
            except UnknownLabelsError as err:
                task_unknown += [n for n in err.unknown if n not in task_unknown]
        if task_unknown:
            for name in task_unknown:
                unknown.setdefault(name, []).append(tid)
            quarantined.append({"task_id": tid, "key": data.get("s3_key"), "reason": (
                f"unknown label name(s) {sorted(task_unknown)}; configured classes are {list(class_names)}")})
            counts["quarantined"] += 1
            continue
        if unknown and unknown_labels == "fail":
            continue
        if len(anns) > 1:
            kept = "boxes most annotators agree on" if policy == "consensus" else f"annotation {chosen[0].get('id')}"
            issues.append({"task_id": tid, "key": data.get("s3_key"),
                           "issue": f"{len(anns)} submitted annotations; policy {policy} kept {kept}"})
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
        if cost is not None:
            outcomes.add_frame(pred, dets, cost, _candidates(t))
        quality = quality + q
        negatives += len(dets) == 0
        frames.append(LabelledFrame(
            task_id=tid, bucket=str(data.get("bucket") or _bucket_of(data.get("image", ""))),
            key=str(data.get("s3_key")), width=w, height=h, arm=_arm(arms, data),
            camera=str(data.get("camera", "")), date=str(data.get("date", "")), detections=dets, quality=q,
            annotations=len(anns),
        ))
    if unknown and unknown_labels == "fail":
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
        "quarantined": quarantined,
    }
    if cost is not None:
        report["label_outcomes"] = outcomes.to_dict()
    return PulledRound(round_id, frames, report)


def _arm(arms: dict[str, str] | None, data: dict[str, Any]) -> str:
    key = str(data.get("s3_key"))
    if arms and key in arms:
        return str(arms[key])
    return str(data.get("arm", "selected"))


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


def _candidates(task: dict[str, Any]) -> Detections | None:
    """The sub-threshold boxes the labeller was not shown (``data.cand``); None for tasks pushed without them."""
    cand = (task.get("data") or {}).get("cand")
    return Detections.from_dict(cand) if isinstance(cand, dict) else None


def _bucket_of(uri: str) -> str:
    return uri[5:].split("/", 1)[0] if uri.startswith("s3://") else ""


def frames_summary(frames: Sequence[LabelledFrame]) -> dict[str, Any]:
    """Small summary used by CLIs and benchmarks."""
    return {
        "frames": len(frames),
        "hard": sum(f.hard for f in frames),
        "boxes": int(sum(len(f.detections) for f in frames)),
        "mean_boxes": (sum(len(f.detections) for f in frames) / len(frames)) if frames else math.nan,
    }
