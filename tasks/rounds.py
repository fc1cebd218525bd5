"""Round records in S3: the one module that writes them (and the round's task-id map).

A round record (:class:`~detloop.contracts.RoundRecord`) lives at ``rounds/<round_id>/round.json``
in the data bucket. Lifecycle:

- ``open``: written by :func:`open_round` (from :func:`tasks.annotation.push_round`, after every task
  went in); its deadline is ``rounds.deadline_days`` after it opened (midnight UTC).
- ``completed``: every task of the round is labelled or skipped (decided by :func:`decide`, applied by
  :func:`tasks.watch.watch_rounds`).
- ``closed_partial``: the deadline passed with tasks still pending; the labels present are used, the
  report says how many were missing.
- ``trained``: set by the retrain flow with :func:`mark_round`.

``rounds/<round_id>/tasks.json`` maps each frame's key to its Label Studio task id, and names the round's
saved view (tab) in the project (:func:`save_task_ids`, :func:`load_task_ids`, :func:`round_view_url`).

``rounds/<round_id>/frames.json`` keeps what labellers must not see: each frame's arm (selected / control),
rank, uncertainty and strategy (:func:`save_round_frames`, :func:`load_round_frames`). Tasks carry none of
it, so the control arm stays blind; the pull reads the arm from here.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal

from detloop.contracts import RoundRecord
from detloop.errors import DataError
from detloop.label_cost import OutcomeTally
from detloop.settings import Settings

_NS = uuid.UUID("6f1d7a52-4a8e-4df0-9a55-2f1f0f0d6e11")  # detloop's namespace for event ids
ROUND_PREFIX = "rounds/"
TERMINAL = ("completed", "closed_partial", "trained")


def round_prefix(round_id: str) -> str:
    return f"{ROUND_PREFIX}{round_id}/"


def round_key(round_id: str) -> str:
    return f"{round_prefix(round_id)}round.json"


REANNOUNCE_MAX = 3  # a round's completion is re-sent at most this many times when its retrain keeps dying


def completed_event_id(round_id: str, attempt: int = 1) -> uuid.UUID:
    """Deterministic id of a round's completion event (the same on every re-run: consumers dedupe on it);
    ``attempt`` > 1: the id of its re-announcement after a retrain died (:func:`retrain_stalled`)."""
    suffix = f"#{attempt}" if attempt > 1 else ""
    return uuid.uuid5(_NS, f"detloop.annotation.round.completed/{round_id}{suffix}")


def retrain_stalled(rec: RoundRecord, now: datetime, grace_s: float, lease_held: Callable[[], bool],
                    retrain_waiting: Callable[[], bool]) -> bool:
    """Whether a finished round's retrain died: its completion was announced more than ``grace_s`` ago, the round
    is still not trained, no retrain holds its lease (a live run renews it) and no retrain run waits to start.

    A runner killed in the middle of a retrain leaves its flow run "Running" for ever and nothing re-triggers
    it; the watch re-announces such a round (a retrain is idempotent, and its lease keeps a second one out).
    ``lease_held`` and ``retrain_waiting`` (an object-store read, a Prefect query) are asked only of a round
    that is otherwise due.
    """
    if rec.status not in ("completed", "closed_partial") or rec.completed_event_id is None:
        return False
    since = datetime.fromisoformat(rec.announced_at or rec.created_at)
    if (utc(now) - utc(since)).total_seconds() <= grace_s:
        return False
    return not lease_held() and not retrain_waiting()


def utc(dt: datetime) -> datetime:
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


def labels_report_key(round_id: str) -> str:
    """Where :func:`tasks.annotation.pull_round` writes a round's labels report (with its outcome ledger)."""
    return round_prefix(round_id) + "labels_report.json"


def outcome_ledger(store: Any, settings: Settings, last: int) -> tuple[OutcomeTally, list[str]]:
    """The summed outcome ledgers (``label_outcomes`` of the labels report) of this project's ``last`` most recent
    rounds whose labels were pulled, and those rounds' ids (rounds pulled before the ledger existed are skipped)."""
    total, used = OutcomeTally(), []
    for rec in reversed(list_rounds(store, settings)):
        if len(used) >= last:
            break
        key = labels_report_key(rec.round_id)
        if rec.status == "open" or not store.exists(settings.s3.data_bucket, key):
            continue
        ledger = (store.get_json(settings.s3.data_bucket, key) or {}).get("label_outcomes")
        if ledger:
            try:
                total = total + OutcomeTally.from_dict(ledger)
            except (KeyError, TypeError, ValueError) as err:
                raise DataError(f"s3://{settings.s3.data_bucket}/{key}: unreadable label_outcomes ({err}); "
                                "delete that entry or turn selection.cost.calibration off") from err
            used.append(rec.round_id)
    return total, used


def unpromoted_rounds(store: Any, settings: Settings, among: Collection[str] | None = None) -> dict[str, str]:
    """Trained rounds of this project whose challenger did not become champion (``rounds/<id>/result.json``:
    ``promoted`` false), as ``round id -> the round's as_of`` (its frames are from before that day); ``among``:
    only these round ids (the monitor asks about its open episodes' rounds, not the whole history)."""
    out = {}
    recs = list_rounds(store, settings, status="trained") if among is None else \
        [r for r in (load_round(store, settings, i) for i in sorted(among)) if r is not None and r.status == "trained"]
    for rec in recs:
        key = f"{round_prefix(rec.round_id)}result.json"
        if store.exists(settings.s3.data_bucket, key) and \
                not store.get_json(settings.s3.data_bucket, key).get("promoted", False):
            out[rec.round_id] = rec.as_of
    return out


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
    now = utc(now or datetime.now(UTC))
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


_MARKABLE = {"status", "counts", "dataset_version", "completed_event_id", "selection_report_key", "deadline",
             "reason", "focus_key"}


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


# ---- which round a weekly run works on (pure) --------------------------------------------------------
def round_id_for(project: str, as_of: date, cameras: Sequence[str] | None = None,
                 dates: Sequence[date] | None = None, attempt: int = 0) -> str:
    """Deterministic round id: the Label Studio project, the as_of date, a hash of any focus, a counter.

    The project slug keeps ids unique when several detloop projects share a data bucket.
    """
    rid = f"{_slug(project)}-{as_of.isoformat()}"
    if cameras or dates:
        focus = json.dumps({"cameras": sorted(cameras or []), "dates": sorted(str(d) for d in dates or [])})
        rid += "-" + hashlib.sha256(focus.encode()).hexdigest()[:6]
    if attempt:
        rid += f"-{attempt + 1}"
    return rid


@dataclass(frozen=True)
class RoundFocus:
    """Why a round is opened.

    ``weekly``: the cadence; one round per week, and ``rounds.on_open_round`` decides while another weekly
    round is open. ``drift``: the targeted round of a drift episode (``key`` = the episode id): exactly one
    round per key (its id derives from it), opened even while weekly rounds are open, and never blocking them.
    """

    reason: Literal["weekly", "drift"] = "weekly"
    key: str | None = None

    def __post_init__(self) -> None:
        if self.reason != "weekly" and not self.key:
            raise DataError(f"a {self.reason} round needs a key (e.g. the drift episode id)")


WEEKLY = RoundFocus()


def focused_round_id(project: str, focus: RoundFocus) -> str:
    """``<project slug>-<key>``: the one round of a focus (e.g. ``detloop-drift-v3-2026-01-20``)."""
    return f"{_slug(project)}-{focus.key}"


def _slug(project: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", project.lower()).strip("-") or "detloop"


def plan_round(records: Sequence[RoundRecord], project: str, as_of: date, cameras: Sequence[str] | None,
               dates: Sequence[date] | None, on_open_round: str, force_new: bool = False,
               focus: RoundFocus = WEEKLY) -> tuple[str | None, str]:
    """The round a selection run for ``as_of`` works on, or ``(None, why)`` when it should select nothing.

    A re-run of the same week resumes its round; while another weekly round is open, ``on_open_round: skip``
    selects nothing (unless ``force_new``); otherwise a new round, or another one with a counter. A focused
    round (``focus.reason != "weekly"``) is one round per ``focus.key``: new, or resumed; other rounds being
    open does not matter to it, and it does not block weekly rounds.

    Returns:
        ``(round_id, "resume" | "new" | "another")`` or ``(None, reason)``.
    """
    if focus.reason != "weekly":
        rid = focused_round_id(project, focus)
        return rid, ("resume" if any(r.round_id == rid for r in records) else "new")
    base = round_id_for(project, as_of, cameras, dates)
    mine = sorted(r.round_id for r in records if r.round_id == base or r.round_id.startswith(base + "-"))
    open_other = [r.round_id for r in records
                  if r.status == "open" and r.round_id not in mine and r.reason == "weekly"]
    if base in mine and not force_new:
        return base, "resume"
    if open_other and on_open_round == "skip" and not force_new:
        return None, f"round(s) {open_other} still open; rounds.on_open_round=skip"
    if not mine:
        return base, "new"
    return round_id_for(project, as_of, cameras, dates, attempt=len(mine)), "another"


def check_as_of(as_of: date, today: date) -> None:
    """Refuse a week that has not happened: its window holds no frames yet, and its round would block the
    real weeks before it (one round at a time).

    Raises:
        ConfigError: ``as_of`` is after ``today``.
    """
    from detloop.errors import ConfigError

    if as_of > today:
        raise ConfigError(f"as_of {as_of.isoformat()} is in the future (today is {today.isoformat()}): its window "
                          "has no frames yet; give a date up to today")


def round_seed(round_id: str) -> int:
    """Seed of a round's random draws (control arm, tie breaks): stable across re-runs of the round."""
    return int(hashlib.sha256(json.dumps([round_id]).encode()).hexdigest()[:8], 16)


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
    if utc(now) >= datetime.fromisoformat(rec.deadline):
        return "closed_partial"
    return None


# ---- the round's task ids ------------------------------------------------------------------------
def task_ids_key(round_id: str) -> str:
    return round_prefix(round_id) + "tasks.json"


def save_task_ids(store: Any, settings: Settings, round_id: str, task_ids: dict[str, int],
                  project_id: int | None = None, view_id: int | None = None, view_url: str | None = None) -> None:
    """``rounds/<round_id>/tasks.json``: production key -> Label Studio task id, the project, the round's view."""
    store.put_json(settings.s3.data_bucket, task_ids_key(round_id), {
        "round_id": round_id, "project_title": settings.label_studio.project_title,
        "label_studio_url": settings.label_studio.url, "project_id": project_id, "view_id": view_id,
        "view_url": view_url, "tasks": task_ids})


def round_view_url(store: Any, settings: Settings, round_id: str) -> str | None:
    """The browser URL of the round's tab in Label Studio (None for rounds pushed before views existed)."""
    doc = _task_ids_doc(store, settings, round_id)
    return None if doc is None else doc.get("view_url")


# ---- what labellers must not see ----------------------------------------------------------------
def frames_key(round_id: str) -> str:
    return round_prefix(round_id) + "frames.json"


def save_round_frames(store: Any, settings: Settings, round_id: str, selected: Sequence[Any],
                      model_version: str | None) -> None:
    """``rounds/<round_id>/frames.json``: per frame key its arm, rank, uncertainty, strategy and reason.

    Written before the round's tasks are imported (a pulled task always finds its arm here).
    """
    store.put_json(settings.s3.data_bucket, frames_key(round_id), {
        "round_id": round_id, "model_version": model_version,
        "frames": {sf.frame.key: {"arm": sf.arm, "rank": int(sf.rank), "uncertainty": float(sf.uncertainty),
                                  "strategy": sf.strategy, "reason": sf.reason} for sf in selected}})


def load_round_frames(store: Any, settings: Settings, round_id: str) -> dict[str, dict[str, Any]] | None:
    """Per frame key what :func:`save_round_frames` kept, or None (rounds pushed before it existed)."""
    body = store.get_bytes_or_none(settings.s3.data_bucket, frames_key(round_id))
    return None if body is None else json.loads(body)["frames"]


def sent_keys(store: Any, settings: Settings, exclude_round: str | None = None) -> set[str]:
    """Keys of the frames this project's rounds sent to labelling (their ``frames.json``), but ``exclude_round``'s
    (a re-run of a round keeps its own frames)."""
    out: set[str] = set()
    for rec in list_rounds(store, settings):
        if rec.round_id != exclude_round:
            out |= set(load_round_frames(store, settings, rec.round_id) or {})
    return out


def without_sent(frames: Sequence[Any], sent: set[str]) -> tuple[list[Any], int]:
    """``frames`` (anything with a ``key``) without those already sent to labelling; and how many were left out."""
    kept = [f for f in frames if f.key not in sent]
    return kept, len(frames) - len(kept)


def _task_ids_doc(store: Any, settings: Settings, round_id: str) -> dict[str, Any] | None:
    if not store.exists(settings.s3.data_bucket, task_ids_key(round_id)):
        return None
    return store.get_json(settings.s3.data_bucket, task_ids_key(round_id))  # type: ignore[no-any-return]


def round_project_title(store: Any, settings: Settings, round_id: str) -> str | None:
    """Title of the Label Studio project a round was pushed to (None when unknown)."""
    doc = _task_ids_doc(store, settings, round_id)
    return None if doc is None else doc.get("project_title")


def load_task_ids(store: Any, settings: Settings, round_id: str) -> dict[str, int] | None:
    doc = _task_ids_doc(store, settings, round_id)
    return None if doc is None else {str(k): int(v) for k, v in doc["tasks"].items()}


# ---- one retrain per round ----------------------------------------------------------------------
def version_of_round(registry: Any, round_id: str) -> Any | None:
    """The newest registered version trained on ``round_id`` (tag ``detloop.round_id``), or None.

    A retrain that crashed after registering (even after promoting) is resumed from it: training again would
    start from whatever is champion now, possibly that very version, and register a second one.
    """
    mine = [v for v in registry.versions() if (v.tags or {}).get("detloop.round_id") == round_id]
    return max(mine, key=lambda v: int(v.version)) if mine else None

def retrain_lease(store: Any, settings: Settings, round_id: str) -> Any:
    """The lease that one ``retrain-and-promote`` run of ``round_id`` holds, on any host (fails at once when busy:
    :class:`~detloop.errors.LockBusy` says which run holds it and when its lease expires if that run died)."""
    from tasks.leases import lease

    return lease(store, settings.s3.data_bucket, f"retrain-{round_id}", f"retrain of round {round_id}",
                 settings.locks.lease_seconds, wait_s=0.0)
