"""Simulated annotators: a Label Studio client like any person, for the demo, tests and benchmarks.

It is NOT part of the product code path: it lists the project's pending tasks over the API, reads
each frame's oracle ground truth (``s3://<oracle_bucket>/truth/<production key>.json``, written by
the synthetic world), degrades it with configurable noise, and submits an annotation (or skips the
task) through the same API endpoint the editor uses. The product cannot tell it from people.

Noise model (all seeded, per task, so a re-run makes the same choices):

- ``p_skip``: the task is skipped (a cancelled annotation);
- ``p_miss_small``: each box whose area is below ``small_area_px`` is left out;
- ``jitter``: each box edge moves by a normal draw of ``jitter x box side`` pixels;
- ``p_flip``: each box gets another class, uniformly among the others;
- ``throughput``: at most this many tasks per :func:`annotate_pending` call (None = all), and
  ``seconds_per_task`` of sleep between submissions (0 in tests).

Cost: what the annotator would have paid in seconds to turn the task's pre-annotations (the champion's
predictions shown in the editor) into its submission, by the ``labelling_cost`` prices
(:mod:`detloop.label_cost`: verify, adjust, draw, delete, per-frame overhead). :func:`annotate_pending`
sums it (``seconds``) and records it as the annotation's lead time, as Label Studio does for a person.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from detloop.detections import Detections
from detloop.errors import DataError
from detloop.label_cost import LabelActions, count_actions
from detloop.settings import LabellingCostSettings, Settings


@dataclass(frozen=True)
class AnnotatorProfile:
    """How a simulated annotator errs (probabilities in [0, 1], jitter as a share of box side)."""

    p_skip: float = 0.0
    p_miss_small: float = 0.0
    small_area_px: float = 32.0 * 32.0
    jitter: float = 0.0
    p_flip: float = 0.0
    seed: int = 0
    throughput: int | None = None
    seconds_per_task: float = 0.0

    def __post_init__(self) -> None:
        for name in ("p_skip", "p_miss_small", "p_flip"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise DataError(f"annotator profile: {name} must be in [0, 1], got {v}")
        if self.jitter < 0:
            raise DataError(f"annotator profile: jitter must be >= 0, got {self.jitter}")


def truth_key(production_key: str) -> str:
    return f"truth/{production_key}.json"


def parse_truth(obj: dict[str, Any], class_names: Sequence[str]) -> tuple[Detections, int, int]:
    """Oracle JSON -> (Detections in frame pixels, width, height).

    Accepts the world's ``{"width","height","boxes": [{"xyxy": [x1,y1,x2,y2], "class": name}, ...]}``,
    ``{"boxes": [[x1,y1,x2,y2], ...], "class_names": [...]}`` (or ``"class_ids"``: indices into the
    configured classes), or ``"detections"`` in ``Detections.to_dict()`` form.
    """
    w, h = int(obj.get("width") or 0), int(obj.get("height") or 0)
    if "detections" in obj:
        return Detections.from_dict(obj["detections"]), w, h
    rows = obj.get("boxes") or []
    if rows and isinstance(rows[0], dict):  # the world's format: [{"xyxy": [...], "class": name}, ...]
        obj = {"boxes": [r["xyxy"] for r in rows], "class_names": [r["class"] for r in rows]}
    boxes = np.asarray(obj.get("boxes") or [], dtype=np.float32).reshape(-1, 4)
    if "class_names" in obj:
        index = {c: i for i, c in enumerate(class_names)}
        unknown = sorted({c for c in obj["class_names"] if c not in index})
        if unknown:
            raise DataError(f"oracle truth names classes {unknown} outside {list(class_names)}")
        cids = [index[c] for c in obj["class_names"]]
    else:
        cids = list(obj.get("class_ids") or obj.get("class_id") or [])
    return Detections(xyxy=boxes, confidence=np.ones(len(boxes), np.float32), class_id=np.asarray(cids)), w, h


def read_truth(store: Any, settings: Settings, key: str) -> tuple[Detections, int | None, int | None]:
    """The oracle truth of a production frame (the world's reader when present, else the JSON)."""
    try:
        from detloop.world import oracle_truth  # type: ignore[attr-defined]
    except ImportError:
        oracle_truth = None
    if oracle_truth is not None:
        return oracle_truth(store, settings, key), None, None
    if not store.exists(settings.s3.oracle_bucket, truth_key(key)):
        raise DataError(f"no ground truth for {key} (s3://{settings.s3.oracle_bucket}/{truth_key(key)} does not exist)")
    dets, w, h = parse_truth(store.get_json(settings.s3.oracle_bucket, truth_key(key)), settings.classes)
    return dets, w or None, h or None


def _rng(seed: int, task_key: str) -> np.random.Generator:
    h = hashlib.sha256(f"{seed}|{task_key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:8], "big"))


def degrade(truth: Detections, profile: AnnotatorProfile, rng: np.random.Generator, num_classes: int,
            width: int, height: int) -> Detections:
    """Apply the profile's misses, jitter and label flips to the truth (pure given ``rng``)."""
    d = truth
    if len(d) and profile.p_miss_small > 0:
        small = d.area < profile.small_area_px
        drop = small & (rng.random(len(d)) < profile.p_miss_small)
        d = d[~drop]
    if not len(d):
        return d
    xy = d.xyxy.astype(np.float64).copy()
    if profile.jitter > 0:
        side = np.stack([xy[:, 2] - xy[:, 0], xy[:, 3] - xy[:, 1]] * 2, axis=1)
        xy += rng.normal(0.0, profile.jitter, xy.shape) * side
        xy[:, [0, 2]] = np.sort(xy[:, [0, 2]], axis=1).clip(0, width)
        xy[:, [1, 3]] = np.sort(xy[:, [1, 3]], axis=1).clip(0, height)
    cid = d.class_id.copy()
    if profile.p_flip > 0 and num_classes > 1:
        flip = rng.random(len(d)) < profile.p_flip
        shift = rng.integers(1, num_classes, len(d))
        cid = np.where(flip, (cid + shift) % num_classes, cid)
    return Detections(xyxy=xy, confidence=np.ones(len(d), np.float32), class_id=cid)


def annotation_for(task: dict[str, Any], truth: Detections, profile: AnnotatorProfile,
                   class_names: Sequence[str], width: int, height: int) -> tuple[bool, list[dict[str, Any]]]:
    """(skip?, Label Studio result) the simulated annotator submits for one task."""
    from detloop.ls_format import FROM_NAME, TO_NAME

    data = task.get("data") or {}
    rng = _rng(profile.seed, f"{data.get('round_id')}|{data.get('s3_key')}")
    if rng.random() < profile.p_skip:
        return True, []
    d = degrade(truth, profile, rng, len(class_names), width, height)
    return False, d.to_label_studio(width, height, class_names, FROM_NAME, TO_NAME, with_score=False)


def pre_annotations(task: dict[str, Any], class_names: Sequence[str], width: int, height: int) -> Detections:
    """The pre-annotations a labeller sees on ``task``: its first prediction's boxes (empty when none, or when
    the server listed predictions as ids only)."""
    preds = [p for p in task.get("predictions") or [] if isinstance(p, dict)]
    if not preds:
        return Detections.empty()
    return Detections.from_label_studio(preds[0].get("result") or [], class_names, width or None, height or None)


def labelling_actions(task: dict[str, Any], result: Sequence[dict[str, Any]], class_names: Sequence[str],
                      width: int, height: int, cost: LabellingCostSettings) -> LabelActions:
    """The actions (verify / adjust / draw / delete) that turn ``task``'s pre-annotations into ``result``."""
    final = Detections.from_label_studio(list(result), class_names, width or None, height or None)
    return count_actions(pre_annotations(task, class_names, width, height), final, cost)


def annotate_pending(
    settings: Settings,
    profile: AnnotatorProfile,
    round_id: str | None = None,
    ls: Any | None = None,
    store: Any | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, int]:
    """Annotate the project's pending tasks (optionally of one round) like a person would.

    Returns:
        Counts ``{"seen", "annotated", "skipped", "boxes", "no_truth"}`` (tasks without oracle truth
        are left pending) and ``seconds``: the modelled labelling time of the submitted tasks
        (``settings.labelling_cost``), also each annotation's lead time unless ``seconds_per_task`` is set.
    """
    from detloop.clients.labelstudio import LabelStudioClient, data_filter
    from detloop.clients.s3 import S3Store

    ls = ls or LabelStudioClient(settings)
    store = store or S3Store(settings)
    project = ls.find_project(settings.label_studio.project_title)
    if project is None:
        raise DataError(f"no Label Studio project titled {settings.label_studio.project_title!r} at {ls.url}")
    filters = [data_filter("round_id", round_id)] if round_id else []
    # full tasks: the predictions (the pre-annotations the cost model prices) come whole only with fields=all
    pending = [t for t in ls.iter_tasks(project.id, filters, fields="all")
               if not int(t.get("total_annotations") or 0) and not int(t.get("cancelled_annotations") or 0)]
    pending.sort(key=lambda t: int(t["id"]))
    if profile.throughput is not None:
        pending = pending[: profile.throughput]
    out: dict[str, Any] = {"seen": len(pending), "annotated": 0, "skipped": 0, "boxes": 0, "no_truth": 0,
                           "seconds": 0.0}
    for t in pending:
        data = t.get("data") or {}
        try:
            truth, tw, th = read_truth(store, settings, str(data["s3_key"]))
        except DataError:
            out["no_truth"] += 1  # not a frame of the synthetic world: a person would have to look
            continue
        w, h = int(data.get("width") or tw or 0), int(data.get("height") or th or 0)
        skip, result = annotation_for(t, truth, profile, settings.classes, w, h)
        paid = 0.0 if skip else labelling_actions(t, result, settings.classes, w, h,
                                                  settings.labelling_cost).seconds(settings.labelling_cost)
        out["seconds"] += paid
        ls.create_annotation(int(t["id"]), result, was_cancelled=skip,
                             lead_time=profile.seconds_per_task or paid or None)
        out["skipped" if skip else "annotated"] += 1
        out["boxes"] += len(result)
        if profile.seconds_per_task:
            sleep(profile.seconds_per_task)
    return out
