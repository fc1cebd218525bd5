"""Drift monitoring against the real stack: the reference follows the champion in the real registry, and a camera
at dusk opens one episode whose event makes the runner open one targeted round beside a weekly round.

One isolated world (its own production prefix, Label Studio project, MLflow experiment and registered model);
random-weights champions (tasks.export.make_random_artifact): drift at dusk shows in the frame statistics
whatever the weights. Small windows keep it to a minute or two.
"""

from __future__ import annotations

import shutil
import time
import uuid
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

CAMS = ["cam0", "cam1"]
DRIFT = {"reference_days": 3, "frames_per_camera_day": 12, "min_frames": 8, "min_boxes": 10, "permutations": 199,
         "report_days": 2, "alpha": 0.05, "live_min_frames": 2, "bootstrap_resamples": 20}


@pytest.fixture(scope="module")
def world(stack_settings: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from detloop.clients import Clients
    from detloop.settings import load_settings
    from detloop.world.publish import publish_world
    from tasks.export import make_random_artifact
    from tests.integration.test_flows import _isolated_config

    sfx = uuid.uuid4().hex[:8]
    cfg = _isolated_config(stack_settings, f"drift-{sfx}")
    # the services as resolved for this session (the runner does not see its DETLOOP_* port overrides)
    cfg["s3"]["endpoint_url"] = stack_settings.s3.endpoint_url
    cfg["mlflow"]["tracking_uri"] = stack_settings.mlflow.tracking_uri
    cfg["label_studio"]["url"] = stack_settings.label_studio.url
    cfg["prefect"] = {**cfg.get("prefect", {}), "api_url": stack_settings.prefect.api_url}
    cfg["drift"] = dict(DRIFT)
    cfg["selection"] = {**cfg.get("selection", {}), "budget": 6}
    path = tmp_path_factory.mktemp("drift") / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    s = load_settings(path)
    publish_world(s, date(2026, 1, 14), 7, 12, cameras=CAMS)  # cam1 at dusk from the 19th
    arts = {}
    for seed in (0, 1):
        arts[seed] = make_random_artifact(tmp_path_factory.getbasetemp() / f"drift-random-{seed}" / "scoring",
                                          list(s.classes), s.model.input_size, seed=seed)
    return {"cfg": str(path), "s": s, "clients": Clients.from_settings(s), "arts": arts,
            "tmp": tmp_path_factory.mktemp("drift-models")}


def _register(w: dict[str, Any], seed: int, tags: dict[str, str] | None = None) -> str:
    reg = w["clients"].registry
    files = w["tmp"] / f"v-{seed}-{uuid.uuid4().hex[:6]}"
    shutil.copytree(w["arts"][seed], files / "scoring")
    (files / "weights").mkdir()
    (files / "weights" / "best.pt").write_bytes(b"not used by scoring")
    run_id = reg.create_run(f"drift-test-{seed}", {})
    reg.end_run(run_id)
    return str(reg.register_logged_model(run_id, files, f"{reg.model_name}-{seed}", tags or {}, {}).version)


def _champion_from_round(w: dict[str, Any], s: Any, day: str, seed: int) -> str:
    """A champion trained on the round of ``day`` (so it took over that day's traffic), promoted."""
    from tasks.registry import promote
    from tasks.rounds import mark_round, open_round

    c = w["clients"]
    rid = f"{s.label_studio.project_title}-{day}"
    open_round(c.store, s, rid, day, None, 1, 0)
    mark_round(c.store, s, rid, status="trained")
    v = _register(w, seed, {"detloop.round_id": rid})
    promote(s, c.registry, c.store, v, override=True, reason="drift test", actor="test")
    return v


def _own_model(world: dict[str, Any], tmp_path: Path, suffix: str) -> tuple[Path, Any, Any]:
    """This world's config with its own registered model and project (``<name>-<suffix>``): ``(path, settings,
    clients)``, so a test's champions and episodes are its own."""
    from detloop.clients import Clients
    from detloop.settings import load_settings

    cfg = yaml.safe_load(Path(world["cfg"]).read_text())
    cfg["mlflow"]["model_name"] = f"{cfg['mlflow']['model_name']}-{suffix}"
    cfg["label_studio"]["project_title"] = f"{cfg['label_studio']['project_title']}-{suffix}"
    path = tmp_path / f"{suffix}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    s = load_settings(path)
    return path, s, Clients.from_settings(s)


def test_the_reference_is_replaced_on_promotion_and_restored_on_rollback(world: dict[str, Any]) -> None:
    from detloop.settings import load_settings
    from flows.drift import drift_report
    from tasks.drift_records import days_with_frames, version_prefix
    from tasks.registry import promote, rollback

    w = world
    s = load_settings(w["cfg"], overrides={"mlflow": {"model_name": f"{w['s'].mlflow.model_name}-ref"}})
    overrides = {"mlflow": {"model_name": s.mlflow.model_name}}
    from detloop.clients import Clients

    c = Clients.from_settings(s)
    w2 = {**w, "clients": c}
    v1, v2 = _register(w2, 0), _register(w2, 1)
    as_of = date(2026, 1, 19)

    def report() -> Any:
        return drift_report(as_of, w["cfg"], overrides, None, 1, live=False)

    promote(s, c.registry, c.store, v1, override=True, reason="drift test", actor="test")
    r1 = report()
    key1 = version_prefix(s, v1) + "reference.json"
    etag1 = next(o.etag for o in c.store.list(s.s3.data_bucket, key1))
    assert r1.model_version == v1 and r1.reference["version"] == v1
    # promoted today (wall clock): the reference is the last 3 production days before today
    have = sorted({d.isoformat() for ds_ in days_with_frames(c.store, s).values() for d in ds_})
    assert r1.reference["days"] == have[-3:] and r1.reference["anchor"] == date.today().isoformat()
    assert not any("drift.permutations" in n for n in r1.notes)  # 199 at alpha 0.05 can signal
    # 99 resamples without the refinement of small p-values: deaf, and the report says so
    few = drift_report(as_of, w["cfg"], {**overrides, "drift": {"permutations": 99, "permutations_refine": None}},
                       None, 1, live=False)
    assert any("drift.permutations = 99" in n and "set drift.permutations >=" in n for n in few.notes)  # deaf: said
    # drift.pool_days 2 (the default): the day is tested on its frames and the stored ones of the day before (not
    # scored again). r1 (1 day) stored the last day pooled alone, its day before never scored; once a 2-day report
    # has stored that day, the last day's statistics are computed again with both
    alone = drift_report(as_of, w["cfg"], {**overrides, "drift": {"pool_days": 1}}, None, 2, live=False)
    first, last = alone.days
    assert {c: st.n_frames for c, st in r1.stats[last].items()} == {c: st.n_frames for c, st in alone.stats[last].items()}
    pool = drift_report(as_of, w["cfg"], {**overrides, "drift": {"pool_days": 2}}, None, 1, live=False)
    assert pool.days == [last]
    pooled_frames = {cam: st.n_frames for cam, st in pool.stats[last].items()}
    assert pooled_frames == {cam: sum(alone.features[d].of_camera(cam).n_frames for d in (first, last))
                             for cam in pooled_frames}
    assert sum(pooled_frames.values()) > sum(st.n_frames for st in alone.stats[last].values())

    promote(s, c.registry, c.store, v2, override=True, reason="drift test", actor="test")
    r2 = report()
    assert r2.model_version == v2 and r2.reference["version"] == v2  # a new champion, a new reference
    assert r2.reference["built_at"] >= r1.reference["built_at"]
    assert not (r2.reference_features.embedding == r1.reference_features.embedding).all()  # the other model's

    rollback(s, c.registry, c.store, reason="drift test", actor="test")
    r3 = report()
    assert r3.model_version == v1 and r3.reference == r1.reference  # the old one, read back, not rebuilt
    assert next(o.etag for o in c.store.list(s.s3.data_bucket, key1)) == etag1


def _wait_for_runs(client: Any, deployment: str, config: str, episode_id: str, timeout: float = 300) -> list[Any]:
    """The runs of ``deployment`` for this world's episode, once they have all finished."""
    from flows.demo import retrain_runs

    dep = client.read_deployment_by_name(deployment)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = [r for r in retrain_runs(client, dep.id)
                if (r.parameters.get("params") or {}).get("episode_id") == episode_id
                and r.parameters["params"].get("config") == config]
        if runs and all(r.state is not None and r.state.is_final() for r in runs):
            return runs
        time.sleep(2)
    raise AssertionError(f"no finished {deployment} run for {episode_id} after {timeout:.0f} s")


def _drift_events(client: Any, model: str, episode_id: str) -> list[Any]:
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    from flows.drift import drift_resource_id

    page = client.read_events(EventFilter(event=EventNameFilter(name=["detloop.drift.detected"]),
                                          resource=EventResourceFilter(id=[drift_resource_id(model, episode_id)])),
                              limit=50)
    return list(page.events)


def test_a_dusk_camera_opens_one_episode_one_event_one_targeted_round_beside_a_weekly_round(
        world: dict[str, Any]) -> None:
    from prefect import get_client

    from flows.demo import _wait_for_deployments
    from flows.drift import drift_monitor
    from flows.params import DriftParams
    from tasks.drift_records import list_episodes
    from tasks.rounds import list_rounds, open_round
    from tests.integration.test_flows import _run

    w = world
    s, c = w["s"], w["clients"]
    # the champion was trained on the round of 2026-01-17: it took over the traffic of that day
    v = _champion_from_round(w, s, "2026-01-17", 0)
    _wait_for_deployments(timeout=120)

    # a weekly round is open (its record is what planning a round looks at)
    weekly = open_round(c.store, s, f"{s.label_studio.project_title}-2026-01-19", "2026-01-19", v, 4, 2)
    assert weekly.status == "open" and weekly.reason == "weekly"

    # the daily monitor, through its deployment: cam1 at dusk on the 19th and 20th opens one episode
    fr = _run("drift-monitor/check-production-daily", {"config": w["cfg"], "as_of": "2026-01-21"})
    assert fr.state.is_completed(), fr.state.message
    (ep,) = list_episodes(c.store, s)
    assert ep.cameras == ["cam1"] and ep.days == ["2026-01-19", "2026-01-20"] and ep.event_id
    with get_client(sync_client=True) as client:
        runs = _wait_for_runs(client, "select-for-labeling/open-drift-round", w["cfg"], ep.episode_id)
        assert len(runs) == 1 and runs[0].state.is_completed(), runs[0].state.message
        assert runs[0].parameters["params"]["cameras"] == ["cam1"]  # a list, through the trigger
        assert runs[0].parameters["params"]["camera_weights"] == {}  # a mapping: no companion to weigh less
        assert runs[0].parameters["params"]["camera_dates"] == {}  # asked for the first time: the episode's days
        assert len(_drift_events(client, s.mlflow.model_name, ep.episode_id)) == 1
    drift_rounds = [r for r in list_rounds(c.store, s) if r.reason == "drift"]
    assert [(r.round_id, r.status, r.focus_key) for r in drift_rounds] == [(ep.round_id, "open", ep.episode_id)]
    sel = c.store.get_json(s.s3.data_bucket, f"runs/{ep.round_id}/selected_frames.json")
    assert sel and {f["frame"]["camera"] for f in sel} == {"cam1"}

    # the next day of the same episode: nothing new
    from detloop.world.publish import publish_world

    publish_world(s, date(2026, 1, 21), 1, 12, cameras=CAMS)
    out = drift_monitor(DriftParams(config=w["cfg"], as_of=date(2026, 1, 22), days=1))  # here, tracked by the server
    assert out["opened"] == [] and out["open_episodes"] == [ep.episode_id]
    time.sleep(5)  # an automation would have fired by now
    (ep2,) = list_episodes(c.store, s)
    assert ep2.episode_id == ep.episode_id and "2026-01-21" in ep2.days and ep2.event_id == ep.event_id
    with get_client(sync_client=True) as client:
        assert len(_wait_for_runs(client, "select-for-labeling/open-drift-round", w["cfg"], ep.episode_id)) == 1
        assert len(_drift_events(client, s.mlflow.model_name, ep.episode_id)) == 1
    assert len([r for r in list_rounds(c.store, s) if r.reason == "drift"]) == 1


def test_bad_input_is_one_clear_line(world: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from typer.testing import CliRunner

    for var in ("DETLOOP_CONFIG", "PREFECT_API_URL"):  # the CLI exports them: undone after the test
        monkeypatch.setenv(var, os.environ.get(var, "unset"))  # records the value before (or its absence)
        if os.environ[var] == "unset":
            monkeypatch.delenv(var)

    from cli.main import app

    runner = CliRunner()
    for args, msg in [(["--as-of", "2099-01-01"], "in the future"), (["--camera", "cam9"], "unknown camera"),
                      (["--as-of", "2025-06-01", "--days", "2"], "no production frames")]:
        out = runner.invoke(app, ["drift", "report", "--config", world["cfg"], *args])
        assert out.exit_code != 0 and msg in str(out.exception), (args, out.output, out.exception)
        assert "\n" not in str(out.exception)
    out = runner.invoke(app, ["drift", "ack", "drift-v9-2026-01-01", "--config", world["cfg"]])
    assert out.exit_code != 0 and "no drift episode" in str(out.exception)


def test_missing_reference_is_a_clear_message(world: dict[str, Any], tmp_path: Path) -> None:
    """A champion promoted before any production frame exists has no reference: one line saying why."""
    from detloop.errors import NotFound
    from detloop.settings import load_settings
    from flows.drift import drift_report
    from tasks.rounds import mark_round, open_round

    w = world
    name = f"{w['s'].mlflow.model_name}-early"
    s = load_settings(w["cfg"], overrides={"mlflow": {"model_name": name}})
    from detloop.clients import Clients

    c = Clients.from_settings(s)
    rid = f"{s.label_studio.project_title}-2026-01-01"
    open_round(c.store, s, rid, "2026-01-01", None, 1, 0)
    mark_round(c.store, s, rid, status="trained")
    v = _register({**w, "clients": c}, 0, {"detloop.round_id": rid})
    c.registry.set_alias("champion", v)
    with pytest.raises(NotFound, match=r"missing reference for champion v\d+: no production frames before 2026-01-01"):
        drift_report(date(2026, 1, 19), w["cfg"], {"mlflow": {"model_name": name}}, None, 1, live=False)


def test_a_camera_still_drifting_keeps_its_pre_onset_reference_under_the_next_champion(
        world: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``drift.carry_unrecovered`` on the real store and registry: cam1 (dusk from the 19th) opens an episode under
    v1; v2 takes over on the 23rd, its ordinary reference days (20th-22nd) all dusk on cam1. cam1's part of v2's
    reference is its days before the onset, scored by v2 and stored with the reference, read back unchanged by the
    next run, and cam1's days drift against it (the third soak's missed recovery). Its episode under v1 was
    answered (announced with its round), and its days are like its traffic since the onset, so it is held from a
    new episode until ``drift.hold_days`` after that episode opened (the fifth tiled soak's churn)."""
    from detloop.world.publish import publish_world
    from flows.drift import drift_monitor
    from flows.params import DriftParams
    from tasks.drift_records import list_episodes, load_reference, version_prefix

    monkeypatch.setattr("prefect.events.emit_event", lambda **kw: None)  # no targeted round from the runner here
    path, s, c = _own_model(world, tmp_path, "carry")
    w = {**world, "clients": c}
    assert s.drift.carry_unrecovered  # the default

    v1 = _champion_from_round(w, s, "2026-01-17", 0)  # reference: the 14th-16th
    first = drift_monitor(DriftParams(config=str(path), as_of=date(2026, 1, 21)))
    (ep1,) = list_episodes(c.store, s)
    assert first["opened"] == [ep1.episode_id] and ep1.model_version == v1 and ep1.cameras == ["cam1"]

    publish_world(s, date(2026, 1, 21), 5, 12, cameras=CAMS)  # the 21st-25th (the 21st as the test above)
    v2 = _champion_from_round(w, s, "2026-01-23", 1)
    out = drift_monitor(DriftParams(config=str(path), as_of=date(2026, 1, 26)))
    got = load_reference(c.store, s, v2)
    assert got is not None
    meta, feats = got
    assert meta["days"] == ["2026-01-20", "2026-01-21", "2026-01-22"]
    assert meta["carried"] == {"cam1": {"onset": "2026-01-19", "days": ["2026-01-16", "2026-01-17", "2026-01-18"],
                                        "from_episode": ep1.episode_id, "episode_onset": min(ep1.days)}}
    assert sorted(set(feats.of_camera("cam1").day.tolist())) == ["2026-01-16", "2026-01-17", "2026-01-18"]
    assert sorted(set(feats.of_camera("cam0").day.tolist())) == meta["days"]
    assert meta["frames_per_camera"] == {"cam0": 36, "cam1": 36}
    from tasks.drift_records import load_recent_rows

    recent = load_recent_rows(c.store, s, v2)  # cam1's ordinary days, kept for the release's second comparison
    assert recent is not None and set(recent.camera.tolist()) == {"cam1"}
    assert sorted(set(recent.day.tolist())) == meta["days"]
    assert "cam1" in out["drifted_cameras"] and ep1.round_id
    until = (date.fromisoformat(ep1.opened_on) + timedelta(days=s.drift.hold_days)).isoformat()
    assert [e for e in list_episodes(c.store, s) if e.model_version == v2] == [] and out["opened"] == []
    assert out["held"] and all(cams == ["cam1"] and "2026-01-23" <= d < until for d, cams in out["held"].items())
    assert any(f"held from a new episode until {until}" in n for n in out["notes"])

    key = version_prefix(s, v2) + "reference.json"
    etag = next(o.etag for o in c.store.list(s.s3.data_bucket, key))
    again = drift_monitor(DriftParams(config=str(path), as_of=date(2026, 1, 26)))
    assert again["opened"] == [] and next(o.etag for o in c.store.list(s.s3.data_bucket, key)) == etag  # not rebuilt


def test_a_camera_whose_drift_round_was_rejected_gets_a_second_round_without_waiting(
        world: dict[str, Any], tmp_path: Path) -> None:
    """``tasks.drift.answered_in_vain`` end to end on the real stack: cam1 (dusk from the 19th) opens an episode
    whose event makes the runner open a targeted round; that round is trained and its challenger rejected by the
    gate (its ``result.json`` as the retrain flow writes it), and cam1 drifts on. Two drifted days after the round's
    day the monitor hands cam1 to a new episode, whose event makes the runner open a second targeted round, instead
    of the camera waiting ``drift.reopen_after_days`` (the second tiled soak's repaint)."""
    from prefect import get_client

    from detloop.world.publish import publish_world
    from flows.demo import _wait_for_deployments
    from flows.drift import drift_monitor
    from flows.params import DriftParams
    from tasks.drift_records import list_episodes
    from tasks.rounds import list_rounds, load_round, mark_round

    path, s, c = _own_model(world, tmp_path, "reopen")
    assert s.drift.reopen_after_days == 14 and s.drift.alarm_consecutive_days == 2  # the defaults
    _champion_from_round({**world, "clients": c}, s, "2026-01-17", 0)
    _wait_for_deployments(timeout=120)

    first = drift_monitor(DriftParams(config=str(path), as_of=date(2026, 1, 21)))
    (ep1,) = list_episodes(c.store, s)
    assert first["opened"] == [ep1.episode_id] and ep1.cameras == ["cam1"] and ep1.round_id
    with get_client(sync_client=True) as client:
        (run1,) = _wait_for_runs(client, "select-for-labeling/open-drift-round", str(path), ep1.episode_id)
        assert run1.state.is_completed(), run1.state.message
    r1 = load_round(c.store, s, ep1.round_id)
    assert r1 is not None and r1.reason == "drift" and r1.as_of == "2026-01-21"

    # the round is labelled and trained; the gate rejects its challenger (what retrain-and-promote records)
    mark_round(c.store, s, r1.round_id, status="trained")
    c.store.put_json(s.s3.data_bucket, f"rounds/{r1.round_id}/result.json",
                     {"round_id": r1.round_id, "version": "99", "promoted": False, "outcome": "rejected by the gate"})
    publish_world(s, date(2026, 1, 21), 4, 12, cameras=CAMS)  # the 21st-24th: cam1 still at dusk
    out = drift_monitor(DriftParams(config=str(path), as_of=date(2026, 1, 25), days=4))
    eps = {e.episode_id: e for e in list_episodes(c.store, s)}
    (new,) = [e for e in eps.values() if e.episode_id != ep1.episode_id]
    assert out["opened"] == [new.episode_id] and new.cameras == ["cam1"] and new.opened_on == "2026-01-22"
    old = eps[ep1.episode_id]
    assert old.status == "closed" and old.handed_over == ["cam1"] and old.followed_by == new.episode_id
    with get_client(sync_client=True) as client:
        (run2,) = _wait_for_runs(client, "select-for-labeling/open-drift-round", str(path), new.episode_id)
        assert run2.state.is_completed(), run2.state.message
        # re-asked, but its drifted days since the first round (the 21st on) are the new episode's own days
        assert new.round_days == {} and run2.parameters["params"]["camera_dates"] == {}
    drift_rounds = sorted((r.round_id, r.focus_key, r.status) for r in list_rounds(c.store, s) if r.reason == "drift")
    assert drift_rounds == sorted([(r1.round_id, ep1.episode_id, "trained"), (new.round_id, new.episode_id, "open")])
    sel = c.store.get_json(s.s3.data_bucket, f"runs/{new.round_id}/selected_frames.json")
    assert sel and {f["frame"]["camera"] for f in sel} == {"cam1"}

    again = drift_monitor(DriftParams(config=str(path), as_of=date(2026, 1, 25), days=4))  # a re-run: nothing new
    assert again["opened"] == [] and len(list_episodes(c.store, s)) == 2
