"""Annotations edited in Label Studio after their round was pulled: found, and carried into the next version.

A round's dataset version is immutable, so a label corrected after the pull would otherwise be lost. When a
round is pulled, :func:`record_pull` stores a fingerprint of each task's annotations
(``rounds/<round_id>/pulled.json``: annotation ids, update times, results). Each later retrain calls
:func:`collect_late_edits`: tasks of earlier, already trained rounds whose fingerprint changed are converted
again and their entries join the new dataset version (the newest entry of a frame wins, see
:mod:`detloop.datasets`); :func:`commit_late_edits` records the new fingerprints once that version exists.
A task re-labelled as skipped keeps its earlier label (a version never drops a frame).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from detloop.settings import Settings
from tasks import rounds

PULLED = "pulled.json"


def fingerprint(task: dict[str, Any]) -> str:
    """A hash of a task's annotations as the server holds them (ids, update times, cancelled flags, results)."""
    anns = sorted(
        (int(a.get("id") or 0), str(a.get("updated_at") or ""), bool(a.get("was_cancelled")),
         json.dumps(a.get("result") or [], sort_keys=True))
        for a in task.get("annotations") or []
    )
    return hashlib.sha256(json.dumps(anns).encode()).hexdigest()[:16]


def pulled_key(round_id: str) -> str:
    return rounds.round_prefix(round_id) + PULLED


def record_pull(store: Any, settings: Settings, round_id: str, tasks: list[dict[str, Any]]) -> None:
    """Remember what the pull of ``round_id`` read (full task dicts as exported)."""
    store.put_json(settings.s3.data_bucket, pulled_key(round_id), {
        "pulled_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "tasks": {str(t["id"]): fingerprint(t) for t in tasks}})


@dataclass
class LateEdits:
    """What :func:`collect_late_edits` found: dataset entries to add, and per round the tasks and new fingerprints."""

    entries: list[Any] = field(default_factory=list)
    tasks: dict[str, list[int]] = field(default_factory=dict)  # round id -> task ids edited since its pull
    fingerprints: dict[str, dict[str, str]] = field(default_factory=dict)  # round id -> {task id: fingerprint}

    def report(self) -> dict[str, Any]:
        return {"rounds": {r: ids for r, ids in self.tasks.items()}, "entries": len(self.entries)}


def collect_late_edits(settings: Settings, store: Any, read_tasks: Callable[[str], list[dict[str, Any]]],
                       exclude: str | None = None) -> LateEdits:
    """Tasks of trained rounds edited since their pull, converted and copied like a pull does.

    Args:
        read_tasks: ``round_id -> the round's full tasks`` (:func:`tasks.annotation.read_round_tasks`).
        exclude: the round being pulled now.
    """
    from tasks.ls_tasks import convert_round_tasks
    from tasks.round_version import copy_frames

    out = LateEdits()
    for rec in rounds.list_rounds(store, settings, status="trained"):
        if rec.round_id == exclude:
            continue
        pulled = store.get_bytes_or_none(settings.s3.data_bucket, pulled_key(rec.round_id))
        if pulled is None:
            continue
        known = json.loads(pulled).get("tasks", {})
        changed = [t for t in read_tasks(rec.round_id) if known.get(str(t["id"])) != fingerprint(t)]
        if not changed:
            continue
        frames = rounds.load_round_frames(store, settings, rec.round_id)
        arms = {k: str(v["arm"]) for k, v in frames.items()} if frames is not None else None
        conv = convert_round_tasks(changed, rec.round_id, settings.classes, settings.label_studio.annotation_policy,
                                   settings.label_studio.min_box_pixels, arms, unknown_labels="quarantine")
        out.entries += copy_frames(store, settings, conv.frames, rec.round_id)
        out.tasks[rec.round_id] = sorted(int(t["id"]) for t in changed)
        out.fingerprints[rec.round_id] = {**known, **{str(t["id"]): fingerprint(t) for t in changed}}
    return out


def commit_late_edits(store: Any, settings: Settings, fingerprints: dict[str, dict[str, str]]) -> None:
    """Record the fingerprints of late edits once a dataset version holds them (they are not carried again)."""
    for round_id, fps in fingerprints.items():
        store.put_json(settings.s3.data_bucket, pulled_key(round_id), {
            "pulled_at": datetime.now(UTC).isoformat(timespec="seconds"), "tasks": fps})
