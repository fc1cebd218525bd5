"""Annotation round trips with Label Studio (the IO): push a round out, list its tasks, pull labels back.

The task format and the label conversion are pure (:mod:`tasks.ls_tasks`), label quality and consensus
too (:mod:`tasks.label_quality`); the round record is owned by :mod:`tasks.rounds`; the dataset version
a round becomes is built by :mod:`tasks.round_version`.

Pushing is idempotent: the round's tasks already in the project are listed first (server-side filter
on ``data.round_id``) and their keys skipped, so a second push, or a re-run after a crash half-way (or a
timeout whose import did go through), creates no duplicate. A push imports the round's tasks in a shuffled
order, makes :data:`~detloop.ls_format.PREDICTION_MODEL_VERSION` the project's model version (so labellers see
the pre-annotations of every round) and creates the round's saved view (a tab filtered on its id). Nothing here retries: a push that fails on
an unavailable Label Studio is retried as a whole by its flow, and the listing makes that safe.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from detloop.contracts import SelectedFrame
from detloop.errors import DataError
from detloop.ls_format import PREDICTION_MODEL_VERSION, data_filter
from detloop.settings import Settings
from tasks import rounds
from tasks.ls_tasks import PulledRound, batched, build_task, convert_round_tasks, shuffled
from tasks.round_version import copy_frames


@dataclass
class PushReport:
    round_id: str
    project_id: int
    requested: int
    already_present: int
    imported: int
    task_ids: list[int]
    batches: int
    view_url: str | None = None  # the round's tab in Label Studio

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ensure_project(settings: Settings, ls: Any) -> Any:
    """The configured project (created from the class list, or reused and checked)."""
    return ls.ensure_project(settings.label_studio.project_title, settings.classes)


# columns a round's tab hides: plumbing, not for labellers
HIDDEN_COLUMNS = ("tasks:data.pre", "tasks:data.bucket", "tasks:data.s3_key", "tasks:data.round_id")

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
    from detloop.ls_format import data_filter

    flt = [data_filter("round_id", round_id)]
    if fields == "all":
        ids = [int(t["id"]) for t in ls.iter_tasks(project_id, flt, fields="task_only", include=INCLUDE["ids"])]
        return list(ls.export_tasks(project_id, ids))
    return list(ls.iter_tasks(project_id, flt, fields="task_only", include=INCLUDE[fields]))


def present_task_ids(ls: Any, project_id: int, round_id: str) -> dict[str, int]:
    """``{s3_key: task_id}`` of the round's tasks already in the project."""
    return {str((t.get("data") or {}).get("s3_key")): int(t["id"])
            for t in round_tasks(ls, project_id, round_id, "task_only")}


def push_round(
    settings: Settings,
    selected: Sequence[SelectedFrame],
    round_id: str,
    model_version: str | None,
    as_of: str,
    ls: Any,
    store: Any,
    now: datetime | None = None,
) -> PushReport:
    """Push a round's selected frames as tasks (idempotent) and open its round record.

    Args:
        selected: the frames (selected and control arms) with their predictions.
        round_id: stable id of the round (dedupe key together with each frame's S3 key).
        model_version: registry version whose predictions are the pre-annotations.
        as_of: ISO date of the round.
        ls: the Label Studio client; store: the object store.

    Returns:
        What was imported; the round record is written only after every batch went in.
    """
    keys = [sf.frame.key for sf in selected]
    dupes = sorted(k for k, n in Counter(keys).items() if n > 1)
    if dupes:
        raise DataError(f"round {round_id}: {len(dupes)} frame key(s) selected twice, e.g. {dupes[:3]}")
    project = ensure_project(settings, ls)
    for bucket in sorted({sf.frame.bucket for sf in selected}):
        ls.ensure_s3_storage(project.id, bucket, settings.label_studio.presign, settings.label_studio.presign_ttl_minutes)
    # arms, ranks and uncertainties stay in detloop's record, written before any task of the round exists
    rounds.save_round_frames(store, settings, round_id, selected, model_version)
    task_ids = present_task_ids(ls, project.id, round_id)
    present = set(task_ids)
    todo = [sf for sf in selected if sf.frame.key not in present]
    tasks = shuffled([build_task(sf, round_id, model_version, settings.classes,
                                 settings.label_studio.prediction_conf_threshold) for sf in todo],
                     rounds.round_seed(round_id))
    ids: list[int] = []
    n_batches = 0
    for batch in batched(tasks, settings.label_studio.import_batch_size):
        new_ids = ls.import_tasks(project.id, batch)
        new = {t["data"]["s3_key"]: i for t, i in zip(batch, new_ids, strict=False)}
        task_ids.update(new)
        ids += list(new.values())
        n_batches += 1
    if task_ids:  # accepted only once predictions carrying the version exist
        ls.set_model_version(project.id, PREDICTION_MODEL_VERSION)
    view_id = ls.ensure_view(project.id, round_id, [data_filter("round_id", round_id)], HIDDEN_COLUMNS)
    rounds.save_task_ids(store, settings, round_id, task_ids, project.id, view_id, ls.view_url(project.id, view_id))
    rounds.open_round(
        store, settings, round_id=round_id, as_of=as_of, model_version=model_version,
        n_selected=sum(sf.arm == "selected" for sf in selected), n_control=sum(sf.arm == "control" for sf in selected),
        now=now,
    )
    return PushReport(round_id, project.id, len(selected), len(present & set(keys)), len(ids), ids, n_batches,
                      ls.view_url(project.id, view_id))


def read_round_tasks(settings: Settings, round_id: str, ls: Any, store: Any, project_id: int) -> list[dict[str, Any]]:
    """Full tasks of a round (annotations, data) through the export API.

    The task ids come from ``rounds/<round_id>/tasks.json`` written by the push (saves a filtered
    listing, ~0.6 ms of server CPU per task); when that file is missing, or the last watch counted
    more tasks for the round than it lists, they come from a filtered listing.
    """
    ids = rounds.load_task_ids(store, settings, round_id)
    rec = rounds.load_round(store, settings, round_id)
    if ids is None or (rec is not None and int(rec.counts.get("total", 0)) > len(ids)):
        return round_tasks(ls, project_id, round_id, "all")
    return [t for t in ls.export_tasks(project_id, sorted(ids.values()))
            if (t.get("data") or {}).get("round_id") == round_id]


def pull_round(
    settings: Settings,
    round_id: str,
    ls: Any,
    store: Any,
    copy: bool = True,
    policy: str | None = None,
) -> PulledRound:
    """Read a round's labels, validate and convert them; copy the frames to content-addressed storage.

    Each frame's arm comes from the round record (``rounds/<round_id>/frames.json``), not from the task
    (tasks are blind); rounds pushed before that record existed fall back to ``data.arm``. The report is
    also written to ``rounds/<round_id>/labels_report.json``.
    """
    from tasks.late_edits import record_pull

    project = ensure_project(settings, ls)
    tasks = read_round_tasks(settings, round_id, ls, store, project.id)
    record_pull(store, settings, round_id, tasks)  # a later edit of these annotations is found by its fingerprint
    frames = rounds.load_round_frames(store, settings, round_id)
    arms = {k: str(v["arm"]) for k, v in frames.items()} if frames is not None else None
    pulled = convert_round_tasks(tasks, round_id, settings.classes, policy or settings.label_studio.annotation_policy,
                                 settings.label_studio.min_box_pixels, arms, settings.label_studio.unknown_labels,
                                 settings.labelling_cost)
    if copy:
        entries = copy_frames(store, settings, pulled.frames, round_id)
        pulled.report["copied"] = len(entries)
        pulled.entries = entries
    store.put_json(settings.s3.data_bucket, rounds.labels_report_key(round_id), pulled.report)
    return pulled
