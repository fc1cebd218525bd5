"""Round records in S3 and the watcher that decides when a labelling round is done.

A round record (:class:`~detloop.contracts.RoundRecord`) lives at ``rounds/<round_id>/round.json``
in the data bucket. Lifecycle:

- ``open``: written by :func:`tasks.annotation.push_round` after every task went in; its deadline is
  ``as_of + rounds.deadline_days`` (midnight UTC).
- ``completed``: every task of the round is labelled or skipped (set by :func:`watch_rounds`).
- ``closed_partial``: the deadline passed with tasks still pending (set by :func:`watch_rounds`);
  the labels present are used, the report says how many were missing.
- ``trained``: set by the retrain flow with :func:`mark_round`.

:func:`watch_rounds` is a plain function: it takes ``now`` (simulated time in tests and demos) and an
``emit`` callable with the signature of Prefect's ``emit_event(event, resource, payload=..., id=...)``.
It emits ``detloop.annotation.round.completed`` once per round: the event id is a uuid5 of the round
id, the record stores it after emitting, and a round whose record already holds it is never emitted
again. If the process dies between the emit and the write, the next run emits the SAME event id
again, so consumers can deduplicate on it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from detloop.contracts import RoundRecord
from detloop.errors import DataError
from detloop.settings import Settings

EVENT_ROUND_COMPLETED = "detloop.annotation.round.completed"
_NS = uuid.UUID("6f1d7a52-4a8e-4df0-9a55-2f1f0f0d6e11")  # detloop's namespace for event ids
ROUND_PREFIX = "rounds/"
TERMINAL = ("completed", "closed_partial", "trained")

Emit = Callable[..., Any]


def round_prefix(round_id: str) -> str:
    return f"{ROUND_PREFIX}{round_id}/"


def round_key(round_id: str) -> str:
    return f"{round_prefix(round_id)}round.json"


def completed_event_id(round_id: str) -> uuid.UUID:
    """Deterministic event id of a round's completion event."""
    return uuid.uuid5(_NS, f"{EVENT_ROUND_COMPLETED}/{round_id}")


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def deadline_for(as_of: str | date, deadline_days: int) -> datetime:
    """Midnight UTC ``deadline_days`` after the given day."""
    d = date.fromisoformat(as_of) if isinstance(as_of, str) else as_of
    return datetime.combine(d + timedelta(days=deadline_days), time(0, 0), tzinfo=UTC)


# ---- storage ------------------------------------------------------------------------------------
def load_round(store: Any, settings: Settings, round_id: str) -> RoundRecord | None:
    bucket = settings.s3.data_bucket
    if not store.exists(bucket, round_key(round_id)):
        return None
    return RoundRecord.from_dict(store.get_json(bucket, round_key(round_id)))


def save_round(store: Any, settings: Settings, rec: RoundRecord) -> None:
    store.put_json(settings.s3.data_bucket, round_key(rec.round_id), rec.to_dict())


def list_rounds(store: Any, settings: Settings, status: str | None = None) -> list[RoundRecord]:
    """Round records of this Label Studio project (optionally one status), by creation time.

    Rounds are scoped to ``settings.label_studio.project_title``: several detloop instances (or test
    runs) can share a data bucket without watching or blocking each other's rounds.
    """
    out = []
    project = settings.label_studio.project_title
    for obj in store.list(settings.s3.data_bucket, ROUND_PREFIX):
        if obj.key.endswith("/round.json"):
            rec = RoundRecord.from_dict(store.get_json(settings.s3.data_bucket, obj.key))
            if rec.project != project:
                continue
            if status is None or rec.status == status:
                out.append(rec)
    return sorted(out, key=lambda r: (r.created_at, r.round_id))


def open_round(
    store: Any,
    settings: Settings,
    round_id: str,
    as_of: str,
    model_version: str | None,
    n_selected: int,
    n_control: int,
    selection_report_key: str | None = None,
    now: datetime | None = None,
) -> RoundRecord:
    """Create the round record as ``open`` (an existing record is kept as it is: idempotent).

    The deadline counts from when the round is really opened (``now``, default the wall clock), not from
    ``as_of``: a backfill or demo of a past week still gives annotators ``rounds.deadline_days``.
    """
    existing = load_round(store, settings, round_id)
    if existing is not None:
        return existing
    now = _utc(now or datetime.now(UTC))
    rec = RoundRecord(
        round_id=round_id,
        as_of=str(as_of),
        created_at=now.isoformat(timespec="seconds"),
        deadline=deadline_for(now.date(), settings.rounds.deadline_days).isoformat(timespec="seconds"),
        status="open",
        model_version=model_version,
        n_selected=int(n_selected),
        n_control=int(n_control),
        selection_report_key=selection_report_key,
        counts={"total": int(n_selected) + int(n_control)},
        project=settings.label_studio.project_title,
    )
    save_round(store, settings, rec)
    return rec


_MARKABLE = {"status", "counts", "dataset_version", "completed_event_id", "selection_report_key", "deadline"}


def mark_round(store: Any, settings: Settings, round_id: str, **fields: Any) -> RoundRecord:
    """Update fields of a round record (e.g. ``status="trained", dataset_version=vid``).

    Raises:
        DataError: unknown round, or a field that cannot be changed.
    """
    bad = sorted(set(fields) - _MARKABLE)
    if bad:
        raise DataError(f"round {round_id}: cannot set {bad}; settable fields are {sorted(_MARKABLE)}")
    rec = load_round(store, settings, round_id)
    if rec is None:
        raise DataError(f"round {round_id!r} not found at s3://{settings.s3.data_bucket}/{round_key(round_id)}")
    if "status" in fields and fields["status"] not in ("open", *TERMINAL):
        raise DataError(f"round {round_id}: status must be one of {['open', *TERMINAL]}, got {fields['status']!r}")
    for k, v in fields.items():
        setattr(rec, k, v)
    save_round(store, settings, rec)
    return rec


# ---- the decision (pure) --------------------------------------------------------------------------
def decide(rec: RoundRecord, progress: dict[str, int], now: datetime) -> str | None:
    """New status of an open round given its task counts, or None when it stays open.

    ``completed`` when tasks exist and none is pending; ``closed_partial`` when the deadline has
    passed with tasks still pending (or none were found).
    """
    if rec.status != "open":
        return None
    if progress.get("total", 0) > 0 and progress.get("pending", 0) == 0:
        return "completed"
    if _utc(now) >= datetime.fromisoformat(rec.deadline):
        return "closed_partial"
    return None


# ---- the watcher --------------------------------------------------------------------------------
def watch_rounds(
    settings: Settings,
    now: datetime,
    emit: Emit,
    store: Any | None = None,
    ls: Any | None = None,
    round_ids: Collection[str] | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Compute progress of every open round, close the finished ones and emit their event once.

    Args:
        now: the current time (simulated in tests and demos; naive means UTC).
        emit: ``emit(event=..., resource=..., payload=..., id=...)`` (Prefect's ``emit_event``).
        round_ids: only these rounds (default: every round record in the data bucket that was
            pushed to the configured project; rounds of another project sharing the bucket are
            left to that project's watcher).
        dry_run: compute and report only: no record is written and nothing is emitted (rows say
            ``would_emit``).

    Returns:
        ``{"now", "rounds": [{round_id, status, progress, emitted, event_id}], "emitted": [...]}``.
    """
    from detloop.clients.labelstudio import LabelStudioClient
    from detloop.clients.s3 import S3Store
    from tasks.annotation import ensure_project, round_progress, round_project_title, round_tasks

    store = store or S3Store(settings)
    rows: list[dict[str, Any]] = []
    emitted: list[str] = []
    project_id: int | None = None
    for rec in list_rounds(store, settings):
        if round_ids is not None and rec.round_id not in round_ids:
            continue
        if round_ids is None and rec.status == "open":
            title = round_project_title(store, settings, rec.round_id)
            if title is not None and title != settings.label_studio.project_title:
                continue  # another project's round (projects sharing a data bucket)
        if rec.status == "open":
            if project_id is None:
                ls = ls or LabelStudioClient(settings)
                project_id = ensure_project(settings, ls).id
            progress = round_progress(round_tasks(ls, project_id, rec.round_id, fields="progress"))
            new = decide(rec, progress, now)
            rec.counts = {**rec.counts, **progress}
            if new is not None:
                rec.status = new  # type: ignore[assignment]
            if not dry_run:
                save_round(store, settings, rec)
        if rec.status in TERMINAL and rec.completed_event_id is None:
            eid = completed_event_id(rec.round_id)
            if dry_run:
                rows.append({"round_id": rec.round_id, "status": rec.status, "progress": rec.counts,
                             "emitted": False, "would_emit": True, "event_id": str(eid)})
                continue
            emit(
                event=EVENT_ROUND_COMPLETED,
                resource={"prefect.resource.id": f"detloop.round.{rec.round_id}", "prefect.resource.name": rec.round_id},
                payload={
                    "round_id": rec.round_id,
                    "status": rec.status,
                    "partial": rec.status == "closed_partial",
                    "model_version": rec.model_version,
                    **{k: int(v) for k, v in rec.counts.items()},
                },
                id=eid,
            )
            rec.completed_event_id = str(eid)
            save_round(store, settings, rec)
            emitted.append(rec.round_id)
            rows.append({"round_id": rec.round_id, "status": rec.status, "progress": rec.counts,
                         "emitted": True, "event_id": str(eid)})
        elif rec.status == "open":
            rows.append({"round_id": rec.round_id, "status": rec.status, "progress": rec.counts,
                         "emitted": False, "event_id": None})
    return {"now": _utc(now).isoformat(timespec="seconds"), "rounds": rows, "emitted": emitted}
