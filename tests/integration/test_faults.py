"""Each stack service SIGKILLed once at the stage of a round that uses it, brought back with ``ensure_up`` (what
``detloop stack up`` does), the flow re-run: nothing duplicated, nothing lost, nothing wrongly quarantined, and
``champion`` always a completely registered version. Plus two retrains of one round at once from two processes
that share nothing but the services, and a scan of everything the rounds left behind for every secret value.

The helpers (world, cells, kill points, the checks) are those of ``detloop bench faults`` (benchmarks/faults.py),
which runs the full matrix; this module is its ``make test`` subset. Tests of one cell build on each other in
file order and prepare what they need when run alone. Training is tiny (1 epoch) and starts from random weights.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

LEASE_S = 6.0
_SESSION_START_MS = int(time.time() * 1000)


@pytest.fixture(scope="module")
def world(stack_settings: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from benchmarks.faults import make_world

    return make_world(stack_settings, tmp_path_factory.mktemp("faults"), lease_seconds=LEASE_S)


@pytest.fixture(scope="module")
def cell_a(world: Any) -> Any:
    return world.cell("a")


@pytest.fixture(scope="module")
def cell_b(world: Any) -> Any:
    return world.cell("b")


def _zero(counts: dict[str, Any]) -> None:
    for k in ("duplicate_tasks", "selected_without_task", "wrongly_quarantined", "duplicate_versions",
              "lost_annotations", "promotions_not_logged"):
        assert int(counts.get(k) or 0) == 0, (k, counts)
    assert counts["champion_ok"], counts


def _open_round(cell: Any) -> str:
    """The cell's round, selected and pushed (selected now when an earlier test did not)."""
    from benchmarks.faults import BUDGET, ls_tasks, round_of, select

    rid = round_of(cell)
    if len(ls_tasks(cell, rid)) < BUDGET:
        select(cell)
    return rid


def _closed_round(cell: Any) -> str:
    """The cell's round, labelled by the simulated annotator and closed by watch-rounds."""
    from benchmarks.faults import annotate_and_close
    from detloop.clients.s3 import S3Store
    from tasks.rounds import load_round

    rid = _open_round(cell)
    rec = load_round(S3Store(cell.settings), cell.settings, rid)
    if rec is None or rec.status == "open":
        annotate_and_close(cell, rid)
    return rid


# ---- cell a: selection ------------------------------------------------------------------------------------
def test_selection_survives_s3_killed_while_scoring_and_label_studio_killed_mid_push(world: Any, cell_a: Any,
                                                                                       stack_settings: Any) -> None:
    from benchmarks.faults import BUDGET, check, injector, round_of, select, service_killer
    from detloop.errors import ServiceUnavailable
    from infra.faults import Injection
    from infra.stack import ensure_up

    rid = round_of(cell_a)
    # 1. S3 dies as scoring reads its first frame: the run fails naming S3; nothing is cached or quarantined
    s3 = Injection("s3", "scoring")
    with pytest.raises(ServiceUnavailable, match=r"S3 at .* is not reachable"):
        select(cell_a, wrap=injector("scoring", service_killer(stack_settings, "s3"), s3))
    assert s3.killed_at is not None
    ensure_up(stack_settings)
    # 2. Label Studio dies right after the first batch of tasks went in: two of six tasks exist
    ls = Injection("label-studio", "push")
    with pytest.raises(ServiceUnavailable, match="Label Studio"):
        select(cell_a, wrap=injector("push", service_killer(stack_settings, "label-studio"), ls))
    assert ls.killed_at is not None
    ensure_up(stack_settings)
    # 3. the re-run resumes the round: its stored selection, the missing tasks only
    out = select(cell_a)
    assert out["round_id"] == rid and out["imported"] == BUDGET - 2 and out["already_present"] == 2, out
    counts = check(cell_a, rid, trained=False)
    assert counts["tasks"] == counts["selected"] == BUDGET, counts
    _zero(counts)


def test_two_retrains_of_one_round_at_once_one_trains_the_other_says_why(cell_a: Any, tmp_path: Path) -> None:
    """Two processes (own data dirs, caches, Prefect homes: two hosts) retrain the same round at the same time."""
    from benchmarks.faults import check, two_retrains_at_once

    rid = _closed_round(cell_a)
    results = two_retrains_at_once(cell_a, rid, tmp_path)
    assert not any("error" in r for r in results), results
    done = [r for r in results if not r.get("skipped")]
    skipped = [r for r in results if r.get("skipped")]
    assert len(done) == 1 and len(skipped) == 1, results
    assert done[0]["promoted"] and done[0]["train_reused"] is False, done
    why = skipped[0]["skipped"]
    assert f"retrain of round {rid} is running" in why and "held by host" in why and "pid" in why, why
    from detloop.clients import Clients

    reg = Clients.from_settings(cell_a.settings).registry
    trainings = reg.find_runs(f"tags.`detloop.round_id` = '{rid}' and tags.`detloop.kind` = 'train'")
    assert len(trainings) == 1, [r.info.run_id for r in trainings]  # exactly one trained
    _zero(check(cell_a, rid, trained=True))


# ---- cell b: the runner, then the retrain ------------------------------------------------------------------
def _deployment_select(cell: Any, timeout: float = 0) -> Any:
    from prefect.deployments import run_deployment

    from benchmarks.faults import AS_OF, BUDGET
    from flows.common import DEPLOYMENTS

    return run_deployment(DEPLOYMENTS["select"], parameters={"params": {
        "config": cell.config, "as_of": AS_OF.isoformat(), "budget": BUDGET}}, timeout=timeout)


def test_runner_killed_mid_selection_run(world: Any, cell_b: Any, stack_settings: Any) -> None:
    """The runner (and the flow run it is executing) is killed once the round's selection is stored, i.e. as the
    push starts; `stack up` restarts it; the next run of the deployment completes the round."""
    from benchmarks.faults import BUDGET, check, round_of
    from detloop.clients.s3 import S3Store
    from flows.demo import _wait_for_deployments
    from infra import procs
    from infra.faults import kill_service
    from infra.stack import ensure_up

    _wait_for_deployments(timeout=180)
    rid = round_of(cell_b)
    store = S3Store(cell_b.settings)
    fr = _deployment_select(cell_b)
    marker = f"runs/{rid}/selection_meta.json"
    assert procs.wait_until(lambda: store.exists(cell_b.settings.s3.data_bucket, marker), 600, 0.1), \
        "the deployment run never stored its selection"
    kill_service(stack_settings, "runner")
    from prefect import get_client

    with get_client(sync_client=True) as c:
        state = c.read_flow_run(fr.id).state
    assert state is not None and not state.is_completed(), state  # it died mid-run
    res = ensure_up(stack_settings)
    assert "runner" in res.started and not res.errors, res
    _wait_for_deployments(timeout=180)
    again = _deployment_select(cell_b, timeout=600)
    assert again.state.is_completed(), again.state
    counts = check(cell_b, rid, trained=False)
    assert counts["tasks"] == counts["selected"] == BUDGET, counts
    _zero(counts)


def test_retrain_survives_label_studio_mlflow_and_prefect_killed(world: Any, cell_b: Any,
                                                                 stack_settings: Any, tmp_path: Path) -> None:
    """In one retrain run: Label Studio dies as the labels are pulled, MLflow after the model files went up but
    before the version exists, the Prefect server as `champion` is about to move. Each is brought back by
    `ensure_up` right away (as a supervisor would), and the flow's retries (here 4, 5-60 s apart: they outlast
    a restart) carry the run through; a re-run then finds the round done."""
    import yaml

    from benchmarks.faults import Cell, check, retrain, service_killer
    from detloop.clients import Clients
    from detloop.settings import load_settings
    from infra.faults import Injection, kill_on_call
    from infra.stack import ensure_up

    rid = _closed_round(cell_b)
    cfg = yaml.safe_load(Path(cell_b.config).read_text())
    cfg["prefect"] = {**cfg["prefect"], "retries": 4, "retry_delays_seconds": [5, 15, 30, 60]}
    patient = Cell(cell_b.name, str(tmp_path / "patient.yaml"), None, cell_b.annotated)
    Path(patient.config).write_text(yaml.safe_dump(cfg))
    patient.settings = load_settings(patient.config)
    reg = Clients.from_settings(cell_b.settings).registry
    before = {v.version for v in reg.versions()}
    kills = {name: Injection(name, stage) for name, stage in
             (("label-studio", "pull"), ("mlflow", "registration"), ("prefect", "promotion"))}

    def wrap(c: Any) -> Any:
        back = {n: service_killer(stack_settings, n, restart_after_s=0.5) for n in kills}
        c.labels = kill_on_call(c.labels, "export_tasks", back["label-studio"], injection=kills["label-studio"])
        c.registry._client = kill_on_call(c.registry.client, "finalize_logged_model", back["mlflow"],
                                          injection=kills["mlflow"])

        def champion_moves(alias: str, *a: Any, **k: Any) -> bool:
            assert {v.version for v in reg.versions()} - before, "champion moves to a registered version only"
            return alias == "champion"

        c.registry = kill_on_call(c.registry, "set_alias", back["prefect"], when=champion_moves,
                                  injection=kills["prefect"])
        return c

    try:
        out = retrain(patient, rid, wrap)
    finally:
        ensure_up(stack_settings)
    assert all(k.killed_at for k in kills.values()), {n: k.log for n, k in kills.items()}
    assert out.get("promoted"), out  # the run itself got through all three
    assert retrain(cell_b, rid).get("resumed")  # and a re-run finds the round done
    versions = [v for v in reg.versions() if v.version not in before]
    assert len(versions) == 1 and versions[0].tags.get("detloop.round_id") == rid, versions
    assert reg.version_by_alias("champion").version == versions[0].version
    trainings = reg.find_runs(f"tags.`detloop.round_id` = '{rid}' and tags.`detloop.kind` = 'train'")
    assert len(trainings) == 1  # trained once
    _zero(check(cell_b, rid, trained=True))


# ---- what the rounds left behind ---------------------------------------------------------------------------
def test_no_secret_in_logs_mlflow_prefect_or_reports(world: Any, cell_b: Any, stack_settings: Any) -> None:
    """Every secret value (S3 keys, Label Studio token and password) is looked for in the stack's logs, every
    Prefect flow run's parameters, artifacts and logs, MLflow params, tags and text artifacts, and the rounds'
    reports; a planted canary proves the scan finds what is there."""
    import uuid

    from mlflow import MlflowClient

    from benchmarks.faults import retrain, scan_for_secrets

    rid = _closed_round(cell_b)
    retrain(cell_b, rid)  # done (resumed) when the retrain test ran before
    canary = f"canary-{uuid.uuid4().hex}"
    ml = MlflowClient(tracking_uri=stack_settings.mlflow.tracking_uri)
    run = ml.create_run(ml.get_experiment_by_name(cell_b.settings.mlflow.experiment).experiment_id)
    ml.set_tag(run.info.run_id, "planted", canary)
    bucket = cell_b.settings.s3.data_bucket
    keys = [(bucket, f"rounds/{rid}/{n}") for n in ("round.json", "result.json", "labels_report.json", "tasks.json")]
    keys += [(bucket, f"runs/{rid}/{n}") for n in ("selection_report.json", "sample_manifest.json", "quarantine.json")]
    out = scan_for_secrets(stack_settings, _SESSION_START_MS, keys, extra_secrets={"canary": canary})
    print("secret scan:", out["scanned"])
    assert out["found"] == [f"canary in mlflow run {run.info.run_id} params/tags"], out["found"][:10]
    for kind in ("stack files", "prefect flow runs", "prefect artifacts", "prefect log lines", "mlflow runs",
                 "mlflow text artifacts", "model versions", "s3 reports and manifests"):
        assert out["scanned"].get(kind, 0) > 0, (kind, out["scanned"])


def test_every_service_listens_only_on_the_stack_host(stack_settings: Any) -> None:
    import psutil

    from infra import procs
    from infra.stack import SERVICES, stack_paths

    seen = {}
    for service in SERVICES:
        rec = procs.read_pid_file(stack_paths(stack_settings).pid(service))
        assert rec is not None and procs.live_process(rec), service
        group = set(procs.group_members(rec.pid))
        seen[service] = sorted({(c.laddr.ip, c.laddr.port) for c in psutil.net_connections("inet")
                                if c.status == psutil.CONN_LISTEN and c.pid in group})
    assert seen["s3"] and seen["mlflow"] and seen["label-studio"] and seen["prefect"], seen
    wrong = {svc: [a for a in addrs if a[0] != stack_settings.stack.host] for svc, addrs in seen.items()}
    assert not any(wrong.values()), wrong
