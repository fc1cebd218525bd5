"""The loop end to end through the real deployments served by the stack's runner, at a tiny size.

One module-scoped world: its own production prefix, Label Studio project, MLflow experiment and
registered model (the stack's buckets are shared: SeaweedFS runs out of volumes with many buckets).
The config travels as the flows' ``config`` parameter, so the runner (started with configs/test.yaml)
runs these flows on the test's isolated settings.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

import pytest
import yaml

from flows.common import DEPLOYMENTS as D

pytestmark = pytest.mark.slow

START = date(2026, 1, 5)
BUDGET = 8


def _run(name: str, params: dict, timeout: float = 900):  # type: ignore[no-untyped-def]
    from prefect.deployments import run_deployment

    return run_deployment(name, parameters={"params": params}, timeout=timeout)


def _isolated_config(stack_settings, sfx: str) -> dict:  # type: ignore[no-untyped-def]
    """The test stack's config with this world's own prefix, project, experiment and model; tiny training."""
    cfg = yaml.safe_load((Path(stack_settings.source)).read_text())
    cfg["data_dir"] = str(stack_settings.data_dir)
    # the stack's resolved addresses (DETLOOP_TEST_PORT_OFFSET moves them; the runner reads only this file)
    cfg["s3"] = {**cfg.get("s3", {}), "production_prefix": f"flowtest-{sfx}/frames/",
                 "endpoint_url": stack_settings.s3.endpoint_url}
    cfg["label_studio"] = {**cfg.get("label_studio", {}), "project_title": f"detloop-flowtest-{sfx}",
                           "url": stack_settings.label_studio.url}
    cfg["mlflow"] = {**cfg.get("mlflow", {}), "experiment": f"flowtest-{sfx}", "model_name": f"flowtest-{sfx}",
                     "tracking_uri": stack_settings.mlflow.tracking_uri}
    cfg["prefect"] = {**cfg.get("prefect", {}), "api_url": stack_settings.prefect.api_url}
    cfg["stack"] = {**cfg.get("stack", {}), "ports": stack_settings.stack.ports.model_dump()}
    cfg["training"] = {**cfg.get("training", {}), "bootstrap_epochs": 2, "finetune_epochs": 1}
    cfg["gate"] = {"bootstrap_floor": 0.0, "min_delta": -1.0, "class_tol": 1.0, "small_tol": 1.0,
                   "latency_ratio_max": 100.0}
    cfg["evaluation"] = {**cfg.get("evaluation", {}), "min_instances": 5}
    return cfg


@pytest.fixture(scope="module")
def world(stack_settings, tmp_path_factory):  # type: ignore[no-untyped-def]
    from detloop.settings import load_settings
    from detloop.world.publish import publish_golden, publish_seed, publish_world
    from flows.demo import _wait_for_deployments

    sfx = uuid.uuid4().hex[:8]
    cfg = _isolated_config(stack_settings, sfx)
    # the retrain path with per-frame repeats (rare-class oversampling, on in configs/local.yaml, and mining):
    # the sample-weights task, materialize with repeats, training on the longer list
    cfg["training"]["sample_weights"] = {"rare_oversampling": True, "rare_share": 0.25, "mining": True}
    path = tmp_path_factory.mktemp("flowtest") / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    s = load_settings(path)
    publish_world(s, START, 14, 2)
    golden = publish_golden(s, frames=24)
    seed = publish_seed(s, frames=30)
    cfg["evaluation"]["golden_version"] = golden
    path.write_text(yaml.safe_dump(cfg))
    s = load_settings(path)
    _wait_for_deployments(timeout=120)
    return {"cfg": str(path), "s": s, "seed": seed, "golden": golden, "sfx": sfx}


def _tasks(s):  # type: ignore[no-untyped-def]
    from detloop.clients.labelstudio import LabelStudioClient

    ls = LabelStudioClient(s)
    p = ls.find_project(s.label_studio.project_title)
    return [] if p is None else list(ls.iter_tasks(p.id, [], fields="task_only"))


def test_deployments_are_named_after_what_they_do_and_their_forms_are_typed(world):  # type: ignore[no-untyped-def]
    """What an operator sees in the Prefect UI: deployment names, the run form (drop-downs, no None type, the
    configured values pre-filled) and a watcher that does not fill the runs list with scheduled runs."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    from detloop.settings import load_settings

    runner_cfg = load_settings(world["s"].data_dir / "stack-config.yaml")
    with get_client(sync_client=True) as client:
        deps = {name: client.read_deployment_by_name(name) for name in D.values()}
        assert all(d.name != "manual" for d in deps.values())
        select = deps[D["select"]]
        schema = select.parameter_openapi_schema
        props = schema["definitions"]["SelectParams"]["properties"]
        assert "entropy" in props["strategy"]["enum"] and "kcenter" in props["diversity"]["enum"]
        assert props["budget"]["minimum"] == 1
        for d in deps.values():
            assert '"null"' not in json.dumps(d.parameter_openapi_schema), d.name  # no "Property is type None"
        assert select.parameters["params"]["budget"] == runner_cfg.selection.budget  # the form shows the config
        assert select.parameters["params"]["strategy"] == runner_cfg.selection.strategy
        watch = deps[D["watch"]]
        assert any("round.ready" in json.dumps(t.model_dump(mode="json")) for t in
                   client.read_resource_related_automations(f"prefect.deployment.{watch.id}"))
        scheduled = client.count_flow_runs(
            deployment_filter=DeploymentFilter(id={"any_": [watch.id]}),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                any_=[StateType.SCHEDULED]))))
        assert scheduled <= 4  # the daily safety net's 3 + at most one chained watch (a minute schedule kept 60)


def test_a_retrain_waiting_to_start_is_seen_and_a_dead_running_one_is_not(world):  # type: ignore[no-untyped-def]
    """What the watch asks Prefect before re-announcing a round whose retrain died (flows.common.retrain_waiting):
    a scheduled retrain run of the round is waiting; the same run left "Running" by a dead runner is not."""
    from datetime import UTC, datetime

    from prefect import get_client
    from prefect.states import Running, Scheduled

    from flows.common import retrain_waiting

    waiting = retrain_waiting()
    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(D["retrain"])
        fr = client.create_flow_run_from_deployment(
            dep.id, parameters={"params": {"config": world["cfg"], "round_id": "stall-probe"}},
            state=Scheduled(scheduled_time=datetime.now(UTC) + timedelta(days=1)))
        try:
            assert waiting("stall-probe") and not waiting("another-round")
            client.set_flow_run_state(fr.id, Running(), force=True)  # what a runner killed mid-run leaves behind
            assert not waiting("stall-probe")
        finally:
            client.delete_flow_run(fr.id)


def test_invalid_parameters_are_rejected_at_creation(world):  # type: ignore[no-untyped-def]
    with pytest.raises(Exception, match=r"(?i)validat|budget|greater"):
        _run(D["select"], {"config": world["cfg"], "budget": -5}, timeout=0)
    with pytest.raises(Exception, match=r"(?i)validat|round_id|required"):
        _run(D["retrain"], {"config": world["cfg"]}, timeout=0)


def test_full_round_through_deployments_and_event(world):  # type: ignore[no-untyped-def]
    from detloop.clients.registry import RegistryClient
    from detloop.clients.s3 import S3Store
    from detloop.sim.annotator import AnnotatorProfile, annotate_pending
    from flows.demo import _wait_for_retrain, run_watch
    from tasks.registry import list_models
    from tasks.rounds import load_round, round_id_for

    s, cfg = world["s"], world["cfg"]
    store = S3Store(s)

    # no champion yet: selection says so clearly
    fr = _run(D["select"], {"config": cfg, "as_of": str(START + timedelta(days=7))})
    assert fr.state.is_failed() and "no champion" in (fr.state.message or "") + str(fr.state)

    # bootstrap through its deployment; a second run sees the champion and does nothing
    took_over = str(START + timedelta(days=3))  # a bootstrap for a past day: the drift reference is before it
    fr = _run(D["bootstrap"], {"config": cfg, "dataset_version": world["seed"], "as_of": took_over})
    assert fr.state.is_completed(), fr.state.message
    fr = _run(D["bootstrap"], {"config": cfg, "dataset_version": world["seed"]})
    assert fr.state.is_completed()
    assert len(list_models(RegistryClient(s))) == 1
    assert RegistryClient(s).version_by_alias("champion").tags["detloop.as_of"] == took_over

    # a manual run with parameters from the prefect CLI, as a user would type it
    as_of = START + timedelta(days=7)
    out = subprocess.run(
        [str(Path(sys.executable).parent / "prefect"), "deployment", "run", D["select"],
         "--params", json.dumps({"params": {"config": cfg, "as_of": str(as_of), "budget": BUDGET}}), "--watch"],
        capture_output=True, text=True, timeout=900,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    rid = round_id_for(s.label_studio.project_title, as_of)
    rec = load_round(store, s, rid)
    assert rec is not None and rec.status == "open"
    n_tasks = len(_tasks(s))
    assert 0 < n_tasks <= BUDGET

    # re-running the same week resumes the round: no duplicate tasks
    fr = _run(D["select"], {"config": cfg, "as_of": str(as_of), "budget": BUDGET})
    assert fr.state.is_completed() and fr.name == f"select {as_of}"
    assert len(_tasks(s)) == n_tasks

    # annotators label it; the watcher emits the event; the trigger starts retrain-and-promote
    counts = annotate_pending(s, AnnotatorProfile(seed=1), round_id=rid)
    assert counts["annotated"] + counts["skipped"] == n_tasks
    fr = run_watch({"config": cfg})
    assert fr.state.is_completed()
    run = _wait_for_retrain(rid, timeout=900)
    assert run.parameters["params"]["round_id"] == rid
    result = store.get_json(s.s3.data_bucket, f"rounds/{rid}/result.json")
    assert result["round_id"] == rid and result["dataset_version"]
    sw = result["dataset"]["sample_weights"]  # the champion ran over the train frames; rare and missed ones repeat
    assert sw["rare_oversampling"] and sw["mining"] and sw["frames"] > 0 and sw["extra_listings"] > 0
    from detloop.datasets import cache_dir

    lists = list(cache_dir(s, result["dataset_version"]).glob("train_x*_w*.txt"))  # what the fine-tune read
    assert len(lists) == 1 and len(lists[0].read_text().split()) >= sw["frames"] + sw["extra_listings"]
    assert result["golden_map_challenger"] is not None and result["golden_map_champion"] is not None
    # runs named after the week and the round; the MLflow run links back to both
    assert run.name == f"retrain {rid}"
    assert result["links"]["label_studio"].startswith(s.label_studio.url) and "?tab=" in result["links"]["label_studio"]
    mlrun = RegistryClient(s).client.get_run(result["run_id"])
    assert mlrun.data.tags["detloop.prefect.flow_run_url"].endswith(str(run.id))
    assert mlrun.data.tags["detloop.label_studio_round_url"] == result["links"]["label_studio"]
    assert mlrun.data.params["arch"] == s.model.arch and mlrun.data.params["mode"] == "finetune"
    assert f"/runs/{result['run_id']}?" in result["links"]["mlflow_run"]  # opens the model-training view
    assert load_round(store, s, rid).status == "trained"
    versions = list_models(RegistryClient(s))
    assert len(versions) == 2

    # the event fires once: a second watch emits nothing, and no second retrain run appears
    fr = run_watch({"config": cfg})
    assert fr.state.is_completed()
    time.sleep(3)
    from prefect import get_client

    from flows.demo import retrain_runs

    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(D["retrain"])
        runs = [r for r in retrain_runs(client, dep.id) if (r.parameters.get("params") or {}).get("round_id") == rid]
    assert len(runs) == 1

    # retrain again by hand for the same round: it finds the work done, registers nothing new
    fr = _run(D["retrain"], {"config": cfg, "round_id": rid})
    assert fr.state.is_completed()
    assert len(list_models(RegistryClient(s))) == 2


def test_rerun_after_a_crash_mid_flow_does_not_duplicate(world, monkeypatch):  # type: ignore[no-untyped-def]
    """Crash retrain-and-promote after training; the re-run reuses the MLflow run and registers once."""
    import flows.loop as loop
    from detloop.clients.registry import RegistryClient
    from detloop.clients.s3 import S3Store
    from detloop.sim.annotator import AnnotatorProfile, annotate_pending
    from flows import steps
    from flows.params import BootstrapParams, RetrainParams, SelectParams, WatchParams
    from tasks.registry import list_models
    from tasks.rounds import load_round, round_id_for

    s, cfg = world["s"], world["cfg"]
    as_of = START + timedelta(days=14)
    loop.bootstrap(BootstrapParams(config=cfg, dataset_version=world["seed"]))  # no-op when a champion exists
    loop.select_for_labeling(SelectParams(config=cfg, as_of=as_of, budget=BUDGET))
    rid = round_id_for(s.label_studio.project_title, as_of)
    annotate_pending(s, AnnotatorProfile(seed=2), round_id=rid)
    # close the round in this process (the event it emits also starts a run on the runner; the
    # deployment's concurrency limit and the round-id idempotence make that harmless)
    monkeypatch.setattr("prefect.events.emit_event", lambda **kw: None)
    loop.watch_rounds(WatchParams(config=cfg))
    assert load_round(S3Store(s), s, rid).status in ("completed", "closed_partial")
    before = len(list_models(RegistryClient(s)))

    calls = {"n": 0}
    real = steps.register.fn

    def crash(*a, **kw):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        raise RuntimeError("injected crash after training")

    monkeypatch.setattr(steps.register, "fn", crash)
    with pytest.raises(Exception, match="injected crash"):
        loop.retrain_and_promote(RetrainParams(config=cfg, round_id=rid))
    assert calls["n"] == 1  # a bug is not retried (only service errors are)
    assert len(list_models(RegistryClient(s))) == before
    monkeypatch.setattr(steps.register, "fn", real)
    out = loop.retrain_and_promote(RetrainParams(config=cfg, round_id=rid))
    assert out.get("train_reused") is True or out.get("resumed") is True
    assert len(list_models(RegistryClient(s))) == before + 1
    out2 = loop.retrain_and_promote(RetrainParams(config=cfg, round_id=rid))
    assert out2.get("resumed") is True and len(list_models(RegistryClient(s))) == before + 1


def test_demo_tiny_runs_the_same_path_and_resumes(stack_settings, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """`make demo`'s job at the tiny size, one week, on its own world: then re-run, which finds the work done."""
    from detloop.clients.registry import RegistryClient
    from detloop.settings import load_settings
    from flows.demo import run_demo
    from infra.stack import client_env
    from tasks.registry import list_models

    sfx = uuid.uuid4().hex[:8]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_isolated_config(stack_settings, sfx)))
    s = load_settings(path)
    for k, v in client_env(s).items():  # `detloop demo` exports these (DETLOOP_CONFIG too): undone after the test
        monkeypatch.setenv(k, v)
    lines: list[str] = []
    out = run_demo(s, weeks=1, size="tiny", log=lines.append, timeout=900, out_dir=tmp_path / "demo")
    assert len(out["rounds"]) == 1, lines
    row = out["rounds"][0]
    assert row["labels"] and row["labels"] > 0 and row["decision"] in ("passed", "passed-awaiting-human", "rejected"), row
    assert row["champion_map"] is not None and row["challenger_map"] is not None
    assert Path(out["learning_curve"]).read_bytes()[:4] == b"\x89PNG"
    assert out["setup_seconds"] > 0 and out["loop_seconds"] > 0
    n_versions = len(list_models(RegistryClient(s)))
    assert n_versions == 2  # bootstrap + the round's challenger
    # the first champion took over on START: its drift reference is the pre-production days before it
    from datetime import timedelta

    from detloop.clients.s3 import S3Store
    from flows.demo import START
    from tasks.drift import reference_days
    from tasks.drift_records import champion_anchor, days_with_frames

    boot = list_models(RegistryClient(s))[-1]["version"]
    anchor, how = champion_anchor(S3Store(s), s, RegistryClient(s), boot)
    assert anchor == START and "as_of" in how, (anchor, how)
    have = {d for ds in days_with_frames(S3Store(s), s).values() for d in ds}
    assert reference_days(have, anchor, s.drift.reference_days) == [
        START - timedelta(days=k) for k in range(s.drift.reference_days, 0, -1)]

    again = run_demo(s, weeks=1, size="tiny", log=lines.append, timeout=900, out_dir=tmp_path / "demo")
    def done(rows: list[dict]) -> list[dict]:  # a row's wall-clock minutes and annotations made are this run's own
        return [{k: v for k, v in r.items() if k not in ("minutes", "annotated")} for r in rows]

    assert done(again["rounds"]) == done(out["rounds"])
    assert [r["annotated"] for r in again["rounds"]] == [0] and row["annotated"] > 0  # nothing labelled twice
    assert len(list_models(RegistryClient(s))) == n_versions  # nothing retrained or registered twice
