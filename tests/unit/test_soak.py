"""Pure parts of the soak (``detloop soak``) and the CLI wiring of ``bench drift`` / ``soak``."""

from __future__ import annotations

import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
from typer.testing import CliRunner

from benchmarks.__main__ import bench_app
from benchmarks.soak import (
    FAULT_FLOWS,
    FAULT_SERVICES,
    episode_delays,
    fault_plan,
    lost_and_duplicated,
    markdown_table,
    resumable_rows,
)
from benchmarks.soak_truth import recovery_weeks, world_onsets
from cli.main import app
from detloop.world.config import load_world_config

WORLD = Path(__file__).resolve().parents[2] / "configs" / "world.yaml"


def test_fault_plan_one_fault_per_week_seeded() -> None:
    plan = fault_plan(8, seed=3)
    assert [f.week for f in plan] == list(range(1, 9))
    assert plan == fault_plan(8, seed=3) and plan != fault_plan(8, seed=4)
    assert all(f.service in FAULT_SERVICES and f.flow in FAULT_FLOWS and 0 <= f.day <= 6 for f in plan)
    assert all(f.day == 6 and f.delay_s <= 300 for f in plan if f.flow == "round")  # the round: the last day
    assert all(f.delay_s <= 20 for f in plan if f.flow == "drift")
    assert len({f.service for f in fault_plan(40, 0)}) == len(FAULT_SERVICES)  # every service gets its turn


def test_world_onsets_of_the_demo_world_mid_run() -> None:
    world = load_world_config(WORLD)
    on = world_onsets(world, date(2026, 1, 5), date(2026, 3, 2))
    names = {(o["name"], o["camera"]) for o in on}
    assert ("cam1-dusk", "cam1") in names and ("new camera cam4", "cam4") in names
    assert ("cam2-zoom-out", "cam2") in names
    assert sum(o["name"] == "more-stars" for o in on) == len(world.cameras)  # every camera
    assert world_onsets(world, date(2026, 1, 5), date(2026, 1, 18)) == []  # nothing drifts in the first two weeks


def test_episode_delays_detected_answered_missed() -> None:
    onsets = [{"name": "dusk", "camera": "cam1", "onset": "2026-01-19"},
              {"name": "zoom", "camera": "cam2", "onset": "2026-02-09"}]
    eps = [{"episode_id": "e0", "opened_on": "2026-01-10", "cameras": ["cam1"], "round_id": "r0"},  # before onset
           {"episode_id": "e1", "opened_on": "2026-01-20", "cameras": ["cam1", "cam3"], "round_id": "r1"}]
    d = episode_delays(onsets, eps)
    assert d[0]["episode"] == "e1" and d[0]["delay_days"] == 1 and d[0]["answered"]
    assert not d[1]["detected"] and d[1]["delay_days"] is None and not d[1]["answered"]
    assert d[0]["follow_up_of"] is None
    handed = [{**eps[0], "handed_over": ["cam1"], "followed_by": "e1"}, eps[1]]
    assert episode_delays(onsets, handed)[0]["follow_up_of"] == "e0"  # cam1 was still drifting from e0
    # the episode was given its round id, but the run its event started failed: no round on record
    assert not episode_delays(onsets, eps, rounds=["r0"])[0]["answered"]
    assert episode_delays(onsets, eps, rounds=["r0", "r1"])[0]["answered"]


def test_recovery_weeks() -> None:
    r = recovery_weeks({2: 0.70, 3: 0.60, 4: 0.66, 5: 0.69}, onset_week=3)
    assert r["lowered"] and r["lowest"] == 0.60 and r["recovered_week"] == 5 and r["weeks_to_recover"] == 2
    assert recovery_weeks({2: 0.70, 3: 0.68}, 3)["lowered"] is False
    assert recovery_weeks({2: 0.70, 3: 0.60, 4: 0.61}, 3)["weeks_to_recover"] is None  # not back (yet)
    assert recovery_weeks({3: 0.6}, 3)["lowered"] is None  # no week before the onset


def test_lost_and_duplicated_and_table() -> None:
    assert lost_and_duplicated({"duplicate_tasks": 1, "duplicate_versions": 0, "selected_without_task": 2}, 10, 9) \
        == (1, 3)
    assert lost_and_duplicated({}, 5, 7) == (0, 0)  # more labels pulled than submitted now is not a loss
    t = markdown_table([{"week": 1, "golden_map": 0.41234, "decisions": ["weekly:promoted"], "completed": True}])
    lines = t.splitlines()
    assert len(lines) == 3 and "| 1 |" in lines[2] and "0.412" in lines[2] and "weekly:promoted" in lines[2]


def test_detloop_soak_and_bench_drift_forward_to_the_benchmarks(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    seen: list[list[str]] = []
    monkeypatch.setattr(subprocess, "call", lambda argv: seen.append(argv) or 0)
    res = CliRunner().invoke(app, ["soak", "--weeks", "2"])
    assert res.exit_code == 0 and seen == [[sys.executable, "-m", "benchmarks", "soak", "--weeks", "2"]]
    out = CliRunner().invoke(bench_app, ["--help"]).output
    assert " drift " in out and " soak " in out
    h = CliRunner().invoke(bench_app, ["drift", "--", "--help"])
    assert h.exit_code == 0 and "--frames-per-day" in h.output and "--stationary" in h.output


def test_resume_carries_the_leading_completed_weeks_of_the_same_soak_only() -> None:
    size = {"frames_per_day": 24, "budget": 24}
    prev = {"identity": "abc", "size": size, "seed": 0, "rows": [{"week": 1, "completed": True, "as_of": "2026-01-12"},
                                              {"week": 2, "completed": True, "as_of": "2026-01-19"},
                                              {"week": 3, "completed": False, "error": "x"},
                                              {"week": 4, "completed": True}]}
    assert [r["week"] for r in resumable_rows(prev, 8, size, 0, "abc")] == [1, 2]  # stops at the first failed week
    assert [r["week"] for r in resumable_rows(prev, 1, size, 0, "abc")] == [1]  # never more than asked
    assert resumable_rows(None, 8, size, 0, "abc") == []
    for other in ((8, {**size, "budget": 48}, 0, "abc"), (8, size, 1, "abc"), (8, size, 0, "other")):
        with pytest.raises(ValueError, match="another soak"):
            resumable_rows(prev, *other)
    old = {k: v for k, v in prev.items() if k != "identity"}  # a result written before soaks had an identity
    with pytest.raises(ValueError, match="another soak"):
        resumable_rows(old, 8, size, 0, "abc")


def test_a_soak_is_identified_by_its_settings() -> None:
    from benchmarks.soak import soak_identity
    from detloop.settings import REPO_ROOT, load_settings

    a = load_settings(REPO_ROOT / "configs" / "soak.yaml", env={})
    b = load_settings(REPO_ROOT / "configs" / "soak.yaml", env={}, overrides={"selection": {"budget": 48}})
    assert soak_identity(a) == soak_identity(load_settings(REPO_ROOT / "configs" / "soak.yaml", env={}))
    assert soak_identity(a) != soak_identity(b)
    # secrets are not what a soak is: the soak machine has them set, a machine resuming it may not
    secret = load_settings(REPO_ROOT / "configs" / "soak.yaml", env={"DETLOOP_S3__ACCESS_KEY_ID": "k",
                                                                     "DETLOOP_LABEL_STUDIO__API_TOKEN": "t"})
    assert secret.s3.access_key_id is not None and soak_identity(secret) == soak_identity(a)


def test_an_option_added_at_null_keeps_every_settings_hash() -> None:
    from benchmarks._common import legacy_settings_hash, settings_hash
    from detloop.settings import REPO_ROOT, load_settings

    dump = load_settings(REPO_ROOT / "configs" / "soak.yaml", env={}).model_dump(mode="json", exclude={"source"})
    grown = {**dump, "selection": {**dump["selection"], "new_option": None, "cost": {**dump["selection"]["cost"],
                                                                                       "another": None}}}
    assert settings_hash(grown, 12) == settings_hash(dump, 12)
    assert legacy_settings_hash(grown, 12) != legacy_settings_hash(dump, 12)  # what broke resumes before
    on = {**dump, "selection": {**dump["selection"], "new_option": 1.0}}  # switched on: another configuration
    assert settings_hash(on, 12) != settings_hash(dump, 12)
    assert settings_hash({"a": [{"b": None, "c": 1}]}, 8) == settings_hash({"a": [{"c": 1}]}, 8)


def test_a_result_keyed_the_older_way_resumes_and_records_the_migration() -> None:
    from benchmarks.soak import identity_migrations, legacy_soak_identities, soak_identity
    from detloop.settings import REPO_ROOT, load_settings

    s = load_settings(REPO_ROOT / "configs" / "soak.yaml", env={})
    old = sorted(legacy_soak_identities(s))
    assert len(old) == 3 and soak_identity(s) not in old
    size = {"frames_per_day": 24}
    prev = {"identity": old[0], "size": size, "seed": 0,
            "identity_migrated": {"from": "aaa", "to": old[0], "why": "by hand"},
            "rows": [{"week": 1, "completed": True, "as_of": "2026-01-12"}]}
    assert [r["week"] for r in resumable_rows(prev, 8, size, 0, soak_identity(s), old)] == [1]
    with pytest.raises(ValueError, match="another soak"):  # the legacy identities of other settings do not pass
        resumable_rows(prev, 8, size, 0, soak_identity(s), ["bbb"])
    m = identity_migrations(prev, soak_identity(s))
    assert [(x["from"], x["to"]) for x in m] == [("aaa", old[0]), (old[0], soak_identity(s))]
    assert identity_migrations({**prev, "identity": soak_identity(s)}, soak_identity(s))[-1]["from"] == "aaa"
    assert identity_migrations(None, soak_identity(s)) == []


def test_an_option_added_at_its_default_keeps_a_running_soak_resumable() -> None:
    from benchmarks._common import settings_hash
    from benchmarks.soak import legacy_soak_identities, soak_identity, without_added_defaults
    from detloop.settings import REPO_ROOT, load_settings

    s = load_settings(REPO_ROOT / "configs" / "soak.yaml", env={})
    dump = s.model_dump(mode="json", exclude={"source"})
    added = {"release_check_min_frames": 20, "pool_days": 2, "alarm_strong_alpha": 0.002}
    before = {**dump, "drift": {k: v for k, v in dump["drift"].items() if k not in added}}
    assert without_added_defaults(dump) == before and all(dump["drift"][k] == v for k, v in added.items())
    assert settings_hash(before, 12) in legacy_soak_identities(s) and settings_hash(before, 12) != soak_identity(s)
    # set to anything but its added default, the option is another configuration: no identity of before matches
    other = load_settings(REPO_ROOT / "configs" / "soak.yaml", env={},
                          overrides={"drift": {"release_check_min_frames": 10}})
    assert settings_hash(before, 12) not in legacy_soak_identities(other)
    assert without_added_defaults({"drift": {"other": 1}}) == {"drift": {"other": 1}}


def test_recovery_weeks_charges_a_drop_to_the_drift_before_it() -> None:
    # week 4 falls because of the camera's next drift (week 4): not charged to the drift of week 3
    s = {2: 0.70, 3: 0.69, 4: 0.55, 5: 0.70}
    assert recovery_weeks(s, 3, until=4)["lowered"] is False
    r = recovery_weeks(s, 3)
    assert r["lowered"] is True and r["weeks_to_recover"] == 2


def test_soak_finetune_table_lists_the_run_and_every_variant_with_its_golden_delta() -> None:
    from benchmarks.soak_finetune import mean_true, table

    rows = [{"round": "r1", "champion": "1", "champion_true": {"cam0": 0.5, "cam3": 0.3},
             "run": {"version": "5", "outcome": "rejected", "golden_delta": -0.009, "true": {"cam0": 0.5, "cam3": 0.4}},
             "variants": {"bias-lr-0": {"outcome": "passed", "golden_delta": 0.012,
                                        "true": {"cam0": 0.6, "cam3": None}}}}]
    md = table(rows)
    assert "| r1 | champion v1 | - | - | 0.400 |" in md
    assert "run's challenger v5 | -0.0090 | rejected | 0.450" in md
    assert "| | bias-lr-0 | +0.0120 | passed | 0.600 | cam0 0.600, cam3 - |" in md
    assert mean_true({"a": None}) is None


def test_labels_paid_are_what_the_round_pulled_even_when_labelled_before_a_resume() -> None:
    from types import SimpleNamespace

    from benchmarks.soak import _count

    class Store:
        def get_json(self, bucket: str, key: str) -> dict[str, int]:
            assert key == "rounds/soak-2026-02-09/labels_report.json"
            return {"labelled": 24}

    settings = SimpleNamespace(s3=SimpleNamespace(data_bucket="data"))
    row = {"labels": 5, "duplicates": 0, "lost": 0}
    _count(row, {}, {"annotated": 0}, Store(), settings, "soak-2026-02-09")  # this process submitted none
    assert row == {"labels": 29, "duplicates": 0, "lost": 0}
    row = {"labels": 0, "duplicates": 0, "lost": 0}
    _count(row, {"duplicate_tasks": 1}, {"annotated": 26}, Store(), settings, "soak-2026-02-09")
    assert row == {"labels": 24, "duplicates": 1, "lost": 2}  # 2 submitted annotations the pull did not get


def test_a_faulted_run_returns_only_once_the_killed_service_is_back(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The fifth soak's week 5: Label Studio killed during a monitor run that does not need it; the run completed
    and the annotators, next, found it still restarting. After a kill, ``faulted`` waits for the service."""
    import time as _time

    import benchmarks.faults as faults_mod
    import benchmarks.soak as soak_mod
    import infra.stack as stack_mod
    from benchmarks.soak import Fault, faulted

    calls: list[str] = []
    monkeypatch.setattr(soak_mod, "RESTART_AFTER_S", 0.0)
    monkeypatch.setattr(faults_mod, "service_killer", lambda stack, service, after: lambda: calls.append(f"kill {service}"))
    monkeypatch.setattr(stack_mod, "ensure_up", lambda stack, *a, **k: calls.append("ensure_up"))

    def run() -> dict[str, int]:
        _time.sleep(0.2)
        calls.append("run done")
        return {"ok": 1}

    outcome, res = faulted(Fault(5, "label-studio", "drift", 4, 0.01), object(), run, lambda m: None)
    assert (outcome, res) == ("completed", {"ok": 1})
    assert calls == ["kill label-studio", "run done", "ensure_up"]

    calls.clear()  # the run ended before its fault: nothing killed, nothing to wait for
    outcome, _ = faulted(Fault(5, "label-studio", "drift", 4, 30.0), object(), run, lambda m: None)
    assert outcome == "completed" and calls == ["run done"]


def test_the_zoom_soak_differs_from_the_soak_only_where_it_says() -> None:
    # configs/soak_zoom.yaml: the soak's settings, its own state, cam2 tiled; its world: the demo world's zoom-out
    # alone, moved to the last day of week 3, and no new camera
    from detloop.settings import REPO_ROOT, load_settings
    from detloop.world.config import load_world_config

    soak = load_settings(REPO_ROOT / "configs" / "soak.yaml", env={})
    zoom = load_settings(REPO_ROOT / "configs" / "soak_zoom.yaml", env={})
    assert zoom.data_dir != soak.data_dir and zoom.mlflow.model_name != soak.mlflow.model_name
    for section in ("selection", "training", "evaluation", "gate", "drift", "s3", "stack"):
        assert getattr(zoom, section) == getattr(soak, section), section
    assert zoom.model.tile_spec("cam2") is not None
    assert [c for c in ("cam0", "cam1", "cam3") if zoom.model.tile_spec(c) is not None] == []
    assert soak.model.tile_spec("cam2") is None
    demo, world = (load_world_config(s.world_config_path()) for s in (soak, zoom))
    (zd,) = world.drift
    (dd,) = [d for d in demo.drift if d.name == zd.name]
    assert zd.model_copy(update={"start": dd.start}) == dd and zd.start == date(2026, 1, 26)
    assert [c.id for c in world.cameras] == [c.id for c in demo.cameras if c.active_from is None]
    assert world.classes == demo.classes and world.objects == demo.objects and world.nuisance == demo.nuisance


def test_the_drift_allowance_soak_differs_from_the_zoom_soak_only_in_its_gate_and_state() -> None:
    from detloop.settings import REPO_ROOT, load_settings

    zoom = load_settings(REPO_ROOT / "configs" / "soak_zoom.yaml", env={})
    gate = load_settings(REPO_ROOT / "configs" / "soak_zoom_gate.yaml", env={})
    assert gate.data_dir != zoom.data_dir and gate.mlflow.model_name != zoom.mlflow.model_name
    for section in ("selection", "training", "evaluation", "drift", "s3", "stack", "model", "world"):
        assert getattr(gate, section) == getattr(zoom, section), section
    assert zoom.gate.drift_golden_tol == 0.0 and gate.gate.drift_golden_tol > 0
    assert gate.gate.model_copy(update={"drift_golden_tol": 0.0}) == zoom.gate


def test_the_tiled_eight_week_soak_is_the_soak_with_the_zoom_soaks_tiling_and_gate() -> None:
    from detloop.settings import REPO_ROOT, load_settings

    soak, tiled, gate = (load_settings(REPO_ROOT / "configs" / f"{n}.yaml", env={})
                         for n in ("soak", "soak_tiled", "soak_zoom_gate"))
    assert tiled.data_dir != soak.data_dir and tiled.mlflow.model_name != soak.mlflow.model_name
    for section in ("selection", "training", "evaluation", "drift", "s3", "stack", "world"):
        assert getattr(tiled, section) == getattr(soak, section), section
    assert tiled.model == gate.model and tiled.gate == gate.gate
