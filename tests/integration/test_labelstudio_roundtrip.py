"""Label Studio round trips against the REAL test stack (Label Studio + SeaweedFS S3).

Each module run uses its own buckets and its own Label Studio project (uuid suffix), so parallel
runs and other engineers' tests never see each other's tasks or rounds.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import cv2
import numpy as np
import pytest

from detloop.clients.labelstudio import LabelConfigError, LabelStudioClient, data_filter, label_config_xml
from detloop.contracts import FrameRef, SelectedFrame
from detloop.detections import Detections
from detloop.errors import ServiceError, ServiceRejected, ServiceUnavailable
from detloop.sim.annotator import AnnotatorProfile, annotate_pending, truth_key
from tasks import annotation, rounds, watch
from tasks.ls_tasks import UnknownLabelsInRound, round_progress
from tasks.round_version import build_round_version

W, H = 320, 240
AS_OF = "2026-01-12"
OPENED = datetime(2026, 1, 12, 9, 0)  # when the round is opened (the deadline counts from here)


class Recorder:
    """Stands in for the flow's announcer: records every event it would emit (as the payload it carries)."""

    def __init__(self) -> None:
        self.events: list[dict] = []

    def __call__(self, done):  # type: ignore[no-untyped-def]
        self.events.append({"id": done.event_id, "payload": {
            "round_id": done.round_id, "status": done.status, "partial": done.partial,
            "model_version": done.model_version, **done.counts}})


class CrashingLS:
    """The real client, except that import number ``after + 1`` dies (a crash half-way)."""

    def __init__(self, ls: LabelStudioClient, after: int) -> None:
        self._ls, self._left = ls, after

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._ls, name)

    def import_tasks(self, project_id: int, tasks: list) -> list[int]:
        if self._left == 0:
            raise ServiceUnavailable("simulated crash during import")
        self._left -= 1
        return self._ls.import_tasks(project_id, tasks)


def _jpeg(rng: np.random.Generator, boxes: np.ndarray) -> bytes:
    img = rng.integers(0, 60, (H, W, 3), dtype=np.uint8)
    for x1, y1, x2, y2 in boxes.astype(int):
        cv2.rectangle(img, (x1, y1), (x2, y2), (200, 200, 200), -1)
    ok, buf = cv2.imencode(".jpg", img)
    if not ok:
        raise RuntimeError("jpeg encoding failed")
    return buf.tobytes()


@pytest.fixture(scope="module")
def env(stack_settings):  # type: ignore[no-untyped-def]
    """Own buckets + project; 12 frames with oracle truth and predictions (10 selected, 2 control)."""
    from detloop.clients.s3 import S3Store

    sfx = uuid.uuid4().hex[:8]
    s = stack_settings.model_copy(deep=True)
    # the stack's own buckets (SeaweedFS gives each new bucket its own volumes and runs out of them
    # after a handful), with keys, round ids and the project unique to this run
    s.label_studio.project_title = f"detloop-it-{sfx}"
    s.label_studio.import_batch_size = 5  # several batches with few frames
    s.label_studio.unknown_labels = "fail"  # the all-or-nothing refusal (quarantine: test_bad_input.py)
    store = S3Store(s)
    rng = np.random.default_rng(7)
    frames, truths, bodies = [], {}, {}
    for i in range(12):
        n = i % 3 + 1 if i != 11 else 0  # frame 11: no object (a negative)
        x1 = rng.uniform(5, 200, n)
        y1 = rng.uniform(5, 150, n)
        boxes = np.stack([x1, y1, x1 + rng.uniform(30, 80, n), y1 + rng.uniform(30, 70, n)], 1) if n else np.zeros((0, 4))
        cls = rng.integers(0, len(s.classes), n)
        key = f"frames/camera=it{sfx}c{i % 2}/date=2026-01-0{5 + i % 3}/{10 + i:02d}0000-{i:04d}.jpg"
        body = _jpeg(rng, boxes)
        etag = store.put_bytes(s.s3.production_bucket, key, body)
        store.put_json(s.s3.oracle_bucket, truth_key(key), {
            "width": W, "height": H,  # the world's truth format (detloop.world.render.truth_to_json)
            "boxes": [{"xyxy": b, "class": s.classes[c]} for b, c in zip(boxes.tolist(), cls, strict=True)]})
        truth = Detections(xyxy=boxes, confidence=np.ones(n), class_id=cls)
        # the model's view: frames 0-3 exact (confident), 4-5 miss a box, 6-7 shifted box, others exact
        pred = truth
        if i in (4, 5) and n:
            pred = truth[np.arange(n) > 0]
        if i in (6, 7) and n:
            xy = truth.xyxy.copy()
            dx = 0.6 * (xy[0, 2] - xy[0, 0])  # IoU 0.25 with the truth: a moved box
            xy[0] += np.array([dx, 0, dx, 0], np.float32)
            pred = Detections(xyxy=xy, confidence=np.ones(n), class_id=truth.class_id)
        pred = Detections(xyxy=pred.xyxy, confidence=np.full(len(pred), 0.9), class_id=pred.class_id)
        frames.append(SelectedFrame(
            frame=FrameRef(s.s3.production_bucket, key, etag, f"it{sfx}c{i % 2}", f"2026-01-0{5 + i % 3}", len(body)),
            width=W, height=H, arm="control" if i >= 10 else "selected", strategy="entropy",
            uncertainty=round(1.0 - i / 20, 3), rank=i, reason="test", predictions=pred.to_dict()))
        truths[key], bodies[key] = truth, body
    ls = LabelStudioClient(s)
    yield {"sfx": sfx, "s": s, "store": store, "ls": ls, "frames": frames, "truths": truths, "bodies": bodies}
    p = ls.find_project(s.label_studio.project_title)
    if p is not None:
        ls.delete_project(p.id)
    for key in truths:
        store.delete(s.s3.production_bucket, key)
        store.delete(s.s3.oracle_bucket, truth_key(key))
    for o in list(store.list(s.s3.data_bucket, rounds.ROUND_PREFIX)):
        if sfx in o.key:
            store.delete(s.s3.data_bucket, o.key)


def test_push_is_idempotent_and_crash_safe(env):  # type: ignore[no-untyped-def]
    s, ls, frames = env["s"], env["ls"], env["frames"]
    rid = "r-push-" + env["sfx"]
    # a crash half-way: the second import batch fails after the first went in
    with pytest.raises(ServiceError, match="crash"):
        annotation.push_round(s, frames, rid, "3", AS_OF, ls=CrashingLS(ls, after=1), store=env["store"])
    assert rounds.load_round(env["store"], s, rid) is None  # the record is written only at the end
    full = annotation.push_round(s, frames, rid, "3", AS_OF, ls=ls, store=env["store"], now=OPENED)
    assert (full.imported, full.already_present, full.batches) == (7, 5, 2)
    again = annotation.push_round(s, frames, rid, "3", AS_OF, ls=ls, store=env["store"])
    assert (again.imported, again.already_present) == (0, 12)
    tasks = annotation.round_tasks(ls, full.project_id, rid)
    assert len(tasks) == 12
    tasks = list(ls.iter_tasks(full.project_id, [data_filter("round_id", rid)], fields="all"))  # with predictions
    keys = [t["data"]["s3_key"] for t in tasks]
    assert sorted(keys) == sorted(f.frame.key for f in frames)
    t0 = next(t for t in tasks if t["data"]["s3_key"] == frames[0].frame.key)
    assert t0["data"]["image"] == frames[0].frame.uri
    assert t0["data"]["round_id"] == rid and "arm" not in t0["data"] and "uncertainty" not in t0["data"]
    assert t0["predictions"][0]["model_version"] == "detloop"
    assert t0["predictions"][0]["score"] == pytest.approx(0.9)  # the boxes' confidence, not the frame's uncertainty
    assert rounds.load_round_frames(env["store"], s, rid)[frames[11].frame.key]["arm"] == "control"
    rec = rounds.load_round(env["store"], s, rid)
    assert rec is not None and rec.status == "open" and (rec.n_selected, rec.n_control) == (10, 2)
    assert rec.deadline.startswith("2026-01-17")
    # the project is reused by title on the next run
    assert ls.ensure_project(s.label_studio.project_title, s.classes).id == full.project_id


@pytest.mark.parametrize("presign", [True, False])
def test_image_reaches_the_browser_from_s3(env, presign):  # type: ignore[no-untyped-def]
    s, ls, frames = env["s"], env["ls"], env["frames"]
    s2 = s.model_copy(deep=True)
    s2.label_studio.presign = presign
    rid = "r-image-" + env["sfx"]
    rep = annotation.push_round(s2, frames[:1], rid, "3", AS_OF, ls, env["store"])
    tid = annotation.round_tasks(ls, rep.project_id, rid)[0]["id"]
    ls.ensure_s3_storage(rep.project_id, s.s3.production_bucket, presign, 5)
    status, body, redirect_host = ls.fetch_as_browser(int(tid), frames[0].frame.uri)
    assert status == 200
    assert body == env["bodies"][frames[0].frame.key]
    if presign:
        assert redirect_host == "127.0.0.1"  # the browser is sent to the S3 endpoint
    else:
        assert redirect_host is None  # Label Studio streamed the bytes itself


def test_round_trip_with_simulated_annotator(env):  # type: ignore[no-untyped-def]
    s, ls, store, frames = env["s"], env["ls"], env["store"], env["frames"]
    rid = "r-trip-" + env["sfx"]
    annotation.push_round(s, frames, rid, "5", AS_OF, ls, store)
    emit = Recorder()
    t0 = datetime(2026, 1, 13, tzinfo=UTC)
    report = watch.watch_rounds(s, t0, emit, store, ls, round_ids=[rid])
    assert emit.events == []
    row = next(r for r in report["rounds"] if r["round_id"] == rid)
    assert row["progress"]["pending"] == 12

    # a perfect annotator who skips some tasks, in two sittings
    prof = AnnotatorProfile(p_skip=0.2, seed=3, throughput=5)
    first = annotate_pending(s, prof, round_id=rid, ls=ls, store=store)
    assert first["seen"] == 5
    watch.watch_rounds(s, t0, emit, store, ls, round_ids=[rid])
    assert [e for e in emit.events if e["payload"]["round_id"] == rid] == []
    rest = annotate_pending(s, AnnotatorProfile(p_skip=0.2, seed=3), round_id=rid, ls=ls, store=store)
    assert rest["seen"] == 7
    skipped = first["skipped"] + rest["skipped"]
    # the cost model saw the pushed predictions (most are exact: verified, not drawn again)
    c = s.labelling_cost
    annotated, boxes = first["annotated"] + rest["annotated"], first["boxes"] + rest["boxes"]
    paid = first["seconds"] + rest["seconds"]
    drawn_all = annotated * c.frame_seconds + boxes * c.draw_seconds  # what ids-only predictions would give
    assert annotated * c.frame_seconds < paid <= drawn_all - 3 * (c.draw_seconds - c.verify_seconds)

    watch.watch_rounds(s, t0, emit, store, ls, round_ids=[rid])
    with rounds.retrain_lease(store, s, rid):  # its retrain is running (the lease in the real store)
        watch.watch_rounds(s, t0 + timedelta(days=30), emit, store, ls, round_ids=[rid])  # a later run: no second event
    mine = [e for e in emit.events if e["payload"]["round_id"] == rid]
    assert len(mine) == 1
    ev = mine[0]
    assert ev["id"] == str(rounds.completed_event_id(rid))
    assert ev["payload"]["status"] == "completed"
    assert (ev["payload"]["labelled"], ev["payload"]["skipped"], ev["payload"]["pending"]) == (12 - skipped, skipped, 0)
    rec = rounds.load_round(store, s, rid)
    assert rec.status == "completed" and rec.completed_event_id == str(ev["id"])
    # no retrain holds the lease and the round is still untrained a day later: its retrain died, it is sent again
    watch.watch_rounds(s, t0 + timedelta(days=31), emit, store, ls, round_ids=[rid])
    again_sent = [e for e in emit.events if e["payload"]["round_id"] == rid]
    assert [e["id"] for e in again_sent] == [str(ev["id"]), str(rounds.completed_event_id(rid, 2))]
    assert rounds.load_round(store, s, rid).announcements == 2

    pulled = annotation.pull_round(s, rid, ls, store)
    assert pulled.report["frames"] == 12 - skipped == len(pulled.frames)
    assert pulled.report["skipped"] == skipped
    # the outcome ledger: every labelled box is a kept pre-annotation, a found candidate or an unhinted draw
    led = pulled.report["label_outcomes"]
    assert led["frames"] == led["frames_with_candidates"] == len(pulled.frames)  # the tasks carried their candidates
    shown, cand = np.array(led["shown"]), np.array(led["candidates"])
    assert shown.sum() == pulled.report["quality"]["predicted"]
    assert shown[:, :2].sum() + cand[:, 0].sum() + led["draws_unexplained"] == pulled.report["boxes"]
    assert rid in rounds.outcome_ledger(store, s, last=100)[1]  # read back from the real store
    for f in pulled.frames:
        truth = env["truths"][f.key]
        assert len(f.detections) == len(truth)
        np.testing.assert_allclose(np.sort(f.detections.xyxy, 0), np.sort(truth.xyxy, 0), atol=0.05)
        i = int(f.key.rsplit("-", 1)[1][:4])
        expect_hard = i in (4, 5, 6, 7) and len(truth) > 0
        assert f.hard == expect_hard, (f.key, f.quality)
        if i in (4, 5) and len(truth):
            assert f.quality.added == 1 and f.quality.deleted == 0
        if i in (6, 7) and len(truth):
            assert f.quality.moved == 1
        # retention: the frame is in content-addressed storage, byte for byte
        assert store.get_bytes(s.s3.data_bucket, f.blob_key) == env["bodies"][f.key]
    if any(int(f.key.rsplit("-", 1)[1][:4]) == 11 for f in pulled.frames):
        assert pulled.report["negative_frames"] == 1

    # the dataset version: id stable for the same content, control arm never in train
    v1, m1, r1 = build_round_version(store, s, rid, pulled.entries, parent_id=None, golden_id=None)
    again = annotation.pull_round(s, rid, ls, store)
    v2, _, _ = build_round_version(store, s, rid, again.entries, parent_id=None, golden_id=None)
    assert v1 == v2
    assert r1["new_entries"] == len(pulled.frames)
    control = {f.sha256 for f in pulled.frames if f.arm == "control"}
    for e in m1.entries:
        assert (e.split == "control") == (e.frame_sha in control)
        assert e.source == f"round:{rid}"
    assert rounds.load_round(store, s, rid).dataset_version == v1
    rounds.mark_round(store, s, rid, status="trained")
    assert rounds.load_round(store, s, rid).status == "trained"


def test_deadline_closes_a_partial_round_once(env):  # type: ignore[no-untyped-def]
    s, ls, store, frames = env["s"], env["ls"], env["store"], env["frames"]
    rid = "r-late-" + env["sfx"]
    annotation.push_round(s, frames[:4], rid, "5", AS_OF, ls, store, now=OPENED)
    annotate_pending(s, AnnotatorProfile(throughput=1), round_id=rid, ls=ls, store=store)
    emit = Recorder()
    watch.watch_rounds(s, datetime(2026, 1, 16, 23, 59), emit, store, ls, round_ids=[rid])
    assert [e for e in emit.events if e["payload"]["round_id"] == rid] == []
    watch.watch_rounds(s, datetime(2026, 1, 17, 0, 0), emit, store, ls, round_ids=[rid])
    with rounds.retrain_lease(store, s, rid):  # its retrain is running: a later watch sends nothing more
        watch.watch_rounds(s, datetime(2026, 1, 18), emit, store, ls, round_ids=[rid])
    mine = [e for e in emit.events if e["payload"]["round_id"] == rid]
    assert len(mine) == 1
    assert mine[0]["payload"]["partial"] is True
    assert (mine[0]["payload"]["labelled"], mine[0]["payload"]["pending"]) == (1, 3)
    assert rounds.load_round(store, s, rid).status == "closed_partial"


def _rect(x: float, y: float, w: float, h: float, label: str) -> dict:
    return {"from_name": "label", "to_name": "image", "type": "rectanglelabels", "original_width": W,
            "original_height": H, "image_rotation": 0,
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": [label]}}


def test_bad_annotations_are_reported(env):  # type: ignore[no-untyped-def]
    s, ls, store = env["s"], env["ls"], env["store"]
    project = ls.ensure_project(s.label_studio.project_title, s.classes)
    c0, c1 = s.classes[0], s.classes[1]

    def task(rid: str, i: int, anns: list[dict]) -> dict:
        key = f"frames/camera=bad{env['sfx']}/date=2026-01-05/090000-{i:04d}.jpg"
        return {"data": {"image": f"s3://{s.s3.production_bucket}/{key}", "s3_key": key, "round_id": rid,
                         "arm": "selected", "width": W, "height": H, "camera": "bad", "date": "2026-01-05",
                         "bucket": s.s3.production_bucket},
                "annotations": anns}

    rid = "r-bad-" + env["sfx"]
    ls.import_tasks(project.id, [
        task(rid, 0, [{"result": [_rect(90, 90, 20, 20, c0), _rect(10, 10, 0, 5, c0)]}]),  # clipped + zero-area
        task(rid, 1, [{"result": []}]),  # submitted with no box: a negative frame
        task(rid, 2, [{"result": [_rect(10, 10, 5, 5, c0)], "was_cancelled": True}]),  # skipped
        task(rid, 3, [{"result": [_rect(10, 10, 10, 10, c0)]}, {"result": [_rect(50, 50, 10, 10, c1)]}]),  # two
        task(rid, 4, [{"result": [_rect(120, 10, 5, 5, c1)]}]),  # entirely outside the frame
        task(rid, 5, []),  # pending
    ])
    pulled = annotation.pull_round(s, rid, ls=ls, store=store, copy=False)
    r = pulled.report
    assert (r["labelled"], r["skipped"], r["pending"], r["frames"]) == (4, 1, 1, 4)
    assert r["boxes_clipped"] == 1 and r["boxes_dropped"] == 2
    assert r["negative_frames"] == 2  # task 1, and task 4 after its only box was dropped
    assert r["multi_annotated"] == 1
    by_key = {f.key[-8:-4]: f for f in pulled.frames}
    np.testing.assert_allclose(by_key["0000"].detections.xyxy, [[288, 216, 320, 240]], atol=1e-3)
    # policy "latest": the second (newer) annotation of task 3
    assert by_key["0003"].detections.class_id.tolist() == [1]
    stored = store.get_json(s.s3.data_bucket, rounds.round_prefix(rid) + "labels_report.json")
    assert stored["boxes_dropped"] == 2
    # consensus of two disagreeing annotators keeps nothing
    cons = annotation.pull_round(s, rid, ls=ls, store=store, copy=False, policy="consensus")
    assert len({f.key[-8:-4]: f for f in cons.frames}["0003"].detections) == 0

    rid2 = "r-unknown-" + env["sfx"]
    ls.import_tasks(project.id, [task(rid2, 7, [{"result": [_rect(10, 10, 10, 10, "zebra")]}])])
    # the server accepts a label outside the config in an import; the pull refuses it, naming it
    with pytest.raises(UnknownLabelsInRound, match="zebra"):
        annotation.pull_round(s, rid2, ls=ls, store=store, copy=False)


def test_hand_edited_label_config_is_refused(env):  # type: ignore[no-untyped-def]
    s, ls = env["s"], env["ls"]
    title = f"{s.label_studio.project_title}-edited"
    p = ls.ensure_project(title, s.classes)
    try:
        ls.update_label_config(p.id, label_config_xml([*s.classes[:-1], "unicorn"]))
        with pytest.raises(LabelConfigError) as err:
            ls.ensure_project(title, s.classes)
        msg = str(err.value)
        assert "unicorn" in msg and s.classes[-1] in msg and "\n" not in msg
    finally:
        ls.delete_project(p.id)


def test_wrong_token_and_server_down_are_one_line(env):  # type: ignore[no-untyped-def]
    from pydantic import SecretStr

    s = env["s"].model_copy(deep=True)
    s.label_studio.api_token = SecretStr("0" * 40)
    with pytest.raises(ServiceRejected) as err:
        LabelStudioClient(s).whoami()
    assert "token" in str(err.value) and "0" * 40 not in str(err.value) and "\n" not in str(err.value)

    down = env["s"].model_copy(deep=True)
    down.label_studio.url = "http://127.0.0.1:9"  # discard port: nothing listens
    with pytest.raises(ServiceUnavailable, match=r"http://127\.0\.0\.1:9 is not reachable"):
        annotation.push_round(down, env["frames"][:2], "r-down-" + env["sfx"], "1", AS_OF, LabelStudioClient(down),
                              env["store"])
    assert rounds.load_round(env["store"], env["s"], "r-down-" + env["sfx"]) is None  # nothing half-written


def test_a_4xx_from_label_studio_is_rejected_once_and_never_retried(env):  # type: ignore[no-untyped-def]
    """Through the flows' one retry layer (a Prefect task with the loop's retry policy, on the real server)."""
    from prefect import flow, task

    from flows.steps import NET

    s = env["s"]
    ls = LabelStudioClient(s)
    project = annotation.ensure_project(s, ls)
    sent: list[str] = []
    ls.sdk._client_wrapper.httpx_client.httpx_client.event_hooks["request"].append(
        lambda request: sent.append(request.url.path))

    @task(**{**NET, "retry_delay_seconds": 0})
    def bad_import() -> list[int]:
        return ls.import_tasks(project.id, [{"data": "not an object"}])  # the server answers 400

    @flow
    def one_import() -> list[int]:
        return bad_import()

    with pytest.raises(ServiceRejected) as err:
        one_import()
    assert [p for p in sent if p.endswith("/import")] == [f"/api/projects/{project.id}/import"]  # sent once
    msg = str(err.value)
    assert err.value.status == 400 and s.label_studio.url in msg and "\n" not in msg


def test_cli_simulate_show_pull(env):  # type: ignore[no-untyped-def]
    import json as _json

    from typer.testing import CliRunner

    from cli.main import app
    from detloop.settings import REPO_ROOT

    s, ls, store, frames = env["s"], env["ls"], env["store"], env["frames"]
    rid = "r-cli-" + env["sfx"]
    annotation.push_round(s, frames[:3], rid, "5", AS_OF, ls, store)
    runner = CliRunner()
    cli_env = {"DETLOOP_CONFIG": str(REPO_ROOT / "configs" / "test.yaml"), "DETLOOP_DATA_DIR": str(s.data_dir),
               "DETLOOP_LABEL_STUDIO__PROJECT_TITLE": s.label_studio.project_title}
    res = runner.invoke(app, ["annotate", "simulate", "--round", rid, "--p-skip", "0", "--p-miss-small", "0",
                              "--jitter", "0", "--p-flip", "0"], env=cli_env)
    assert res.exit_code == 0, res.output
    assert _json.loads(res.output)["annotated"] == 3
    res = runner.invoke(app, ["rounds", "show", rid], env=cli_env)
    assert res.exit_code == 0, res.output
    shown = _json.loads(res.output)
    assert shown["record"]["round_id"] == rid and shown["progress_now"]["labelled"] == 3
    res = runner.invoke(app, ["rounds", "pull", rid], env=cli_env)
    assert res.exit_code == 0, res.output
    assert _json.loads(res.output)["frames"] == 3
    res = runner.invoke(app, ["rounds", "show", rid, "--no-live"], env=cli_env)  # the pulled round's ledger, readable
    assert res.exit_code == 0, res.output
    outcomes = _json.loads(res.output)["labels_report"]["label_outcomes"]
    assert outcomes["frames"] == 3 and "candidates_found" in outcomes and 0 <= outcomes["adjusted"] <= 1


def test_simulated_annotator_leaves_frames_without_truth_pending(env):  # type: ignore[no-untyped-def]
    from dataclasses import replace

    s, ls, store, frames = env["s"], env["ls"], env["store"], env["frames"]
    rid = "r-notruth-" + env["sfx"]
    stranger = replace(frames[0], frame=replace(frames[0].frame, key=frames[0].frame.key.replace(".jpg", "-x.jpg")))
    annotation.push_round(s, [frames[1], stranger], rid, "5", AS_OF, ls, store)
    out = annotate_pending(s, AnnotatorProfile(), round_id=rid, ls=ls, store=store)
    assert (out["seen"], out["annotated"], out["no_truth"]) == (2, 1, 1)
    project = ls.find_project(s.label_studio.project_title)
    assert round_progress(annotation.round_tasks(ls, project.id, rid, "progress"))["pending"] == 1


def _labeller_session(ls: LabelStudioClient, email: str):  # type: ignore[no-untyped-def]
    """A new labeller, signed up through the organisation's invite link like a person (browser session)."""
    import httpx

    token = ls._http("GET", "api/invite", "read the invite link")["token"]
    c = httpx.Client(base_url=ls.url, follow_redirects=False, timeout=30)
    c.get(f"/user/signup/?token={token}").raise_for_status()
    r = c.post(f"/user/signup/?token={token}", headers={"Referer": f"{ls.url}/user/signup/"},
               data={"email": email, "password": f"pw-{uuid.uuid4().hex}", "csrfmiddlewaretoken": c.cookies["csrftoken"]})
    assert r.status_code == 302, r.text[:300]
    assert c.get("/api/current-user/whoami").json()["email"] == email
    return c


def test_a_labellers_next_task_in_round_2_carries_its_pre_annotations_and_no_arm(env):  # type: ignore[no-untyped-def]
    """What a labeller sees (``GET /api/projects/<id>/next/``, as a labeller: it locks the task for them): round 2
    of a project whose model version was set by an older round still shows pre-annotations, scored in [0, 1],
    and nothing that tells the control arm apart."""
    s = env["s"].model_copy(deep=True)
    s.label_studio.project_title = f"detloop-it-next-{env['sfx']}"
    ls, store, frames = LabelStudioClient(s), env["store"], env["frames"]
    project = ls.ensure_project(s.label_studio.project_title, s.classes)
    try:
        # an older detloop round imported its predictions under the registry version: the project's version is "1"
        old = ls.import_tasks(project.id, [{"data": {"image": frames[0].frame.uri, "round_id": "r-old", "width": W,
                                                     "height": H}, "predictions": [{"model_version": "1", "result": []}]}])
        ls.create_annotation(old[0], [])
        assert ls._http("GET", f"api/projects/{project.id}/", "read")["model_version"] == "1"
        r1, r2 = f"r-one-{env['sfx']}", f"r-two-{env['sfx']}"
        annotation.push_round(s, frames[:6], r1, "3", AS_OF, ls, store)
        annotate_pending(s, AnnotatorProfile(p_skip=0.0, seed=5), round_id=r1)
        rep2 = annotation.push_round(s, frames[6:11], r2, "4", AS_OF, ls, store)  # every frame has a predicted box
        proj = ls._http("GET", f"api/projects/{project.id}/", "read")
        assert proj["model_version"] == "detloop"  # moved once predictions carrying it existed
        assert proj["show_instruction"] and all(c in proj["expert_instruction"] for c in s.classes)
        assert "ccluded" in proj["expert_instruction"] and "runcated" in proj["expert_instruction"]
        views = ls._http("GET", "api/dm/views/", "views", params={"project": project.id})
        assert {v["data"]["title"] for v in views} == {r1, r2} and rep2.view_url.endswith(f"?tab={max(v['id'] for v in views)}")

        labeller = _labeller_session(ls, f"labeller-{env['sfx']}@detloop.test")
        nxt = labeller.get(f"/api/projects/{project.id}/next/")
        assert nxt.status_code == 200, nxt.text[:300]
        task = nxt.json()
        assert task["data"]["round_id"] == r2
        assert not {"arm", "rank", "uncertainty", "strategy"} & set(task["data"]), sorted(task["data"])
        preds = task["predictions"]
        assert preds and all(p["model_version"] == "detloop" for p in preds)
        assert all(0.0 <= p["score"] <= 1.0 for p in preds)
        boxes = [r for p in preds for r in p["result"]]
        assert boxes and all(0.0 <= r["score"] <= 1.0 for r in boxes)
        # the pull reads the arms from detloop's record: round 2's control frame comes back as control
        annotate_pending(s, AnnotatorProfile(p_skip=0.0, seed=6), round_id=r2)
        pulled = annotation.pull_round(s, r2, ls, store, copy=False)
        assert pulled.report["by_arm"] == {"selected": 4, "control": 1}
    finally:
        ls.delete_project(project.id)
