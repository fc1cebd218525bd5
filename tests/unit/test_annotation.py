"""Pure parts of the annotation round trip: tasks, states, policies, validation, quality, rounds."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detloop.clients.labelstudio import (
    LabelConfigError,
    check_label_config,
    config_class_names,
    label_config_xml,
)
from detloop.contracts import FrameRef, RoundRecord, SelectedFrame
from detloop.detections import Detections
from detloop.errors import DataError
from detloop.settings import REPO_ROOT, load_settings
from tasks import annotation as an
from tasks import label_quality as lq
from tasks import ls_tasks as lt
from tasks import rounds, watch
from tests.fakes import FakeLabelStudio, FakeStore

CLASSES = ["disc", "square", "triangle"]
W, H = 200, 100


@pytest.fixture()
def cfg():  # type: ignore[no-untyped-def]
    return load_settings(REPO_ROOT / "configs" / "test.yaml", env={})


def dets(boxes: list[list[float]], cls: list[int], conf: list[float] | None = None) -> Detections:
    return Detections(xyxy=np.array(boxes, np.float32).reshape(-1, 4), confidence=np.array(conf or [1.0] * len(cls)),
                      class_id=np.array(cls))


def ls_results(d: Detections) -> list[dict[str, Any]]:
    return d.to_label_studio(W, H, CLASSES, with_score=False)


def task(tid: int, anns: list[dict[str, Any]] | None, pred: Detections | None = None, rid: str = "r1",
         arm: str = "selected") -> dict[str, Any]:
    return {
        "id": tid,
        "data": {"image": f"s3://prod/k{tid}.jpg", "s3_key": f"frames/camera=c/date=2026-01-05/100000-{tid:04d}.jpg",
                 "bucket": "prod", "round_id": rid, "arm": arm, "width": W, "height": H, "camera": "c",
                 "date": "2026-01-05"},
        "annotations": anns or [],
        "predictions": [{"result": ls_results(pred)}] if pred is not None else [],
    }


def ann(d: Detections | list[dict[str, Any]], aid: int = 1, cancelled: bool = False, when: str = "2026-01-01") -> dict:
    res = d if isinstance(d, list) else ls_results(d)
    return {"id": aid, "result": res, "was_cancelled": cancelled, "updated_at": when}


# ---- label config ---------------------------------------------------------------------------------
def test_label_config_round_trips_class_names() -> None:
    names = ["disc", "a \"quoted\" & <odd> name"]
    assert config_class_names(label_config_xml(names)) == names
    check_label_config(label_config_xml(names), names)


def test_edited_label_config_lists_the_difference() -> None:
    with pytest.raises(LabelConfigError) as err:
        check_label_config(label_config_xml(["disc", "unicorn"]), CLASSES)
    msg = str(err.value)
    assert "'unicorn'" in msg and "'square'" in msg and "'triangle'" in msg and "'disc'" not in msg


def test_label_config_without_rectangles_is_refused() -> None:
    with pytest.raises(LabelConfigError, match="RectangleLabels"):
        check_label_config("<View><Image name='image' value='$image'/></View>", CLASSES)


# ---- push ---------------------------------------------------------------------------------------
def test_build_task_carries_fields_and_confident_preannotation() -> None:
    pred = dets([[10, 10, 50, 50], [0, 0, 20, 20]], [1, 2], [0.9, 0.1])
    sf = SelectedFrame(frame=FrameRef("prod", "frames/camera=c/date=2026-01-05/x.jpg", "e", "c", "2026-01-05"),
                       width=W, height=H, arm="control", strategy="entropy", uncertainty=0.7, rank=3, reason="r",
                       predictions=pred.to_dict())
    t = lt.build_task(sf, "r9", "12", CLASSES, conf_threshold=0.25)
    assert t["data"]["image"] == "s3://prod/frames/camera=c/date=2026-01-05/x.jpg"
    assert t["data"]["round_id"] == "r9"
    # blind: nothing tells a labeller the frame's arm, rank, uncertainty or strategy
    assert not {"arm", "rank", "uncertainty", "strategy"} & set(t["data"]), sorted(t["data"])
    p = t["predictions"][0]
    # one constant version for every round (Label Studio shows only the project's version); score = confidence
    assert p["model_version"] == "detloop" and p["score"] == pytest.approx(0.9)
    assert p["result"][0]["score"] == pytest.approx(0.9)
    assert len(p["result"]) == 1 and p["result"][0]["value"]["rectanglelabels"] == ["square"]
    assert p["result"][0]["value"]["x"] == pytest.approx(5.0)
    json.dumps(t)  # import format is plain JSON


def test_batched_covers_everything_once() -> None:
    out = list(lt.batched(list(range(11)), 4))
    assert [len(b) for b in out] == [4, 4, 3] and [x for b in out for x in b] == list(range(11))


# ---- states and policies ------------------------------------------------------------------------------
def test_task_state_from_annotations_and_counters() -> None:
    assert lt.task_state(task(1, [])) == "pending"
    assert lt.task_state(task(1, [ann([], cancelled=True)])) == "skipped"
    assert lt.task_state(task(1, [ann([], cancelled=True), ann([], 2)])) == "labelled"
    assert lt.task_state({"id": 1, "total_annotations": 0, "cancelled_annotations": 1}) == "skipped"
    assert lt.task_state({"id": 1, "total_annotations": 2, "cancelled_annotations": 0}) == "labelled"
    assert lt.task_state({"id": 1, "total_annotations": 0, "cancelled_annotations": 0}) == "pending"
    counts = lt.round_progress([task(1, []), task(2, [ann([])]), task(3, [ann([], cancelled=True)])])
    assert counts == {"total": 3, "labelled": 1, "skipped": 1, "pending": 1}


def test_latest_policy_takes_most_recent_submitted() -> None:
    old, new = dets([[1, 1, 9, 9]], [0]), dets([[20, 20, 40, 40]], [1])
    t = task(1, [ann(new, 2, when="2026-01-02"), ann(old, 1, when="2026-01-01"),
                 ann(old, 3, cancelled=True, when="2026-01-03")])
    pulled = lt.convert_round_tasks([t], "r1", CLASSES, "latest")
    assert pulled.frames[0].detections.class_id.tolist() == [1]


def test_consensus_keeps_majority_boxes() -> None:
    a = dets([[10, 10, 50, 50], [60, 10, 90, 40]], [0, 1])
    b = dets([[12, 10, 52, 50]], [0])
    c = dets([[11, 11, 51, 49], [60, 10, 90, 40]], [0, 2])  # the second box: other class, no majority
    out = lq.consensus([a, b, c])
    assert out.class_id.tolist() == [0]
    np.testing.assert_allclose(out.xyxy[0], [11, 10.333, 51, 49.667], atol=1e-3)
    assert out.confidence[0] == pytest.approx(1.0)
    assert len(lq.consensus([a, dets([[150, 60, 190, 90]], [0])])) == 0  # two annotators disagree
    assert lq.consensus([a]).equals(a)


def test_clip_and_drop() -> None:
    d = dets([[-10, 10, 30, 50], [50, 50, 50, 80], [250, 10, 260, 20], [40, 40, 10, 10], [5, 5, 5.5, 20]],
             [0, 0, 1, 2, 0])
    out, clipped, dropped = lq.clip_boxes(d, W, H, min_px=1.0)
    assert (clipped, dropped) == (1, 3)
    np.testing.assert_allclose(out.xyxy, [[0, 10, 30, 50], [10, 10, 40, 40]])  # the flipped box is kept


# ---- quality --------------------------------------------------------------------------------------
def test_label_quality_categories() -> None:
    pred = dets([[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 60], [80, 0, 90, 10]], [0, 1, 0, 2])
    human = dets([[0, 0, 10, 10], [24, 20, 44, 40], [50, 50, 60, 60], [100, 50, 120, 70]], [0, 1, 2, 1])
    q = lq.label_quality(pred, human)
    # exact = accepted; IoU 0.67 same class = accepted; same box other class = moved; far box = deleted/added
    assert (q.accepted, q.moved, q.deleted, q.added) == (2, 1, 1, 1)
    assert q.hard
    low = lq.label_quality(dets([[0, 0, 10, 10]], [0]), dets([[6, 0, 16, 10]], [0]))  # IoU 0.25
    assert (low.accepted, low.moved) == (0, 1)
    assert not lq.label_quality(pred, pred).hard


boxes_st = st.lists(
    st.tuples(st.floats(0, 150), st.floats(0, 80), st.floats(2, 50), st.floats(2, 20), st.integers(0, 2)),
    max_size=8,
)


@settings(max_examples=80, deadline=None)
@given(boxes_st, boxes_st)
def test_label_quality_accounts_for_every_box(p: list, h: list) -> None:
    def mk(rows: list) -> Detections:
        return dets([[x, y, x + w, y + hh] for x, y, w, hh, _ in rows], [c for *_, c in rows])

    pred, human = mk(p), mk(h)
    q = lq.label_quality(pred, human)
    assert q.accepted + q.moved + q.deleted == len(pred)
    assert q.accepted + q.moved + q.added == len(human)
    assert min(q.accepted, q.moved, q.deleted, q.added) >= 0


# ---- conversion report ---------------------------------------------------------------------------
def test_convert_report_counts_and_negative_frames() -> None:
    pred = dets([[10, 10, 50, 50]], [0])
    tasks = [
        task(1, [ann(pred)], pred),  # accepted
        task(2, [ann(dets([[10, 10, 50, 50], [100, 20, 150, 60]], [0, 1]))], pred),  # a miss added
        task(3, [ann([])], pred),  # negative: the predicted box deleted
        task(4, [ann([], cancelled=True)], pred),  # skipped
        task(5, [], pred),  # pending
        task(6, [ann(dets([[-5, 10, 20, 50]], [2]))], None, arm="control"),  # clipped, no prediction
        task(7, [ann(pred)], pred, rid="other-round"),  # not ours
    ]
    pulled = lt.convert_round_tasks(tasks, "r1", CLASSES)
    r = pulled.report
    assert (r["tasks"], r["labelled"], r["skipped"], r["pending"], r["frames"]) == (6, 4, 1, 1, 4)
    assert r["negative_frames"] == 1 and r["boxes_clipped"] == 1 and r["hard_frames"] == 3
    assert r["quality"]["predicted"] == 3 and r["quality"]["accepted"] == 2 and r["quality"]["deleted"] == 1
    assert r["quality"]["added"] == 2 and r["by_arm"] == {"selected": 3, "control": 1}
    assert [f.task_id for f in pulled.frames if f.hard] == [2, 3, 6]
    json.dumps(r)


def test_unknown_labels_are_listed_with_tasks() -> None:
    bad = ls_results(dets([[1, 1, 9, 9]], [0]))
    bad[0]["value"]["rectanglelabels"] = ["zebra"]
    worse = ls_results(dets([[1, 1, 9, 9]], [0]))
    worse[0]["value"]["rectanglelabels"] = ["okapi"]
    with pytest.raises(lt.UnknownLabelsInRound) as err:
        lt.convert_round_tasks([task(1, [ann(bad)]), task(2, [ann(worse)]), task(3, [ann(bad)])], "r1", CLASSES)
    msg = str(err.value)
    assert "'zebra' (tasks [1, 3])" in msg and "'okapi' (tasks [2])" in msg and "\n" not in msg
    assert err.value.unknown == {"zebra": [1, 3], "okapi": [2]}


def test_unknown_labels_quarantine_the_task_and_keep_the_rest() -> None:
    bad = ls_results(dets([[1, 1, 9, 9]], [0]))
    bad[0]["value"]["rectanglelabels"] = ["zebra"]
    good = dets([[10, 10, 50, 50]], [1])
    pulled = lt.convert_round_tasks([task(1, [ann(bad)]), task(2, [ann(good)]), task(3, [ann(good, 1), ann(dets(
        [[60, 20, 90, 60]], [2]), 2, when="2026-01-02")])], "r1", CLASSES, unknown_labels="quarantine")
    assert [f.task_id for f in pulled.frames] == [2, 3]
    (q,) = pulled.report["quarantined"]
    assert q["task_id"] == 1 and q["reason"].startswith("unknown label name(s) ['zebra']; configured classes are")
    (issue,) = [i for i in pulled.report["issues"] if i["task_id"] == 3]
    assert issue["issue"] == "2 submitted annotations; policy latest kept annotation 2"
    assert pulled.frames[1].detections.class_id.tolist() == [2]  # the later one


def test_late_edits_are_found_by_fingerprint(cfg: Any) -> None:
    from tasks import late_edits

    store = FakeStore()
    tasks = [task(1, [ann(dets([[1, 1, 9, 9]], [0]))]), task(2, [ann(dets([[5, 5, 20, 20]], [1]))])]
    rounds.save_round(store, cfg, RoundRecord("r1", "2026-01-05", "2026-01-05T00:00:00+00:00", "2026-01-10T00:00:00+00:00",
                                              "trained", "1", 2, 0, project=cfg.label_studio.project_title))
    late_edits.record_pull(store, cfg, "r1", tasks)
    assert late_edits.collect_late_edits(cfg, store, lambda r: tasks).tasks == {}
    edited = [tasks[0], task(2, [ann(dets([[5, 5, 30, 30]], [2]), when="2026-01-09")])]
    store.put_bytes("prod", edited[1]["data"]["s3_key"], b"frame bytes")
    found = late_edits.collect_late_edits(cfg, store, lambda r: edited)
    assert found.tasks == {"r1": [2]} and len(found.entries) == 1 and found.entries[0].class_counts[2] == 1
    late_edits.commit_late_edits(store, cfg, found.fingerprints)
    assert late_edits.collect_late_edits(cfg, store, lambda r: edited).tasks == {}  # carried once


# ---- rounds ---------------------------------------------------------------------------------------
def ls_with(cfg: Any, states: dict[str, list[str]]) -> FakeLabelStudio:
    """A fake Label Studio whose project holds, per round, one task per state (labelled / skipped / pending)."""
    ls = FakeLabelStudio()
    project = ls.ensure_project(cfg.label_studio.project_title, cfg.classes)
    for rid, sts in states.items():
        ids = ls.import_tasks(project.id, [{"data": {"round_id": rid, "s3_key": f"{rid}-{i}"}} for i in range(len(sts))])
        for task_id, state in zip(ids, sts, strict=True):
            if state != "pending":
                ls.create_annotation(task_id, [], was_cancelled=state == "skipped")
    return ls


def test_deadline_and_decision() -> None:
    assert rounds.deadline_for("2026-01-12", 5) == datetime(2026, 1, 17, tzinfo=UTC)
    rec = RoundRecord("r", "2026-01-12", "x", "2026-01-17T00:00:00+00:00", "open", "1", 2, 0)
    t = datetime(2026, 1, 16, 12)
    assert rounds.decide(rec, {"total": 2, "pending": 1}, t) is None
    assert rounds.decide(rec, {"total": 2, "pending": 0}, t) == "completed"
    assert rounds.decide(rec, {"total": 0, "pending": 0}, t) is None
    assert rounds.decide(rec, {"total": 2, "pending": 1}, datetime(2026, 1, 17)) == "closed_partial"
    rec.status = "completed"
    assert rounds.decide(rec, {"total": 2, "pending": 1}, datetime(2026, 2, 1)) is None


def test_event_id_is_deterministic_per_round() -> None:
    assert rounds.completed_event_id("r1") == rounds.completed_event_id("r1")
    assert rounds.completed_event_id("r1") != rounds.completed_event_id("r2")
    assert isinstance(rounds.completed_event_id("r1"), uuid.UUID)


def payload(done: Any) -> dict[str, Any]:
    """What the round-completed event carries (flows.common.announce_round_completed)."""
    return {"round_id": done.round_id, "status": done.status, "partial": done.partial,
            "model_version": done.model_version, **done.counts}


def test_watch_rounds_emits_once_per_round(cfg) -> None:  # type: ignore[no-untyped-def]
    store = FakeStore()
    for rid in ("a", "b", "c"):
        rounds.open_round(store, cfg, rid, "2026-01-12", "7", 3, 1, now=datetime(2026, 1, 12))
    ls = ls_with(cfg, {"a": ["labelled"] * 3 + ["skipped"], "b": ["labelled", "pending", "pending", "pending"], "c": []})
    events: list[Any] = []
    rep = watch.watch_rounds(cfg, datetime(2026, 1, 13), events.append, store, ls)
    assert rep["emitted"] == ["a"]
    assert payload(events[0]) == {"round_id": "a", "status": "completed", "partial": False,
                                  "model_version": "7", "total": 4, "labelled": 3, "skipped": 1, "pending": 0}
    assert events[0].event_id == str(rounds.completed_event_id("a"))
    with rounds.retrain_lease(store, cfg, "a"):  # a's retrain is running
        watch.watch_rounds(cfg, datetime(2026, 1, 14), events.append, store, ls)
    assert len(events) == 1
    rounds.mark_round(store, cfg, "a", status="trained")
    # the deadline: b closes partially, c (no task found) too; a is not emitted again
    rep = watch.watch_rounds(cfg, datetime(2026, 1, 17), events.append, store, ls)
    assert sorted(rep["emitted"]) == ["b", "c"] and len(events) == 3
    assert rounds.load_round(store, cfg, "b").status == "closed_partial"
    assert {e.round_id: e.counts["pending"] for e in events[1:]} == {"b": 3, "c": 0}


def test_a_round_whose_retrain_died_is_announced_again_a_bounded_number_of_times(cfg) -> None:  # type: ignore[no-untyped-def]
    """A runner killed mid-retrain leaves the round completed, untrained, with no live lease: after
    2 x locks.lease_seconds the watch sends its completion again (a new deterministic id per attempt), unless a
    retrain holds the lease or waits to start; after REANNOUNCE_MAX re-sends it says what to do instead."""
    store = FakeStore()
    rounds.open_round(store, cfg, "a", "2026-01-12", "7", 1, 0, now=datetime(2026, 1, 12))
    ls = ls_with(cfg, {"a": ["labelled"]})
    events: list[Any] = []
    t0 = datetime(2026, 1, 13, 12, 0, 0)
    watch.watch_rounds(cfg, t0, events.append, store, ls)
    grace = 2 * cfg.locks.lease_seconds
    assert rounds.load_round(store, cfg, "a").announcements == 1
    soon = t0 + timedelta(seconds=grace - 1)
    assert watch.watch_rounds(cfg, soon, events.append, store, ls)["emitted"] == []  # within the grace
    later = t0 + timedelta(seconds=grace + 1)
    with rounds.retrain_lease(store, cfg, "a"):  # a live retrain renews its lease
        assert watch.watch_rounds(cfg, later, events.append, store, ls)["emitted"] == []
    assert watch.watch_rounds(cfg, later, events.append, store, ls, retrain_waiting=lambda r: r == "a")["emitted"] == []
    rep = watch.watch_rounds(cfg, later, events.append, store, ls, retrain_waiting=lambda r: False)
    assert rep["emitted"] == ["a"] and rep["rounds"][0]["reannounced"] == 2
    assert [e.event_id for e in events] == [str(rounds.completed_event_id("a")), str(rounds.completed_event_id("a", 2))]
    assert events[0].event_id != events[1].event_id and events[1].round_id == "a"
    rec = rounds.load_round(store, cfg, "a")
    assert rec.announcements == 2 and rec.announced_at == later.replace(tzinfo=UTC).isoformat(timespec="seconds")
    assert watch.watch_rounds(cfg, later, events.append, store, ls)["emitted"] == []  # the grace starts again
    t = later
    for _ in range(rounds.REANNOUNCE_MAX):
        t += timedelta(seconds=grace + 1)
        watch.watch_rounds(cfg, t, events.append, store, ls)
    assert len(events) == 1 + rounds.REANNOUNCE_MAX  # the first announcement and REANNOUNCE_MAX re-sends
    gave_up = watch.watch_rounds(cfg, t + timedelta(days=1), events.append, store, ls)
    assert gave_up["emitted"] == [] and "detloop run retrain a" in gave_up["rounds"][0]["note"]
    rounds.mark_round(store, cfg, "a", status="trained")
    assert watch.watch_rounds(cfg, t + timedelta(days=2), events.append, store, ls)["rounds"] == []


def test_emit_failure_leaves_round_to_retry_with_same_id(cfg) -> None:  # type: ignore[no-untyped-def]
    store = FakeStore()
    rounds.open_round(store, cfg, "a", "2026-01-12", "7", 1, 0)
    ls = ls_with(cfg, {"a": ["labelled"]})

    def boom(done: Any) -> None:
        raise ConnectionError("prefect down")

    with pytest.raises(ConnectionError):
        watch.watch_rounds(cfg, datetime(2026, 1, 13), boom, store, ls)
    rec = rounds.load_round(store, cfg, "a")
    assert rec.status == "completed" and rec.completed_event_id is None
    events: list[Any] = []
    watch.watch_rounds(cfg, datetime(2026, 1, 13), events.append, store, ls)
    assert [e.event_id for e in events] == [str(rounds.completed_event_id("a"))]


def test_open_round_is_idempotent_and_mark_round_validates(cfg) -> None:  # type: ignore[no-untyped-def]
    store = FakeStore()
    a = rounds.open_round(store, cfg, "a", "2026-01-12", "7", 3, 1, now=datetime(2026, 1, 12, 8))
    b = rounds.open_round(store, cfg, "a", "2026-01-12", "8", 9, 9, now=datetime(2026, 1, 13))
    assert a == b
    assert rounds.mark_round(store, cfg, "a", status="trained", dataset_version="abc").status == "trained"
    with pytest.raises(Exception, match="cannot set"):
        rounds.mark_round(store, cfg, "a", as_of="2020-01-01")
    with pytest.raises(Exception, match="status must be"):
        rounds.mark_round(store, cfg, "a", status="done")
    with pytest.raises(Exception, match="not found"):
        rounds.mark_round(store, cfg, "nope", status="trained")


def test_watch_rounds_dry_run_writes_and_emits_nothing(cfg) -> None:  # type: ignore[no-untyped-def]
    store = FakeStore()
    rounds.open_round(store, cfg, "a", "2026-01-12", "7", 1, 0)
    before = dict(store.objects)
    events: list[Any] = []
    rep = watch.watch_rounds(cfg, datetime(2026, 1, 13), events.append, store, ls_with(cfg, {"a": ["labelled"]}),
                             dry_run=True)
    assert events == [] and store.objects == before
    assert rep["rounds"][0]["would_emit"] is True and rep["rounds"][0]["status"] == "completed"


class TimeoutAfterCommitLS(FakeLabelStudio):
    """Imports commit, but the first answer is lost (a timeout): the classic duplicate-maker."""

    imports = 0

    def import_tasks(self, project_id: int, tasks: Any) -> list[int]:
        from detloop.errors import ServiceUnavailable

        self.imports += 1
        if self.imports == 1:  # the first call commits 2 tasks, then its answer is lost
            super().import_tasks(project_id, tasks[:2])
            raise ServiceUnavailable("Label Studio at http://x is not reachable: ReadTimeout")
        return super().import_tasks(project_id, tasks)


def test_push_retried_after_lost_answer_creates_no_duplicate(cfg) -> None:  # type: ignore[no-untyped-def]
    """The flow retries a push that failed on an unavailable Label Studio: the retry imports only what is missing."""
    from detloop.errors import ServiceUnavailable

    ls, store = TimeoutAfterCommitLS(), FakeStore()
    frames = [SelectedFrame(FrameRef("prod", f"frames/camera=c/date=2026-01-05/10000{i}-a.jpg", "e", "c",
                                     "2026-01-05"), W, H, "selected", "entropy", 0.5, i, "why") for i in range(5)]
    with pytest.raises(ServiceUnavailable):
        an.push_round(cfg, frames, "r", "7", "2026-01-12", ls, store)
    assert rounds.load_round(store, cfg, "r") is None  # no round record before every task went in
    rep = an.push_round(cfg, frames, "r", "7", "2026-01-12", ls, store)  # what the flow's retry does
    assert sorted(t["data"]["s3_key"] for t in ls.tasks.values()) == [f.frame.key for f in frames]  # each once
    assert rep.already_present == 2 and rep.imported == 3 and ls.imports == 2
    assert sorted(rounds.load_task_ids(store, cfg, "r")) == sorted(f.frame.key for f in frames)
    assert rounds.load_round(store, cfg, "r").status == "open"


def test_watch_rounds_leaves_other_projects_rounds_alone(cfg) -> None:  # type: ignore[no-untyped-def]
    store = FakeStore()
    other = cfg.model_copy(deep=True)
    other.label_studio.project_title = "someone-else"
    for s_, rid in ((cfg, "mine"), (other, "theirs")):
        rounds.open_round(store, s_, rid, "2026-01-12", "7", 1, 0)
        rounds.save_task_ids(store, s_, rid, {"k": 1})
    events: list[Any] = []
    watch.watch_rounds(cfg, datetime(2026, 2, 1), events.append, store, ls_with(cfg, {"mine": ["labelled"], "theirs": []}))
    assert [e.round_id for e in events] == ["mine"]
    assert rounds.load_round(store, cfg, "theirs").status == "open"


def test_push_is_blind_shuffled_and_keeps_the_arms_in_the_round_record(cfg) -> None:  # type: ignore[no-untyped-def]
    """Control frames are not last, tasks carry no arm, the pull reads each arm from detloop's record."""
    ls, store = FakeLabelStudio(), FakeStore()
    frames = [SelectedFrame(FrameRef("prod", f"frames/camera=c/date=2026-01-05/1{i:05d}-a.jpg", "e", "c", "2026-01-05"),
                            W, H, "control" if i >= 14 else "selected", "entropy", 10.0 - i / 2, i, "why",
                            predictions=dets([[10, 10, 50, 50]], [1], [0.8]).to_dict()) for i in range(20)]
    rep = an.push_round(cfg, frames, "r-blind", "7", "2026-01-12", ls, store)
    imported = [t["data"]["s3_key"] for _, t in sorted(ls.tasks.items())]
    assert sorted(imported) == [f.frame.key for f in frames]
    assert imported != [f.frame.key for f in frames]  # shuffled: rank order and the control tail are gone
    assert imported[-6:] != [f.frame.key for f in frames[-6:]]
    again_ls, again_store = FakeLabelStudio(), FakeStore()  # the order is fixed by the round id
    an.push_round(cfg, frames, "r-blind", "7", "2026-01-12", again_ls, again_store)
    assert [t["data"]["s3_key"] for _, t in sorted(again_ls.tasks.items())] == imported
    assert all(not {"arm", "rank", "uncertainty", "strategy"} & set(t["data"]) for t in ls.tasks.values())
    project = ls.projects[cfg.label_studio.project_title]
    assert project.model_version == "detloop"  # set after the import (the fake refuses it before, like the server)
    assert [v["title"] for v in project.views.values()] == ["r-blind"] and rep.view_url.endswith("?tab=1")
    assert rounds.round_view_url(store, cfg, "r-blind") == rep.view_url
    kept = rounds.load_round_frames(store, cfg, "r-blind")
    assert kept is not None and kept[frames[15].frame.key]["arm"] == "control" and kept[frames[3].frame.key]["rank"] == 3
    for tid in list(ls.tasks):  # label everything, then pull: arms come from the record
        ls.create_annotation(tid, dets([[10, 10, 50, 50]], [1]).to_label_studio(W, H, CLASSES, with_score=False))
    pulled = an.pull_round(cfg, "r-blind", ls, store, copy=False)
    assert pulled.report["by_arm"] == {"selected": 14, "control": 6}
    assert {f.key: f.arm for f in pulled.frames}[frames[19].frame.key] == "control"


def test_convert_reads_arms_from_the_record_and_old_tasks_still_work() -> None:
    old = task(1, [ann(dets([[0, 0, 10, 10]], [0]))], arm="control")  # pushed before tasks were blind
    blind = task(2, [ann(dets([[0, 0, 10, 10]], [0]))])
    blind["data"].pop("arm")
    blind["data"]["s3_key"] = "k2"
    r = lt.convert_round_tasks([old, blind], "r1", CLASSES, arms={"k2": "control"})
    assert r.report["by_arm"] == {"control": 2}
    assert lt.convert_round_tasks([old, blind], "r1", CLASSES).report["by_arm"] == {"control": 1, "selected": 1}


def test_build_task_keeps_the_unshown_candidates_and_the_pull_records_the_outcome_ledger(cfg) -> None:  # type: ignore[no-untyped-def]
    pred = dets([[10, 10, 50, 50], [100, 20, 150, 60], [0, 80, 10, 90]], [0, 1, 2], [0.9, 0.1, 0.07])
    sf = SelectedFrame(frame=FrameRef("prod", "frames/camera=c/date=2026-01-05/x.jpg", "e", "c", "2026-01-05"),
                       width=W, height=H, arm="selected", strategy="entropy", uncertainty=0.7, rank=1, reason="r",
                       predictions=pred.to_dict())
    t = lt.build_task(sf, "r1", "3", CLASSES, conf_threshold=0.25)
    assert t["data"]["cand"]["confidence"] == pytest.approx([0.1, 0.07]) and len(t["data"]["pre"]["xyxy"]) == 1
    assert len(t["predictions"][0]["result"]) == 1  # candidates are never shown
    # the labeller keeps the shown box, draws the object behind the 0.1 candidate and one nothing hinted at
    final = dets([[10, 10, 50, 50], [100, 20, 150, 60], [160, 70, 190, 95]], [0, 1, 1])
    t.update(id=1, annotations=[ann(final)])
    old = task(2, [ann(dets([[12, 10, 50, 50]], [0]))], dets([[10, 10, 50, 50]], [0], [0.9]))  # no data.cand
    old["data"]["pre"] = {"xyxy": [[10, 10, 50, 50]], "confidence": [0.45], "class_id": [0]}
    r = lt.convert_round_tasks([t, old], "r1", CLASSES, cost=cfg.labelling_cost).report["label_outcomes"]
    assert r["shown"][9] == [1, 0, 0] and r["shown"][4] == [1, 0, 0]
    assert r["candidates"][1] == [1, 0] and r["candidates"][0] == [0, 1]
    assert (r["frames"], r["frames_with_candidates"], r["draws_unexplained"]) == (2, 1, 1)
    assert "label_outcomes" not in lt.convert_round_tasks([t], "r1", CLASSES).report


def test_outcome_ledger_sums_the_recent_pulled_rounds_of_this_project(cfg) -> None:  # type: ignore[no-untyped-def]
    from detloop.label_cost import OutcomeTally

    store = FakeStore()
    for i, rid in enumerate(["a", "b", "c", "d"]):
        rounds.open_round(store, cfg, rid, f"2026-01-{5 + 7 * i:02d}", "7", 3, 1, now=datetime(2026, 1, 5 + 7 * i))
        if rid != "d":
            rounds.mark_round(store, cfg, rid, status="trained")
        tally = OutcomeTally(frames=10 * (i + 1))
        tally.shown[9] = [i + 1, 0, 0]
        report = {"label_outcomes": tally.to_dict()} if rid != "b" else {}  # b: pulled before the ledger
        store.put_json(cfg.s3.data_bucket, rounds.labels_report_key(rid), report)
    total, used = rounds.outcome_ledger(store, cfg, last=5)
    assert used == ["c", "a"] and total.frames == 40 and total.shown[9].tolist() == [4, 0, 0]  # d is still open
    assert rounds.outcome_ledger(store, cfg, last=1)[1] == ["c"]
    store.put_json(cfg.s3.data_bucket, rounds.labels_report_key("c"), {"label_outcomes": {"bins": 5, "frames": 1}})
    with pytest.raises(DataError, match=r"rounds/c/labels_report.json: unreadable label_outcomes"):
        rounds.outcome_ledger(store, cfg, last=1)
    assert rounds.outcome_ledger(store, cfg.model_copy(update={"label_studio": cfg.label_studio.model_copy(
        update={"project_title": "another"})}), last=5)[1] == []
