"""The drift flows, run for real by Prefect, over in-memory services: a camera that turns to dusk opens one
episode, announces it once, and its targeted round opens beside an open weekly round."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

DUSK = date(2026, 1, 19)  # configs/world.yaml: cam1-dusk


@pytest.fixture
def drift_config(config: str) -> str:
    """Small windows so the test stays quick: 3 reference days, 16 frames per camera-day, 199 permutations."""
    data = yaml.safe_load(Path(config).read_text())
    data["drift"] = {"reference_days": 3, "frames_per_camera_day": 16, "min_frames": 10, "min_boxes": 10,
                     "permutations": 199, "report_days": 4, "alpha": 0.05, "live_min_frames": 2,
                     "bootstrap_resamples": 50}
    Path(config).write_text(yaml.safe_dump(data))
    return config


def _random_model(s: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registrable model folder: a random-weights scoring artifact (shared) and a stub checkpoint."""
    import shutil

    from tasks.export import make_random_artifact

    art = make_random_artifact(tmp_path_factory.getbasetemp() / "random-artifact" / "scoring", list(s.classes),
                               s.model.input_size)
    files = tmp_path_factory.mktemp("model")
    shutil.copytree(art, files / "scoring")
    (files / "weights").mkdir()
    (files / "weights" / "best.pt").write_bytes(b"not used by scoring")
    return files


@pytest.fixture
def world(drift_config: str, fakes: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """cam0 and cam1 from 2026-01-14 (cam1 at dusk from the 19th); a random-weights champion trained on the
    round of 2026-01-17 (so it took over on that day: its reference is the 14th-16th)."""

    from detloop.settings import load_settings
    from detloop.world.publish import publish_world
    from tasks.rounds import open_round

    s = load_settings(drift_config)
    publish_world(s, date(2026, 1, 14), 8, 16, cameras=["cam0", "cam1"], store=fakes.store, threads=4)
    files = _random_model(s, tmp_path_factory)
    open_round(fakes.store, s, "detloop-test-2026-01-17", "2026-01-17", None, 1, 0)
    from tasks.rounds import mark_round

    mark_round(fakes.store, s, "detloop-test-2026-01-17", status="trained")
    from tasks.registry import promote

    v1 = fakes.registry.add_model(files, run_id="run-r1", tags={"detloop.round_id": "detloop-test-2026-01-17"},
                                  alias=None)
    promote(s, fakes.registry, fakes.store, v1, override=True, reason="the test's champion", actor="test")
    return s


def test_a_dusk_camera_opens_one_episode_announced_once_and_its_round_opens_beside_a_weekly_one(
        world: Any, drift_config: str, fakes: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.drift import drift_event_id, drift_monitor
    from flows.loop import select_for_labeling
    from flows.params import DriftParams, SelectParams
    from tasks.drift_records import list_episodes, load_reference
    from tasks.rounds import list_rounds, load_round

    events: list[dict[str, Any]] = []
    monkeypatch.setattr("prefect.events.emit_event", lambda **kw: events.append(kw))
    # a weekly round is open
    weekly = select_for_labeling(SelectParams(config=drift_config, as_of=date(2026, 1, 19), budget=6))
    assert load_round(fakes.store, world, weekly["round_id"]).status == "open"

    out = drift_monitor(DriftParams(config=drift_config, as_of=date(2026, 1, 21)))
    meta, _ref = load_reference(fakes.store, world, "1")
    assert meta["days"] == ["2026-01-14", "2026-01-15", "2026-01-16"] and meta["anchor"] == "2026-01-17"
    assert out["drifted_cameras"] == ["cam1"] and out["opened"] == ["drift-v1-2026-01-20"]
    drift = [e for e in events if e["event"] == "detloop.drift.detected"]
    assert len(drift) == 1 and drift[0]["id"] == drift_event_id(world.mlflow.model_name, "drift-v1-2026-01-20")
    payload = drift[0]["payload"]
    assert payload["cameras"] == ["cam1"] and payload["days"] == ["2026-01-19", "2026-01-20"]
    assert any(s.startswith("brightness:") for s in payload["statistics"])

    # what the on-drift automation does with the payload: one targeted round, although a weekly one is open
    params = SelectParams(config=drift_config, as_of=payload["as_of"], episode_id=payload["episode_id"],
                          cameras=payload["cameras"], dates=payload["dates"], budget=payload["budget"])
    first = select_for_labeling(params)
    assert first["round_id"] == payload["round_id"] and first["imported"] > 0
    rec = load_round(fakes.store, world, payload["round_id"])
    assert rec.reason == "drift" and rec.focus_key == "drift-v1-2026-01-20"
    sel = fakes.store.get_json(world.s3.data_bucket, f"runs/{payload['round_id']}/selected_frames.json")
    assert {f["frame"]["camera"] for f in sel} == {"cam1"}
    tasks = len(fakes.labels.tasks)
    again = select_for_labeling(params)  # a re-run (or a duplicate event) creates nothing
    assert again["round_id"] == payload["round_id"] and again["imported"] == 0 and len(fakes.labels.tasks) == tasks

    # the next day of the same episode: extended, nothing new announced
    from detloop.world.publish import publish_world

    publish_world(world, date(2026, 1, 22), 1, 16, cameras=["cam0", "cam1"], store=fakes.store, threads=4)
    out2 = drift_monitor(DriftParams(config=drift_config, as_of=date(2026, 1, 23)))
    assert out2["opened"] == [] and len([e for e in events if e["event"] == "detloop.drift.detected"]) == 1
    (ep,) = list_episodes(fakes.store, world)
    assert ep.status == "open" and "2026-01-22" in ep.days and ep.round_id == payload["round_id"]
    assert len([r for r in list_rounds(fakes.store, world) if r.reason == "drift"]) == 1
    # the monitoring experiment got one run for this champion, with a time series per camera
    runs = [r for r in fakes.registry.runs.values() if r.tags.get("detloop.drift.version") == "1"]
    assert len(runs) == 1 and "cam1.signals" in runs[0].metrics
    assert any(k.endswith("report.md") for k in runs[0].artifacts)


def test_days_before_the_champion_took_over_open_no_episode(drift_config: str, fakes: Any) -> None:
    """A new champion's reference is the days before it took over; the days of the monitor's window before that
    were another model's production: comparing them with the new reference opened episodes after the fact (the
    third soak: v6, promoted on 02-02 with the repaint in its reference, opened a cam3 episode dated 01-21)."""
    from types import SimpleNamespace

    from detloop.settings import load_settings
    from flows.drift import update_episodes
    from tasks.drift import Verdict

    s = load_settings(drift_config)
    days = [f"2026-02-{d:02d}" for d in range(4, 13)]
    verdicts = {d: {"cam2": Verdict("cam2", d, "drift", ["class_mix:chi2"]),
                    "cam0": Verdict("cam0", d, "clean")} for d in days}
    run = SimpleNamespace(model_version="9", days=days, verdicts=verdicts, reference={"anchor": "2026-02-09"}, held={}, stats={})
    announce, episodes = update_episodes(s, fakes.store, run)
    assert episodes and all(e.opened_on >= "2026-02-09" for e in episodes)
    assert [e.cameras for e in announce] == [["cam2"]]

    earlier = SimpleNamespace(model_version="8", days=days, verdicts=verdicts, reference={}, held={}, stats={})  # no anchor known
    _, episodes = update_episodes(s, fakes.store, earlier)
    assert min(e.opened_on for e in episodes if e.model_version == "8") < "2026-02-09"


@pytest.mark.parametrize("promoted", [False, True, None])
def test_a_camera_whose_round_ended_without_a_promotion_gets_a_new_episode_without_waiting(
        drift_config: str, fakes: Any, promoted: bool | None) -> None:
    """The second tiled soak: the repainted camera's round was rejected by the gate and the camera, still 0.10 below
    its pre-onset mAP50, got no round the next week (its episode waited out ``reopen_after_days``). A round trained
    without a promotion frees its still-drifting cameras once they drift ``alarm_consecutive_days`` days after it;
    a promoted round (the next day's champion supersedes the episode) or one not trained yet does not."""
    from types import SimpleNamespace

    from detloop.contracts import RoundRecord
    from detloop.settings import load_settings
    from flows.drift import update_episodes
    from tasks.drift import Verdict
    from tasks.drift_records import mark_episode
    from tasks.rounds import save_round

    s = load_settings(drift_config)
    assert s.drift.reopen_after_days == 14 and s.drift.alarm_consecutive_days == 2
    days = [f"2026-02-{d:02d}" for d in range(1, 13)]
    verdicts = {d: {"cam3": Verdict("cam3", d, "drift", ["confidence:ks"])} for d in days}

    def run(upto: int) -> Any:
        return SimpleNamespace(model_version="9", days=days[:upto], verdicts=verdicts, reference={"anchor": days[0]},
                               held={}, stats={})

    (first,), _ = update_episodes(s, fakes.store, run(2))  # cam3 drifted 02-01, 02-02: episode opened on 02-02
    assert first.opened_on == "2026-02-02"
    rid = "soak-drift-v9-2026-02-02"
    mark_episode(fakes.store, s, first.episode_id, event_id="ev-1", round_id=rid)
    save_round(fakes.store, s, RoundRecord(rid, "2026-02-03", "2026-02-03T10:00:00+00:00", "2026-02-10T00:00:00+00:00",
                                           "trained" if promoted is not None else "completed", "9", 20, 2,
                                           project=s.label_studio.project_title, reason="drift", focus_key=first.episode_id))
    if promoted is not None:
        fakes.store.put_json(s.s3.data_bucket, f"rounds/{rid}/result.json", {"round_id": rid, "promoted": promoted})
    announce, episodes = update_episodes(s, fakes.store, run(3))  # 02-03 only: one drifted day since the round
    assert announce == [] and len(episodes) == 1
    announce, episodes = update_episodes(s, fakes.store, run(4))  # 02-04: the second
    if promoted is False:
        (new,) = announce
        assert new.opened_on == "2026-02-04" and new.cameras == ["cam3"]
        old = next(e for e in episodes if e.episode_id == first.episode_id)
        assert old.status == "closed" and old.handed_over == ["cam3"] and old.followed_by == new.episode_id
        assert "trained without a promotion" in (old.close_reason or "")
    else:  # promoted, or not trained yet: the episode waits (the 14 days, or the new champion)
        assert announce == [] and [e.status for e in episodes] == ["open"]


def test_an_episode_whose_round_was_never_created_is_announced_again_the_next_day(
        world: Any, drift_config: str, fakes: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The third soak: the run that the repaint episode's event started failed while MLflow was down, no round was
    ever created and nothing answered the episode. The next monitor day announces it again, under a new event id;
    once its round exists, nothing more is sent."""
    from detloop.world.publish import publish_world
    from flows.drift import drift_event_id, drift_monitor
    from flows.loop import select_for_labeling
    from flows.params import DriftParams, SelectParams
    from tasks.drift_records import load_episode

    events: list[dict[str, Any]] = []
    monkeypatch.setattr("prefect.events.emit_event", lambda **kw: events.append(kw))
    drifted = lambda: [e for e in events if e["event"] == "detloop.drift.detected"]  # noqa: E731
    out = drift_monitor(DriftParams(config=drift_config, as_of=date(2026, 1, 21)))
    (eid,) = out["opened"]
    assert len(drifted()) == 1 and out["announced_again"] == []
    again = drift_monitor(DriftParams(config=drift_config, as_of=date(2026, 1, 21)))  # the same day re-run
    assert again["announced_again"] == [] and len(drifted()) == 1

    publish_world(world, date(2026, 1, 22), 1, 16, cameras=["cam0", "cam1"], store=fakes.store, threads=4)
    nxt = drift_monitor(DriftParams(config=drift_config, as_of=date(2026, 1, 23)))  # the round never came
    assert nxt["announced_again"] == [eid] and len(drifted()) == 2
    assert drifted()[1]["id"] == drift_event_id(world.mlflow.model_name, f"{eid}#1") != drifted()[0]["id"]
    ep = load_episode(fakes.store, world, eid)
    assert ep.announcements == 2 and ep.announced_for == "2026-01-23"

    payload = drifted()[1]["payload"]  # the automation's run, this time completed
    select_for_labeling(SelectParams(config=drift_config, as_of=payload["as_of"], episode_id=payload["episode_id"],
                                     cameras=payload["cameras"], dates=payload["dates"], budget=payload["budget"]))
    last = drift_monitor(DriftParams(config=drift_config, as_of=date(2026, 1, 24)))
    assert last["announced_again"] == [] and len(drifted()) == 2


def test_a_targeted_round_on_two_cameras_gives_each_its_share_a_weekly_round_does_not_split(
        world: Any, drift_config: str, fakes: Any) -> None:
    """An episode on a repainted camera and a new one: the new camera's frames are the more uncertain, and without
    a split they took the repainted camera's share (the recovery ceiling, docs/benchmarks.md). A companion gets
    half the share of a camera that drifted on its own (the tenth tiled soak, docs/drift.md)."""
    from collections import Counter

    from flows.drift import targeted_round
    from flows.loop import select_for_labeling
    from flows.params import SelectParams
    from tasks.drift import Episode
    from tasks.selection import weighted_quotas

    data = yaml.safe_load(Path(drift_config).read_text())
    data["drift"]["round_frames_per_camera"] = 5
    Path(drift_config).write_text(yaml.safe_dump(data))
    from detloop.settings import load_settings

    ep = Episode(episode_id="drift-v1-2026-01-20", model_version="1", cameras=["cam0", "cam1"],
                 opened_on="2026-01-20", days=["2026-01-19", "2026-01-20"])
    target = targeted_round(load_settings(drift_config), ep)
    assert target["budget"] == 10  # 5 per camera

    def selected(out: dict[str, Any]) -> tuple[Counter[str], list[str]]:
        bucket = world.s3.data_bucket
        rows = fakes.store.get_json(bucket, f"runs/{out['round_id']}/selected_frames.json")
        notes = fakes.store.get_json(bucket, f"runs/{out['round_id']}/selection_report.json")["notes"]
        return Counter(r["frame"]["camera"] for r in rows if r["arm"] == "selected"), notes

    out = select_for_labeling(SelectParams(config=drift_config, as_of=target["as_of"], episode_id=ep.episode_id,
                                           cameras=target["cameras"], dates=target["dates"], budget=target["budget"]))
    counts, notes = selected(out)
    assert abs(counts["cam0"] - counts["cam1"]) <= 1 and sum(counts.values()) >= 2
    assert any(n.startswith("cameras balanced: cam0") for n in notes)

    weekly = select_for_labeling(SelectParams(config=drift_config, as_of=date(2026, 1, 19), budget=6))
    assert not any(n.startswith("cameras balanced") for n in selected(weekly)[1])

    # cam1 a companion (joined on a class's share alone): half cam0's share (drift.companion_round_weight)
    ep2 = Episode(episode_id="drift-v1-2026-01-21", model_version="1", cameras=["cam0", "cam1"],
                  opened_on="2026-01-21", days=["2026-01-20", "2026-01-21"], companions={"cam1": "star share ..."})
    t2 = targeted_round(load_settings(drift_config), ep2)
    assert t2["camera_weights"] == {"cam1": 0.5}
    out2 = select_for_labeling(SelectParams(config=drift_config, as_of=t2["as_of"], episode_id=ep2.episode_id,
                                            cameras=t2["cameras"], dates=t2["dates"], budget=t2["budget"],
                                            camera_weights=t2["camera_weights"]))
    counts2, notes2 = selected(out2)
    k = sum(counts2.values())
    assert k >= 3 and [counts2["cam0"], counts2["cam1"]] == weighted_quotas([k, k], [1.0, 0.5], k), (counts2, notes2)
    assert any(n.startswith("cameras balanced: cam0") and "cam1" in n and "(weight 0.5)" in n for n in notes2)


def test_a_reasked_cameras_round_samples_its_drifted_days_since_its_last_round(
        world: Any, drift_config: str, fakes: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """cam1 was in an answered episode and drifted on, unasked (held, the champion changed); its new episode's
    round offers it those days too, recorded at the first announcement (an announcement again keeps them), sent in
    the event, and sampled by the round; cam0, asked for the first time, samples the episode's days only."""
    from detloop.settings import load_settings
    from flows.drift import DriftRun, announce_episode, episode_round_days
    from flows.loop import select_for_labeling
    from flows.params import SelectParams
    from tasks.drift import Episode, Features, Verdict
    from tasks.drift_records import load_episode, save_episodes

    s = load_settings(drift_config)
    first = Episode("drift-v1-2026-01-16", "1", "2026-01-16", ["cam1"], ["2026-01-15", "2026-01-16"],
                    round_id="r-first", status="closed")
    new = Episode("drift-v2-2026-01-20", "2", "2026-01-20", ["cam0", "cam1"], ["2026-01-19", "2026-01-20"])
    save_episodes(fakes.store, s, [first, new])
    days = [f"2026-01-{d}" for d in range(14, 21)]
    drifting = {"cam1": {"2026-01-15", "2026-01-16", "2026-01-17", "2026-01-18", "2026-01-19", "2026-01-20"},
                "cam0": {"2026-01-17", "2026-01-19", "2026-01-20"}}  # cam0's lone day 17: asked for no round yet
    verdicts = {d: {c: Verdict(c, d, "drift" if d in drifting[c] else "clean") for c in ("cam0", "cam1")}
                for d in days}
    run = DriftRun("2026-01-21", days, "2", {}, Features.empty(), {}, verdicts, {})
    got = episode_round_days(s, new, [first, new], run)
    # the window is the 7 days before the 21st; cam1's first round sampled up to the 16th
    assert got == {"cam1": ["2026-01-17", "2026-01-18", "2026-01-19", "2026-01-20"]}
    off = s.model_copy(update={"drift": s.drift.model_copy(update={"reasked_round_days": False})})
    assert episode_round_days(off, new, [first, new], run) == {}

    events: list[dict[str, Any]] = []
    monkeypatch.setattr("prefect.events.emit_event", lambda **kw: events.append(kw))
    ep = announce_episode(s, fakes.store, new, drift_config, "2026-01-21", got)
    assert load_episode(fakes.store, s, new.episode_id).round_days == got and ep.round_days == got
    again = announce_episode(s, fakes.store, ep, drift_config, "2026-01-22",
                             {"cam1": ["2026-01-20"]})  # announced again: its recorded days, not new ones
    assert again.round_days == got
    payloads = [e["payload"] for e in events]
    assert [p["camera_dates"] for p in payloads] == [got, got] and payloads[0]["dates"] == ["2026-01-19", "2026-01-20"]
    assert "cam1 also its drifted days since its last round (4 days from 2026-01-17)" in payloads[0]["message"]

    p = payloads[0]
    out = select_for_labeling(SelectParams(config=drift_config, as_of=p["as_of"], episode_id=p["episode_id"],
                                           cameras=p["cameras"], dates=p["dates"], budget=p["budget"],
                                           camera_dates=p["camera_dates"]))
    manifest = fakes.store.get_json(world.s3.data_bucket, f"runs/{out['round_id']}/sample_manifest.json")
    sampled = {(f["camera"], f["date"]) for f in manifest["frames"]}
    assert {d for c, d in sampled if c == "cam1"} == set(got["cam1"])
    assert {d for c, d in sampled if c == "cam0"} == {"2026-01-19", "2026-01-20"}
    notes = fakes.store.get_json(world.s3.data_bucket, f"runs/{out['round_id']}/selection_report.json")["notes"]
    assert any(n.startswith("cam1 sampled its own days 2026-01-17, 2026-01-18") for n in notes), notes


def test_the_drift_trigger_makes_parameters_the_deployment_accepts_from_new_and_older_events() -> None:
    """The automation renders the run's parameters from the event with Prefect's own hydration, and the server
    creates the run only if they pass the deployment's parameter schema. A list and a mapping keep their type; an
    event announced before ``camera_weights`` / ``camera_dates`` existed, or holding null, gives ``{}`` (null is
    refused: "None is not of type 'object'", which left a round uncreated), and a required field stays required."""
    import copy

    from prefect.server.events.actions import RunDeployment
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools.hydration import HydrationContext, hydrate
    from prefect.utilities.schema_tools.validation import ValidationError, validate

    from detloop.settings import load_settings
    from flows.loop import select_for_labeling
    from flows.serve import drift_deployments

    (deployment,) = [d for d in drift_deployments(load_settings("configs/test.yaml"), {}) if d.triggers]
    template = deployment.triggers[0].parameters
    schema = parameter_schema(select_for_labeling).model_dump_for_openapi()

    def run_parameters(payload: dict[str, Any]) -> dict[str, Any]:
        parameters = copy.deepcopy(template)
        RunDeployment._upgrade_v1_templates(parameters)
        out = hydrate(parameters, HydrationContext(raise_on_error=True, render_jinja=True,
                                                   jinja_context={"event": {"payload": payload}}))
        validate(out, schema, raise_on_error=True)  # what the server checks before it creates the run
        return out["params"]  # type: ignore[no-any-return]

    base = {"config": "c.yaml", "as_of": "2026-02-04", "episode_id": "drift-v9-2026-02-03", "budget": 240,
            "cameras": ["cam3", "cam0"], "dates": ["2026-02-02", "2026-02-03"]}
    new = run_parameters({**base, "camera_weights": {"cam0": 0.5},
                          "camera_dates": {"cam3": ["2026-01-29", "2026-02-03"]}})
    assert new["cameras"] == ["cam3", "cam0"] and new["budget"] == 240 and new["camera_weights"] == {"cam0": 0.5}
    assert new["camera_dates"] == {"cam3": ["2026-01-29", "2026-02-03"]}
    for older in (base, {**base, "camera_weights": None, "camera_dates": None}):
        got = run_parameters(older)
        assert got["camera_weights"] == {} and got["camera_dates"] == {}
    with pytest.raises(ValidationError, match="camera_dates"):  # why not null: the server's own check
        validate({"params": {**base, "camera_dates": None}}, schema, raise_on_error=True)
    from prefect.utilities.schema_tools.hydration import InvalidJinja

    missing = {k: v for k, v in base.items() if k != "cameras"}
    with pytest.raises(InvalidJinja, match="not JSON serializable"):  # a required field stays required
        run_parameters(missing)


@pytest.mark.parametrize("case", ["carried", "carried-no-grace", "not-carried"])
def test_a_promotion_does_not_make_a_camera_still_drifting_the_new_normal(
        world: Any, drift_config: str, fakes: Any, monkeypatch: pytest.MonkeyPatch,
        tmp_path_factory: pytest.TempPathFactory, case: str) -> None:
    """The third soak: cam2's zoom-out episode was still open when a weekly champion took over; that champion's
    reference was the post-zoom days, so cam2 looked normal and no round came back to it. With
    ``drift.carry_unrecovered`` the new champion compares cam1 (dusk since the 19th, its episode open) with its
    days before the onset, and its days drift; without it, the dusk is the new reference.

    The fifth tiled soak: a carried camera whose episode was answered opened a new episode under every champion,
    a round every two days on one camera. Its episode was answered (announced, its round started), so cam1 is held
    from a new episode until ``drift.hold_days`` after that episode opened, its days being like its traffic
    since the onset; with ``hold_days: 0`` (no grace) a new episode opens at once, as before."""
    from detloop.world.publish import publish_world
    from flows.drift import drift_monitor
    from flows.params import DriftParams
    from tasks.drift_records import list_episodes, load_reference_meta
    from tasks.registry import promote
    from tasks.rounds import mark_round, open_round

    data = yaml.safe_load(Path(drift_config).read_text())
    data["drift"]["carry_unrecovered"] = case != "not-carried"
    if case == "carried-no-grace":
        data["drift"]["hold_days"] = 0
    Path(drift_config).write_text(yaml.safe_dump(data))
    monkeypatch.setattr("prefect.events.emit_event", lambda **kw: None)
    first = drift_monitor(DriftParams(config=drift_config, as_of=date(2026, 1, 21)))
    assert first["opened"] == ["drift-v1-2026-01-20"]

    # v2, trained on the round of the 23rd, takes over: its ordinary reference (20th-22nd) is all dusk on cam1
    publish_world(world, date(2026, 1, 22), 4, 16, cameras=["cam0", "cam1"], store=fakes.store, threads=4)
    open_round(fakes.store, world, "detloop-test-2026-01-23", "2026-01-23", None, 1, 0)
    mark_round(fakes.store, world, "detloop-test-2026-01-23", status="trained")
    v2 = fakes.registry.add_model(_random_model(world, tmp_path_factory), run_id="run-r2", tags={"detloop.round_id": "detloop-test-2026-01-23"},
                                  alias=None)
    promote(world, fakes.registry, fakes.store, v2, override=True, reason="the next champion", actor="test")

    out = drift_monitor(DriftParams(config=drift_config, as_of=date(2026, 1, 26)))
    meta = load_reference_meta(fakes.store, world, v2)
    assert meta is not None and meta["days"] == ["2026-01-20", "2026-01-21", "2026-01-22"]
    mine = [e for e in list_episodes(fakes.store, world) if e.model_version == v2]
    if case == "not-carried":
        assert meta["carried"] == {} and mine == [] and out["opened"] == []
        return
    assert meta["carried"] == {"cam1": {"onset": "2026-01-19", "days": ["2026-01-16", "2026-01-17", "2026-01-18"],
                                        "from_episode": "drift-v1-2026-01-20", "episode_onset": "2026-01-19"}}
    assert "cam1" in out["drifted_cameras"]  # compared with its pre-onset days, the dusk still drifts
    if case == "carried":
        assert mine == [] and out["opened"] == []
        assert out["held"] and all(c == ["cam1"] and d >= "2026-01-23" for d, c in out["held"].items())
        assert any("held from a new episode until 2026-01-27" in n for n in out["notes"])  # 7 days
    else:
        assert [e.cameras for e in mine] == [["cam1"]] and out["opened"] == [mine[0].episode_id]
        assert mine[0].opened_on >= "2026-01-23"  # not before v2 took over
        assert out["held"] == {}


def test_a_carried_camera_whose_label_free_estimate_is_back_counts_as_clean() -> None:
    """The release of a carried camera (:func:`flows.drift.release_carried`): a drifted day whose share of
    detections above the calibrated ATC threshold is back within the tolerance of the pre-onset share is clean;
    one still far below stays drifted; without a calibration nothing changes and the report says why."""
    from types import SimpleNamespace

    import numpy as np

    from flows.drift import DriftRun, release_carried
    from tasks.drift import Features, Verdict

    def feats(cam: str, day: str, conf: list[float]) -> Features:
        n = len(conf)
        return Features(np.array([cam]), np.array([day]), np.zeros(1), np.zeros(1), np.array([n]), None,
                        np.zeros(n, np.int64), np.array(conf), np.zeros(n, np.int64), np.zeros(n))

    ref = feats("cam2", "2026-01-10", [0.9, 0.8, 0.7, 0.3])  # 3 of 4 above 0.5
    days = {"2026-02-01": feats("cam2", "2026-02-01", [0.9, 0.8, 0.6, 0.2]),  # 0.75: back
            "2026-02-02": feats("cam2", "2026-02-02", [0.9, 0.3, 0.2, 0.1])}  # 0.25: not
    verdicts = {d: {"cam2": Verdict("cam2", d, "drift", ["brightness:ks", "embedding:mmd"])} for d in days}

    def run(threshold: float | None) -> DriftRun:
        return DriftRun("2026-02-03", list(days), "7", {"carried": {"cam2": {"onset": "2026-01-12",
                                                                             "from_episode": "drift-v6-2026-01-13"}}},
                        ref, {}, {d: dict(v) for d, v in verdicts.items()}, days,
                        live=SimpleNamespace(atc_threshold=threshold, mean_confidence=None, overall=None,
                                             atc_weight=None))

    r = run(0.5)
    release_carried(r, 0.05, estimator="atc")
    assert r.verdicts["2026-02-01"]["cam2"].status == "clean"
    assert r.verdicts["2026-02-02"]["cam2"].status == "drift" and "0.250 against 0.750" in r.verdicts["2026-02-02"]["cam2"].note
    assert any("compared with its traffic from before 2026-01-12" in n for n in r.notes)
    # the release's default estimator (drift.recovery_estimator: atc_doc) averages ATC with DoC (mean confidence
    # 0.675 on the reference, calibrated mAP50 0.75): 2026-02-01 is (0.75 + 0.75 + 0.625 - 0.675) / 2 = 0.725
    # against (0.75 + 0.75) / 2 = 0.75: back
    both = run(0.5)
    both.live.mean_confidence, both.live.overall = 0.675, SimpleNamespace(map50=0.75)
    release_carried(both, 0.05)
    assert both.verdicts["2026-02-01"]["cam2"].status == "clean"
    assert both.verdicts["2026-02-02"]["cam2"].status == "drift"
    few = run(0.5)
    release_carried(few, 0.05, min_boxes=5)  # 4 boxes a side: no estimate, the inputs decide
    assert all(v["cam2"].status == "drift" for v in few.verdicts.values())
    # the labelled check (run.live.carried): on cam2's labelled frames since the onset the estimate read 0.75
    # where their mAP50 is 0.40: nothing of cam2 is released, and the report's note has both numbers
    from tasks.live_accuracy import LiveAccuracy, LivePoint

    checked = run(0.5)
    checked.live = LiveAccuracy("7", None, 0.9, atc_threshold=0.5, carried=[
        LivePoint("since 2026-01-12", "cam2", 14, 40, map50=0.40, estimate=0.75)])
    release_carried(checked, 0.05, estimator="atc")
    assert all(v["cam2"].status == "drift" for v in checked.verdicts.values())
    assert "not trusted on this camera" in checked.verdicts["2026-02-01"]["cam2"].note
    assert any("its 14 labelled control frames since then: mAP50 0.400, estimate 0.750" in n for n in checked.notes)
    fine = run(0.5)
    fine.live = LiveAccuracy("7", None, 0.9, atc_threshold=0.5, carried=[
        LivePoint("since 2026-01-12", "cam2", 14, 40, map50=0.72, estimate=0.75)])
    release_carried(fine, 0.05, estimator="atc")
    assert fine.verdicts["2026-02-01"]["cam2"].status == "clean"
    blind = run(None)
    release_carried(blind, 0.05)
    assert all(v["cam2"].status == "drift" for v in blind.verdicts.values())
    assert any("no label-free estimate" in n for n in blind.notes)


def test_a_carried_camera_that_changes_again_is_not_released_on_its_estimate() -> None:
    """:func:`flows.drift.release_carried` with the drift settings: the carried camera's rows of the ordinary
    reference days (``run.recent_reference``) are its recent traffic. A day whose estimate is back but whose boxes
    are far smaller than that traffic's (a zoom-out after the drift it was carried for) stays drifted; a day like
    its recent traffic is released."""
    from types import SimpleNamespace

    import numpy as np

    from detloop.settings import DriftSettings
    from flows.drift import DriftRun, release_carried
    from tasks.drift import Features, Verdict

    rng = np.random.default_rng(0)

    def feats(day: str, n_frames: int, log_area: float) -> Features:
        per = 6
        n = n_frames * per
        return Features(np.array(["cam2"] * n_frames), np.array([day] * n_frames), rng.uniform(0.4, 0.5, n_frames),
                        rng.uniform(0.2, 0.3, n_frames), np.full(n_frames, per), None,
                        np.repeat(np.arange(n_frames), per), rng.uniform(0.6, 0.95, n),
                        rng.integers(0, 3, n), rng.normal(log_area, 0.3, n))

    cfg = DriftSettings(pool_days=1, permutations=199)
    pre_onset = feats("2026-01-30", 60, 7.0)
    recent = feats("2026-02-06", 60, 7.0)
    days = {"2026-02-12": feats("2026-02-12", 40, 7.0), "2026-02-13": feats("2026-02-13", 40, 5.5)}
    verdicts = {d: {"cam2": Verdict("cam2", d, "drift", ["class_mix:chi2", "embedding:mmd"])} for d in days}
    live = SimpleNamespace(atc_threshold=0.5, mean_confidence=None, overall=None, atc_weight=None)
    run = DriftRun("2026-02-14", list(days), "16", {"carried": {"cam2": {"onset": "2026-02-03",
                                                                        "from_episode": "drift-v9-2026-02-04"}}},
                   pre_onset, {}, verdicts, days, live=live, recent_reference=recent)
    release_carried(run, 0.05, estimator="atc", cfg=cfg, class_names=["a", "b", "c"])
    assert run.verdicts["2026-02-12"]["cam2"].status == "clean"  # like its recent traffic: released
    held = run.verdicts["2026-02-13"]["cam2"]
    assert held.status == "drift" and "a new drift, held" in held.note and "log_area" in held.note


def test_a_carried_cameras_hold_doubles_with_each_earlier_answer_of_its_drift(drift_config: str, fakes: Any) -> None:
    """:func:`flows.drift.answered_graces` on the stored episodes and rounds: cam3's repaint (onset 01-26) was
    answered on 01-27 and again on 02-03, so the episode it was carried from (02-03) holds it 14 days, not 7;
    cam0, carried from the first answer only, 7. A round trained without a promotion answered nothing: carried from
    it, a camera is not held; before it, it does not count. An episode of an earlier drift does not count either."""
    from detloop.contracts import RoundRecord
    from detloop.settings import load_settings
    from flows.drift import answered_graces
    from tasks.drift import Episode
    from tasks.drift_records import save_episodes
    from tasks.rounds import save_round

    s = load_settings(drift_config)
    assert s.drift.hold_days == 7  # the default

    def ep(opened: str, cams: list[str]) -> Episode:
        return Episode(f"drift-v1-{opened}", "1", opened, cams, [opened], round_id=f"r-{opened}")

    older, first, second = ep("2026-01-10", ["cam3"]), ep("2026-01-27", ["cam3", "cam0"]), ep("2026-02-03", ["cam3"])
    save_episodes(fakes.store, s, [older, first, second])
    carried = {"cam3": {"onset": "2026-01-26", "from_episode": second.episode_id},
               "cam0": {"onset": "2026-01-26", "from_episode": first.episode_id},
               "cam1": {"onset": "2026-01-26", "from_episode": "drift-v1-unknown"}}
    graces = answered_graces(s, fakes.store, carried)
    assert {c: g.until for c, g in graces.items()} == {"cam3": "2026-02-17", "cam0": "2026-02-03"}

    def failed(e: Episode) -> None:  # its round trained, its challenger rejected
        save_round(fakes.store, s, RoundRecord(e.round_id, e.opened_on, f"{e.opened_on}T10:00:00+00:00",
                                               f"{e.opened_on}T20:00:00+00:00", "trained", "1", 20, 2,
                                               project=s.label_studio.project_title, reason="drift"))
        fakes.store.put_json(s.s3.data_bucket, f"rounds/{e.round_id}/result.json", {"promoted": False})

    failed(first)
    graces = answered_graces(s, fakes.store, carried)
    assert {c: g.until for c, g in graces.items()} == {"cam3": "2026-02-10"}
    assert answered_graces(s.model_copy(update={"drift": s.drift.model_copy(update={"hold_days": 0})}),
                           fakes.store, carried) == {}


def test_an_answered_carried_camera_is_held_on_days_like_its_traffic_since_the_onset() -> None:
    """:func:`flows.drift.release_carried` with a grace (:func:`tasks.drift.answered_grace`): cam3's estimate stays
    below its pre-onset level (a repaint it under-reads), so nothing is released. A day like its traffic since the
    episode's first day is held from a new episode (``run.held``), although the reference window before that day
    (boxes of another size) would call it a drift; a day whose boxes shrank against that traffic is a new drift and
    is not held; a day after the grace is not held; the days before the champion took over are not judged."""
    from types import SimpleNamespace

    import numpy as np

    from detloop.settings import DriftSettings
    from flows.drift import DriftRun, release_carried
    from tasks.drift import Features, Grace, Verdict

    rng = np.random.default_rng(1)

    def feats(day: str, n_frames: int, log_area: float, conf: float) -> Features:
        per = 6
        n = n_frames * per
        return Features(np.array(["cam3"] * n_frames), np.array([day] * n_frames), rng.uniform(0.4, 0.5, n_frames),
                        rng.uniform(0.2, 0.3, n_frames), np.full(n_frames, per), None,
                        np.repeat(np.arange(n_frames), per), rng.uniform(conf - 0.05, conf + 0.05, n),
                        rng.integers(0, 3, n), rng.normal(log_area, 0.3, n))

    cfg = DriftSettings(pool_days=1, permutations=199)
    pre_onset = feats("2026-01-20", 60, 7.0, 0.9)
    recent = Features.concat([feats("2026-01-24", 60, 8.0, 0.9), feats("2026-01-27", 60, 7.0, 0.4)])
    days = {"2026-01-28": feats("2026-01-28", 40, 7.0, 0.4), "2026-02-01": feats("2026-02-01", 40, 7.0, 0.4),
            "2026-02-02": feats("2026-02-02", 40, 5.5, 0.4), "2026-02-12": feats("2026-02-12", 40, 7.0, 0.4)}
    def verdicts() -> dict[str, dict[str, Verdict]]:
        return {d: {"cam3": Verdict("cam3", d, "drift", ["confidence:ks", "embedding:mmd"])} for d in days}

    live = SimpleNamespace(atc_threshold=0.5, mean_confidence=None, overall=None, atc_weight=None)
    carried = {"cam3": {"onset": "2026-01-19", "episode_onset": "2026-01-26", "from_episode": "drift-v9-2026-01-27"}}
    run = DriftRun("2026-02-13", list(days), "10", {"carried": carried, "anchor": "2026-01-29"}, pre_onset, {},
                   verdicts(), days, live=live, recent_reference=recent)
    grace = Grace("drift-v9-2026-01-27", "round-27", "2026-02-10")
    release_carried(run, 0.05, estimator="atc", cfg=cfg, class_names=["a", "b", "c"], graces={"cam3": grace})
    assert run.held == {"2026-02-01": {"cam3"}}
    assert all(v["cam3"].status == "drift" for v in run.verdicts.values())  # the estimate is not back: no release
    assert "no new episode before 2026-02-10" in run.verdicts["2026-02-01"]["cam3"].note
    new = run.verdicts["2026-02-02"]["cam3"].note
    assert "a new drift" in new and "log_area" in new
    assert "no new episode" not in run.verdicts["2026-01-28"]["cam3"].note + run.verdicts["2026-02-12"]["cam3"].note
    assert any("held from a new episode until 2026-02-10" in n for n in run.notes)
    plain = DriftRun("2026-02-13", list(days), "10", {"carried": carried, "anchor": "2026-01-29"}, pre_onset, {},
                     verdicts(), days, live=live, recent_reference=recent)
    release_carried(plain, 0.05, estimator="atc", cfg=cfg, class_names=["a", "b", "c"])  # no grace: none held
    assert plain.held == {}


def test_the_shrink_note_names_the_first_drifted_day_and_knows_a_camera_already_tiled() -> None:
    """:func:`flows.drift.shrink_notes`: judged on the camera's last drifted day, the measuring command starts at its
    first; a camera the config already tiles is told so; a drift without shrinking gets no note."""
    import math

    from detloop.settings import REPO_ROOT, load_settings
    from flows.drift import DriftRun, shrink_notes
    from tasks.drift import CameraDayStats, Verdict

    days = ["2026-02-09", "2026-02-10", "2026-02-11"]

    def stats(cam: str, day: str, ratio: float) -> CameraDayStats:
        return CameraDayStats(cam, day, 24, 200, 100, 800, "camera", True,
                              summary={"log_area": [7.0, 7.0 + math.log(ratio)]})

    drift = {"2026-02-10", "2026-02-11"}
    verdicts = {d: {"cam2": Verdict("cam2", d, "drift" if d in drift else "clean", ["log_area:ks"] if d in drift else []),
                    "cam1": Verdict("cam1", d, "drift", ["brightness:ks", "embedding:mmd"])} for d in days}
    st = {d: {"cam2": stats("cam2", d, 0.3 if d in drift else 1.0), "cam1": stats("cam1", d, 1.0)} for d in days}
    run = DriftRun("2026-02-12", days, "7", {}, None, st, verdicts, None)  # type: ignore[arg-type]
    plain = load_settings(REPO_ROOT / "configs" / "soak.yaml", env={})
    (note,) = shrink_notes(run, plain)
    assert note.startswith("cam2: its detected boxes are 0.30x their reference area on 2026-02-11")
    assert "`detloop drift tiling cam2 --since 2026-02-10`" in note and "{enabled: true" in note
    (tiled,) = shrink_notes(run, load_settings(REPO_ROOT / "configs" / "soak_zoom.yaml", env={}))
    assert "already tiled (320-px tiles" in tiled and "--since 2026-02-10 --variant t320f --variant t160f" in tiled


def _class_mix_settings(drift_config: str, **drift: Any) -> tuple[Any, Any, list[str], int]:
    """The test config with the soaks' class-mix rule (a 2-day pool, one strong signal, refined p-values) and
    ``drift``: ``(settings, their drift settings, class names, the star's index)``."""
    from detloop.settings import load_settings

    s = load_settings(drift_config)
    cfg = s.drift.model_copy(update={"pool_days": 2, "permutations_refine": 9999, "alarm_strong_alpha": 0.002,
                                     "min_frames": 20, "min_boxes": 20, **drift})
    s = s.model_copy(update={"drift": cfg})
    names = list(s.classes)
    return s, cfg, names, names.index("star") if "star" in names else len(names) - 1


def _star_features(rng: Any, n_classes: int, star: int, cam: str, day: str, n: int, stars: float) -> Any:
    """``n`` frames of 3-8 boxes of ``cam`` on ``day``: the classes at even odds but ``star`` (0.15), then a share
    ``stars`` of the boxes turned into stars."""
    import numpy as np

    from tasks.drift import Features

    k = rng.integers(3, 9, n)
    frame = np.repeat(np.arange(n), k)
    p = np.full(n_classes, 1.0)
    p[star] = 0.15
    cls = rng.choice(n_classes, frame.size, p=p / p.sum())
    cls = np.where(rng.random(frame.size) < stars, star, cls)
    return Features(np.full(n, cam), np.full(n, day), rng.normal(0.5, 0.03, n), rng.normal(0.2, 0.02, n), k, None,
                    frame, rng.uniform(0.5, 0.9, frame.size), cls, rng.normal(7, 0.5, frame.size))


def test_a_class_mix_episode_is_joined_by_the_cameras_whose_share_of_that_class_grew_and_the_report_says_why(
        drift_config: str, fakes: Any) -> None:
    """The sixth tiled soak: more stars everywhere from 02-02; cam0 drifted on its class mix, but cam4 (24 frames a
    day, a champion that finds few of its stars) never did alone and got no episode. The episode that opens on
    cam0's class mix asks the other cameras the one question (did the star share grow there too?): cam4 joins with
    its evidence, the stationary cam2 does not, and cam1, already in an open episode, is not asked."""
    import numpy as np

    from flows.drift import DriftRun, report_markdown, update_episodes
    from tasks.drift import CameraTrack, Episode, Features, MonitorState, compare_day, pooled, verdict
    from tasks.drift_records import save_episodes, save_state

    s, cfg, names, star = _class_mix_settings(drift_config)
    rng = np.random.default_rng(3)

    def feats(cam: str, day: str, n: int, stars: float) -> Features:
        return _star_features(rng, len(names), star, cam, day, n, stars)

    cams = ["cam0", "cam1", "cam2", "cam4"]
    ref = Features.concat([feats(c, "2026-01-30", 168, 0.0) for c in cams])
    shift = {"cam0": 0.2, "cam1": 0.0, "cam2": 0.0, "cam4": 0.04}
    days = ["2026-02-02", "2026-02-03"]
    features = {d: Features.concat([feats(c, d, 24, shift[c]) for c in cams]) for d in days}
    stats = {d: compare_day(ref, pooled(features, d, cfg.pool_days), cfg, names, d) for d in days}
    verdicts = {d: {c: verdict(st, cfg, names) for c, st in stats[d].items()} for d in days}
    assert [verdicts[d]["cam0"].status for d in days] == ["drift", "drift"]
    assert "class_mix:chi2" in verdicts[days[1]]["cam0"].signals
    assert all(verdicts[d]["cam4"].status == "clean" for d in days)  # cam4 alone: nothing
    save_episodes(fakes.store, s, [Episode("drift-v7-2026-01-31", "7", "2026-01-31", ["cam1"], ["2026-01-31"])])
    save_state(fakes.store, s, MonitorState("7", "2026-02-01", {"cam1": CameraTrack(episode="drift-v7-2026-01-31")}))
    for c in ("cam1", "cam2", "cam4"):  # only cam0 drifts: the episode opens on it alone
        for d in days:
            verdicts[d][c].status = "clean"
    meta = {"anchor": "2026-02-02", "anchor_from": "round soak-2026-02-02", "days": ["2026-01-26", "2026-02-01"],
            "frames": ref.n_frames, "frames_per_camera": {c: ref.of_camera(c).n_frames for c in cams}}
    run = DriftRun("2026-02-04", days, "7", meta, ref, stats, verdicts, features)
    announce, episodes = update_episodes(s, fakes.store, run)
    (new,) = [e for e in announce if e.episode_id != "drift-v7-2026-01-31"]
    assert new.opened_on == "2026-02-03" and new.cameras == ["cam0", "cam4"]
    assert list(new.companions) == ["cam4"] and "star share" in new.companions["cam4"]
    assert "grew as on the cameras of drift-v7-2026-02-03" in new.companions["cam4"]
    md = report_markdown(run, s, episodes)
    assert "cam0, cam4 (joined)" in md and "- cam4 joined drift-v7-2026-02-03: star share" in md
    _, again = update_episodes(s, fakes.store, run)  # a re-run: the same episodes, nothing joined twice
    assert [(e.episode_id, e.cameras) for e in again] == [(e.episode_id, e.cameras) for e in episodes]
    off = s.model_copy(update={"drift": cfg.model_copy(update={"companion_alpha": 0.0})})
    from flows.drift import episode_companions

    assert episode_companions(run, off, days[1], new, MonitorState("7"), {}) == ({}, [])


def test_a_camera_whose_share_grows_after_a_class_mix_episode_opened_opens_its_own_episode_with_its_own_round(
        drift_config: str, fakes: Any, tmp_path: Path) -> None:
    """The replay of the sixth soak with companions: more-stars opened its episode a day after the onset, when cam4's
    star share had barely moved, and cam4 was never asked again. With ``drift.companion_days`` the episode asks the
    other cameras on its next days too, on the frames since it opened; cam4, found on a later day, opens an episode
    of its own (the first one's round was chosen already), which is announced with its own targeted round; the
    stationary cam2 joins nothing, and a re-run adds nothing."""
    import numpy as np

    from flows.drift import DriftRun, report_markdown, targeted_round, update_episodes
    from tasks.drift import Features, compare_day, pooled, verdict

    s, cfg, names, star = _class_mix_settings(drift_config, companion_days=5)
    rng = np.random.default_rng(5)

    def feats(cam: str, day: str, n: int, stars: float) -> Features:
        return _star_features(rng, len(names), star, cam, day, n, stars)

    cams = ["cam0", "cam2", "cam4"]
    ref = Features.concat([feats(c, "2026-01-30", 168, 0.0) for c in cams])
    days = ["2026-02-02", "2026-02-03", "2026-02-04", "2026-02-05", "2026-02-06"]
    late = {"2026-02-04", "2026-02-05", "2026-02-06"}  # cam4's stars come after the episode opened

    def share(c: str, d: str) -> float:
        return {"cam0": 0.2, "cam2": 0.0, "cam4": 0.15 if d in late else 0.0}[c]

    features = {d: Features.concat([feats(c, d, 24, share(c, d)) for c in cams]) for d in days}
    stats = {d: compare_day(ref, pooled(features, d, cfg.pool_days), cfg, names, d) for d in days}
    verdicts = {d: {c: verdict(st, cfg, names) for c, st in stats[d].items()} for d in days}
    assert [verdicts[d]["cam0"].status for d in days[:2]] == ["drift", "drift"]
    for c in ("cam2", "cam4"):  # only cam0 drifts on its own
        for d in days:
            verdicts[d][c].status = "clean"
    meta = {"anchor": "2026-02-02", "anchor_from": "round soak-2026-02-02", "days": ["2026-01-26", "2026-02-01"],
            "frames": ref.n_frames, "frames_per_camera": {c: ref.of_camera(c).n_frames for c in cams}}
    run = DriftRun("2026-02-07", days, "7", meta, ref, stats, verdicts, features)
    once = s.model_copy(update={"drift": cfg.model_copy(update={"companion_days": 1})})
    from tests.fakes import fake_clients

    _, alone = update_episodes(once, fake_clients("detloop-detector", tmp_path / "solo").store, run)
    assert [(e.episode_id, e.cameras) for e in alone] == [("drift-v7-2026-02-03", ["cam0"])]  # asked once: missed
    announce, episodes = update_episodes(s, fakes.store, run)
    by_id = {e.episode_id: e for e in episodes}
    parent = by_id["drift-v7-2026-02-03"]
    assert parent.cameras == ["cam0"] and parent.shifted.get("star") == 1 and list(parent.joined_late) == ["cam4"]
    child = by_id[parent.joined_late["cam4"]]
    assert child.cameras == ["cam4"] and child.opened_on in late and child in announce
    assert "star share" in child.companions["cam4"] and "grew as on the cameras of drift-v7-2026-02-03" in \
        child.companions["cam4"]
    target = targeted_round(s, child)
    assert target["cameras"] == ["cam4"] and target["round_id"].endswith(child.episode_id)
    assert "2026-02-04" in target["dates"]  # the days its ask read, not only the day it was found
    md = report_markdown(run, s, episodes)
    assert f"- cam4 joined {child.episode_id}: star share" in md
    _, again = update_episodes(s, fakes.store, run)  # a re-run: nothing joined or opened twice
    assert [(e.episode_id, e.cameras) for e in again] == [(e.episode_id, e.cameras) for e in episodes]
