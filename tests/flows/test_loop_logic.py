"""The loop's flows, run for real by Prefect, over in-memory services (see ``conftest.py``)."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pytest

START = date(2026, 1, 5)
AS_OF = date(2026, 1, 12)


@pytest.fixture
def world(config: str, fakes: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A week of production frames in the fake S3 and a random-weights champion in the fake registry."""
    import shutil

    from detloop.settings import load_settings
    from detloop.world.publish import publish_world
    from tasks.export import make_random_artifact

    s = load_settings(config)
    publish_world(s, START, 7, 3, store=fakes.store, threads=4)
    art_root = tmp_path_factory.getbasetemp() / "random-artifact"
    art = make_random_artifact(art_root / "scoring", list(s.classes), s.model.input_size)
    files = tmp_path_factory.mktemp("model")
    shutil.copytree(art, files / "scoring")
    (files / "weights").mkdir()
    (files / "weights" / "best.pt").write_bytes(b"not used by scoring")
    from tasks.registry import promote

    v1 = fakes.registry.add_model(files, run_id="run-boot", tags={"detloop.dataset_version": ""}, alias=None)
    promote(s, fakes.registry, fakes.store, v1, override=True, reason="the test's champion", actor="test")
    return s


def test_a_week_opens_one_round_and_a_rerun_resumes_it(world: Any, config: str, fakes: Any) -> None:
    from flows.loop import select_for_labeling
    from flows.params import SelectParams
    from tasks.rounds import load_round, round_id_for

    out = select_for_labeling(SelectParams(config=config, as_of=AS_OF, budget=10))
    rid = round_id_for(world.label_studio.project_title, AS_OF)
    assert out["round_id"] == rid and out["selected"] + out["control"] == 10 and out["imported"] == 10
    assert len(fakes.labels.tasks) == 10 and load_round(fakes.store, world, rid).status == "open"
    reads = fakes.store.reads
    again = select_for_labeling(SelectParams(config=config, as_of=AS_OF, budget=10))
    assert again["round_id"] == rid and again["imported"] == 0 and again["already_present"] == 10
    assert len(fakes.labels.tasks) == 10
    assert fakes.store.reads - reads < 40  # resumed from the stored selection: no frame scored again
    # the next week, while this round is still open: `rounds.on_open_round: skip`
    skipped = select_for_labeling(SelectParams(config=config, as_of=date(2026, 1, 19), budget=10))
    assert "still open" in skipped["skipped"] and len(fakes.labels.tasks) == 10


def test_a_rejected_request_fails_once_while_an_outage_is_retried(world: Any, config: str, fakes: Any,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from detloop.errors import ServiceRejected, ServiceUnavailable
    from flows.loop import select_for_labeling
    from flows.params import SelectParams

    real = fakes.labels.import_tasks
    calls: list[int] = []

    def rejected(project_id: int, tasks: Any) -> list[int]:
        calls.append(len(tasks))
        raise ServiceRejected("Label Studio at http://fake-ls: HTTP 400 on import: bad task")

    monkeypatch.setattr(fakes.labels, "import_tasks", rejected)
    with pytest.raises(ServiceRejected):
        select_for_labeling(SelectParams(config=config, as_of=AS_OF, budget=6))
    assert len(calls) == 1  # never retried

    def flaky(project_id: int, tasks: Any) -> list[int]:
        calls.append(len(tasks))
        if len(calls) == 2:
            raise ServiceUnavailable("Label Studio at http://fake-ls is not reachable (import): ReadTimeout")
        return real(project_id, tasks)

    monkeypatch.setattr(fakes.labels, "import_tasks", flaky)
    out = select_for_labeling(SelectParams(config=config, as_of=AS_OF, budget=6))
    assert len(calls) == 3 and out["imported"] == 6 and len(fakes.labels.tasks) == 6  # retried once, no duplicate


def test_watch_announces_a_finished_round_once(world: Any, config: str, fakes: Any,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.loop import select_for_labeling, watch_rounds
    from flows.params import SelectParams, WatchParams

    events: list[dict[str, Any]] = []
    monkeypatch.setattr("prefect.events.emit_event", lambda **kw: events.append(kw))
    rid = select_for_labeling(SelectParams(config=config, as_of=AS_OF, budget=6))["round_id"]
    watch_rounds(WatchParams(config=config))
    assert [e["event"] for e in events] == ["detloop.annotation.round.ready"]  # from the select flow
    for tid in list(fakes.labels.tasks):
        fakes.labels.create_annotation(tid, [])
    watch_rounds(WatchParams(config=config))
    watch_rounds(WatchParams(config=config))
    done = [e for e in events if e["event"] == "detloop.annotation.round.completed"]
    assert len(done) == 1 and done[0]["payload"]["round_id"] == rid and done[0]["payload"]["labelled"] == 6
    assert done[0]["payload"]["config"] == config  # the triggered retrain runs with the same settings


def test_promote_and_rollback_move_the_aliases_and_log_who_and_why(world: Any, config: str, fakes: Any,
                                                                   tmp_path: Path) -> None:
    from flows.loop import promote, rollback
    from flows.params import PromoteParams, RollbackParams
    from tasks.registry import PromotionError, read_promotion_log

    reg = fakes.registry
    files = reg.get_version("1").files
    v2 = reg.add_model(files, run_id="run-2", tags={"gate.passed": "false", "gate.reasons": "golden mAP dropped"},
                       alias=None)
    with pytest.raises(PromotionError, match="did not pass the gate"):
        promote(PromoteParams(config=config, version=v2, reason="try"))
    entry = promote(PromoteParams(config=config, version=v2, reason="field test", override=True, who="ana"))
    assert entry["action"] == "override" and reg.aliases() == {"champion": v2, "previous-champion": "1"}
    assert promote(PromoteParams(config=config, version=v2, reason="again", override=True))["action"] == "noop"
    back = rollback(RollbackParams(config=config, reason="regression", who="ana"))
    assert back["version"] == "1" and reg.aliases()["champion"] == "1"
    log = read_promotion_log(fakes.store, world)
    assert [(e["action"], e["version"], e["actor"]) for e in log][1:] == [("override", v2, "ana"), ("rollback", "1", "ana")]


def test_a_champion_moved_in_mlflows_ui_stops_the_weekly_round_until_an_override_records_it(
        world: Any, config: str, fakes: Any) -> None:
    from flows.loop import promote, select_for_labeling
    from flows.params import PromoteParams, SelectParams
    from tasks.registry import ChampionDrift, check_champion, read_promotion_log

    reg = fakes.registry
    v2 = reg.add_model(reg.get_version("1").files, run_id="run-2", tags={"gate.passed": "false"}, alias=None)
    reg.set_alias("champion", v2)  # what MLflow's alias buttons do: no gate, no promotion log
    assert check_champion(world, reg, fakes.store).drifted
    with pytest.raises(ChampionDrift, match=rf"@champion is v{v2}, but the promotion log records v1"):
        select_for_labeling(SelectParams(config=config, as_of=AS_OF, budget=6))
    assert fakes.labels.tasks == {}  # no round was opened on it
    entry = promote(PromoteParams(config=config, version=v2, reason="kept after a field check", override=True, who="ana"))
    assert entry["action"] == "record" and reg.aliases()["champion"] == v2
    assert read_promotion_log(fakes.store, world)[-1]["version"] == v2 and not check_champion(world, reg, fakes.store).drifted
    out = select_for_labeling(SelectParams(config=config, as_of=AS_OF, budget=6))
    assert out["model_version"] == v2 and out["imported"] == 6


def test_a_following_watch_keeps_checking_until_the_round_is_done(world: Any, config: str, fakes: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``follow``: one run checks every watch interval while a round is open (the labellers finish meanwhile)."""
    import time as time_mod

    from flows.loop import select_for_labeling, watch_rounds
    from flows.params import SelectParams, WatchParams

    events: list[dict[str, Any]] = []
    monkeypatch.setattr("prefect.events.emit_event", lambda **kw: events.append(kw))
    rid = select_for_labeling(SelectParams(config=config, as_of=AS_OF, budget=4))["round_id"]
    waits: list[float] = []
    real_sleep = time_mod.sleep

    def labellers_work_meanwhile(seconds: float) -> None:
        if seconds >= 5:  # the watch's wait between checks (the test config's interval is 60 s)
            waits.append(seconds)
            if len(waits) == 2:
                for tid in list(fakes.labels.tasks):
                    fakes.labels.create_annotation(tid, [])
            return
        real_sleep(seconds)

    monkeypatch.setattr(time_mod, "sleep", labellers_work_meanwhile)
    report = watch_rounds(WatchParams(config=config, follow=True))
    assert waits == [world.prefect.watch_interval_seconds] * 2  # three checks, then the round was done
    assert report["rounds"][0]["round_id"] == rid and report["rounds"][0]["emitted"]
    assert [e["event"] for e in events].count("detloop.annotation.round.completed") == 1


def test_error_weighting_lifts_the_champions_failing_camera_and_off_changes_nothing(world: Any, config: str,
                                                                                     fakes: Any) -> None:
    """The selection flow reads the champion's stored breakdown (a round's evaluation writes it per version):
    enabled, frames of the camera it fails on weigh up and the others down; disabled, the scores are untouched."""
    from flows.selection import select_frames
    from tasks.error_analysis import store_breakdown

    # held off so the runs compare score for score: the regime rule's random representative is seeded by the run
    # id, and the seconds cap turns scores into penalised ranks when a window is dear (here every frame scores alike)
    fixed = {"regime": {"enabled": False}, "cost": {"seconds_cap": None}}
    on = {"selection": {**fixed, "error_weighting": {"enabled": True, "cap": 3.0}}}
    missing = select_frames(AS_OF, "ew-missing", config, on).result
    assert any("no golden breakdown of champion v1" in n for n in missing.notes)
    assert "error_weight" not in missing.report["pool"]

    cams = sorted(set(missing.report["pool"]["camera"]))
    assert len(cams) >= 2
    bad = cams[0]
    groups = {f"camera_{c}": {"sufficient": True, "ap": 0.1 if c == bad else 0.9} for c in cams}
    store_breakdown(fakes.store, world.s3.data_bucket, world.mlflow.model_name, "1", {"golden": {"groups": groups}},
                    {"round_id": "r-before", "run_id": "run-boot", "role": "champion"})

    off = select_frames(AS_OF, "ew-off", config, {"selection": fixed}).result
    assert off.report["error_weighting"] == {"enabled": False} and "error_weight" not in off.report["pool"]
    # the scores of a run with no breakdown at all (that one scored; this one reads the stored, rounded predictions)
    assert off.final_scores == pytest.approx(missing.final_scores, rel=1e-4)

    run = select_frames(AS_OF, "ew-on", config, on).result
    w = np.array(run.report["pool"]["error_weight"])
    is_bad = np.array([c == bad for c in run.report["pool"]["camera"]])
    assert (w[is_bad] > 1.0).all() and (w[~is_bad] < 1.0).all()
    assert run.final_scores == pytest.approx(off.final_scores * w, rel=1e-3)  # (the report rounds w to 4 places)
    rep = run.report["error_weighting"]
    assert rep["source"]["version"] == "1" and rep["source"]["round_id"] == "r-before"
    assert rep["up_weighted"] == int(is_bad.sum()) and rep["weights"]["camera"][bad] > 1.0


def test_the_rare_class_search_reads_the_labelled_manifest_once(world: Any, config: str, fakes: Any,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Class balance and the rare-class search weigh against the same labelled version: one read of its manifest.
    A confidence bar no random-weights box clears makes every labelled class 'never detected'; the search would
    stand down for that (a champion that detects nothing singles no class out), so here it is told not to."""
    import detloop.datasets
    import tasks.selection
    from detloop.world.publish import publish_labelled_set
    from flows.selection import select_frames
    from tasks.acquisition import RareTargets, never_detected


    vid = publish_labelled_set(world, "seed", frames=12, store=fakes.store)
    reads: list[str] = []
    load = detloop.datasets.load_manifest
    monkeypatch.setattr(detloop.datasets, "load_manifest",
                        lambda store, settings, version: reads.append(version) or load(store, settings, version))
    blind = select_frames(AS_OF, "rare-blind", config, {"selection": {"conf_threshold": 0.999}}).result
    assert "none of the" in blind.report["rare_search"]["stood_down"] and blind.report["rare_search"]["picked"] == 0
    assert not any("embedded" in n for n in blind.notes)  # standing down embeds no exemplars
    assert reads == [vid]  # class balance
    reads.clear()
    monkeypatch.setattr(tasks.selection, "rare_search_targets",
                        lambda det, counts, n, *_: RareTargets(never_detected(det, counts, n)))
    run = select_frames(AS_OF, "rare-once", config, {"selection": {"conf_threshold": 0.999}}).result
    assert reads == [vid]
    searched = run.report["rare_search"]["classes"]
    assert searched and all(r["exemplars"] > 0 for r in searched.values())
    assert any("rare-class search" in n and vid in n and "embedded" in n for n in run.notes)


def test_cost_calibration_fits_the_pulled_rounds_ledgers_and_says_when_there_are_none(world: Any, config: str,
                                                                                   fakes: Any) -> None:
    """With ``selection.cost.calibration`` the selection flow fits the expected seconds on the outcome ledgers of
    the rounds already pulled; before any, it says so and prices boxes as before."""
    from datetime import datetime

    from detloop.label_cost import OutcomeTally
    from flows.selection import select_frames
    from tasks import rounds

    on = {"selection": {"cost": {"calibration": {"prior_boxes": 5, "rounds": 2}}}}
    first = select_frames(AS_OF, "cal-none", config, on).result
    assert any("no labelled round with an outcome ledger yet" in n for n in first.notes)
    assert "calibration" not in first.report["cost"]

    ledger = OutcomeTally(frames=30)
    ledger.shown[:, 1] = 40  # every shown box was adjusted: dearer than confidences alone say
    rounds.open_round(fakes.store, world, "r-before", "2026-01-05", "1", 30, 0, now=datetime(2026, 1, 5))
    rounds.mark_round(fakes.store, world, "r-before", status="trained")
    fakes.store.put_json(world.s3.data_bucket, rounds.labels_report_key("r-before"),
                         {"label_outcomes": ledger.to_dict()})
    run = select_frames(AS_OF, "cal-on", config, on).result
    assert any("outcome ledgers of 1 round(s) (r-before)" in n for n in run.notes)
    assert run.report["cost"]["calibration"]["boxes"] == 400
    assert run.report["cost"]["pool_mean_expected_seconds"] > first.report["cost"]["pool_mean_expected_seconds"]
