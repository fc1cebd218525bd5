"""The watcher: progress of open rounds, closing the finished ones, announcing each completion once.

:func:`watch_rounds` is a plain function: it takes ``now`` (simulated time in tests and demos) and an
``announce`` callable that receives one :class:`~detloop.contracts.RoundCompleted` per finished round
(the flow turns it into Prefect's ``detloop.annotation.round.completed`` event). A round is announced
once: its record stores the event id after announcing, and a round whose record holds one is never
announced again. If the process dies between the two, the next run announces the SAME event id again,
so consumers can deduplicate on it.

One exception, for a retrain that died: a finished round still not trained after ``2 x locks.lease_seconds``,
with no retrain holding its lease and none waiting to start (:func:`tasks.rounds.retrain_stalled`), is announced
again under a new deterministic id (attempt 2, 3, ...), at most :data:`tasks.rounds.REANNOUNCE_MAX` times. A
runner killed in the middle of a retrain otherwise leaves the round untrained for good.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import datetime
from typing import Any

from detloop.contracts import RoundCompleted
from detloop.settings import Settings
from tasks import rounds
from tasks.annotation import ensure_project, round_tasks
from tasks.leases import is_held
from tasks.ls_tasks import round_progress

Announce = Callable[[RoundCompleted], Any]


def watch_rounds(
    settings: Settings,
    now: datetime,
    announce: Announce,
    store: Any,
    ls: Any,
    round_ids: Collection[str] | None = None,
    dry_run: bool = False,
    retrain_waiting: Callable[[str], bool] | None = None,
) -> dict[str, Any]:
    """Compute progress of every open round, close the finished ones and announce each once.

    Args:
        now: the current time (simulated in tests and demos; naive means UTC).
        announce: called with each newly finished round (before its record is marked announced).
        store: the object store; ls: the Label Studio client (contacted only when a round is open).
        round_ids: only these rounds (default: every round record in the data bucket that was
            pushed to the configured project; rounds of another project sharing the bucket are
            left to that project's watcher).
        dry_run: compute and report only: no record is written and nothing is announced (rows say
            ``would_emit``).
        retrain_waiting: whether a retrain run of a round is scheduled and waiting to start (the flow asks
            Prefect); such a round is not re-announced. Default: none is.

    Returns:
        ``{"now", "rounds": [{round_id, status, progress, emitted, event_id}], "emitted": [...]}``.
    """
    rows: list[dict[str, Any]] = []
    emitted: list[str] = []
    project_id: int | None = None
    for rec in rounds.list_rounds(store, settings):
        if round_ids is not None and rec.round_id not in round_ids:
            continue
        if round_ids is None and rec.status == "open":
            title = rounds.round_project_title(store, settings, rec.round_id)
            if title is not None and title != settings.label_studio.project_title:
                continue  # another project's round (projects sharing a data bucket)
        if rec.status == "open":
            if project_id is None:
                project_id = ensure_project(settings, ls).id
            progress = round_progress(round_tasks(ls, project_id, rec.round_id, fields="progress"))
            new = rounds.decide(rec, progress, now)
            rec.counts = {**rec.counts, **progress}
            if new is not None:
                rec.status = new  # type: ignore[assignment]
            if not dry_run:
                rounds.save_round(store, settings, rec)
        attempt = 0
        if rec.status in rounds.TERMINAL and rec.completed_event_id is None:
            attempt = 1
        elif rounds.retrain_stalled(
                rec, now, 2 * settings.locks.lease_seconds,
                lambda r=rec.round_id: is_held(store, settings.s3.data_bucket, f"retrain-{r}"),
                lambda r=rec.round_id: bool(retrain_waiting and retrain_waiting(r))):
            attempt = max(rec.announcements, 1) + 1
            if attempt > rounds.REANNOUNCE_MAX + 1:
                rows.append({"round_id": rec.round_id, "status": rec.status, "progress": rec.counts,
                             "emitted": False, "event_id": rec.completed_event_id,
                             "note": f"its retrain never finished after {rec.announcements} announcements: run "
                                     f"`detloop run retrain {rec.round_id}` and read its error"})
                continue
        if attempt:
            eid = str(rounds.completed_event_id(rec.round_id, attempt))
            row = {"round_id": rec.round_id, "status": rec.status, "progress": rec.counts, "event_id": eid}
            if dry_run:
                rows.append({**row, "emitted": False, "would_emit": True})
                continue
            announce(RoundCompleted(
                round_id=rec.round_id, status=rec.status, partial=rec.status == "closed_partial",
                model_version=rec.model_version, counts={k: int(v) for k, v in rec.counts.items()}, event_id=eid,
            ))
            rec.completed_event_id = eid
            rec.announced_at = rounds.utc(now).isoformat(timespec="seconds")
            rec.announcements = attempt
            rounds.save_round(store, settings, rec)
            emitted.append(rec.round_id)
            rows.append({**row, "emitted": True, **({"reannounced": attempt} if attempt > 1 else {})})
        elif rec.status == "open":
            rows.append({"round_id": rec.round_id, "status": rec.status, "progress": rec.counts,
                         "emitted": False, "event_id": None})
    return {"now": rounds.utc(now).isoformat(timespec="seconds"), "rounds": rows, "emitted": emitted}
