"""The local stack against real servers: S3, MLflow, Label Studio, Prefect; restart keeps state; port refusal.

The first four tests use the shared test stack. The restart test runs its OWN throwaway stack (tmp data dir,
distinct ports, Label Studio venv reused) so the shared one is never taken down under other engineers.
"""

from __future__ import annotations

import random
import socket
import time
import uuid
from pathlib import Path

import httpx
import pytest

from detloop.clients.s3 import S3Store
from detloop.settings import Settings, load_settings
from infra import procs
from infra.procs import StackError
from infra.stack import SERVICES, down, ensure_up, label_studio_venv, service_ports, stack_paths, status

LABEL_CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<RectangleLabels name="label" toName="image"><Label value="disc"/><Label value="star"/></RectangleLabels></View>'
)


def _uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# --------------------------------------------------------------------------------------------
# Shared test stack
# --------------------------------------------------------------------------------------------
def test_status_reports_every_server_healthy(stack_settings: Settings) -> None:
    rows = {r.service: r for r in status(stack_settings)}
    assert set(rows) == set(SERVICES)
    for name in ("s3", "mlflow", "label-studio", "prefect"):
        assert rows[name].state == "healthy", (name, rows[name])
        assert rows[name].pid is not None
        assert rows[name].log.is_file()
    mode = stack_settings.secrets_file.stat().st_mode & 0o777
    assert mode == 0o600, oct(mode)


def test_s3_put_get_and_buckets(stack_settings: Settings) -> None:
    store = S3Store(stack_settings)
    buckets = {b["Name"] for b in store.client.list_buckets()["Buckets"]}
    s3 = stack_settings.s3
    assert {s3.production_bucket, s3.data_bucket, s3.artifacts_bucket, s3.oracle_bucket} <= buckets
    key = f"tests/{_uid('stack')}/blob.bin"
    body = random.randbytes(70_000)
    store.put_bytes(s3.data_bucket, key, body)
    assert store.get_bytes(s3.data_bucket, key) == body
    assert store.exists(s3.data_bucket, key)
    store.delete(s3.data_bucket, key)
    assert not store.exists(s3.data_bucket, key)


def test_mlflow_artifact_is_proxied_into_s3(stack_settings: Settings, tmp_path: Path) -> None:
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    uri = stack_settings.mlflow.tracking_uri
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(_uid("stack-test"))
    run = client.create_run(exp_id)
    text = f"hello {uuid.uuid4()}"
    client.log_text(run.info.run_id, text, "notes/hello.txt")
    client.set_terminated(run.info.run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri  # proxied, no S3 keys needed
    got = download_artifacts(run_id=run.info.run_id, artifact_path="notes/hello.txt", dst_path=str(tmp_path),
                             tracking_uri=uri)  # fmt: skip
    assert Path(got).read_text() == text
    keys = [o.key for o in S3Store(stack_settings).list(stack_settings.s3.artifacts_bucket, prefix=f"{exp_id}/")]
    assert any(k.endswith(f"{run.info.run_id}/artifacts/notes/hello.txt") for k in keys), keys


def test_label_studio_project_with_sdk(stack_settings: Settings) -> None:
    from label_studio_sdk import LabelStudio

    ls = LabelStudio(base_url=stack_settings.label_studio.url, api_key=stack_settings.label_studio_token())
    title = _uid("stack-test")
    project = ls.projects.create(title=title, label_config=LABEL_CONFIG)
    try:
        ls.projects.import_tasks(id=project.id, request=[{"image": "s3://detloop-test/a.jpg"}, {"image": "s3://x/b.jpg"}])
        assert ls.projects.get(id=project.id).title == title
        assert len(list(ls.tasks.list(project=project.id))) == 2
    finally:
        ls.projects.delete(id=project.id)


def _run_flow_on(api_url: str, value: int) -> str:
    """Run a tiny flow against the Prefect server at ``api_url``; return its flow-run id."""
    from prefect import flow
    from prefect.context import get_run_context
    from prefect.settings import PREFECT_API_URL, temporary_settings

    @flow(name="stack-test-flow")
    def add_one(x: int) -> str:
        return str(get_run_context().flow_run.id)

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        run_id = add_one(value)
        # flush this run's logs and events before a test may stop the server
        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)
    return run_id


def _flow_run_state(api_url: str, run_id: str) -> str:
    r = httpx.get(f"{api_url}/flow_runs/{run_id}", timeout=10)
    r.raise_for_status()
    return r.json()["state"]["type"]


def test_prefect_flow_run_against_server(stack_settings: Settings) -> None:
    run_id = _run_flow_on(stack_settings.prefect.api_url, 41)
    assert _flow_run_state(stack_settings.prefect.api_url, run_id) == "COMPLETED"


# --------------------------------------------------------------------------------------------
# Throwaway stacks (own data dir and ports)
# --------------------------------------------------------------------------------------------
def _free_port_block(n: int, taken: set[int]) -> list[int]:
    """``n`` ports p (20000..29999) such that p and p+10000 (SeaweedFS gRPC) are bindable now."""
    rng = random.Random()
    out: list[int] = []
    while len(out) < n:
        p = rng.randrange(20000, 29999)
        if p in taken or p in out or p + 10000 in taken:
            continue
        if procs.port_bindable("127.0.0.1", p) and procs.port_bindable("127.0.0.1", p + 10000):
            out.append(p)
    return out


def _throwaway_settings(tmp_path: Path, stack_settings: Settings, **port_overrides: int) -> Settings:
    names = ["s3", "weed_master", "weed_volume", "weed_filer", "mlflow", "label_studio", "prefect"]
    ports = dict(zip(names, _free_port_block(len(names), set(port_overrides.values())), strict=True))
    ports.update(port_overrides)
    h = "127.0.0.1"
    return load_settings(
        stack_settings.source,
        env={},
        overrides={
            "data_dir": str(tmp_path / "stack"),
            "s3": {"endpoint_url": f"http://{h}:{ports['s3']}"},
            "mlflow": {"tracking_uri": f"http://{h}:{ports['mlflow']}"},
            "label_studio": {"url": f"http://{h}:{ports['label_studio']}"},
            "prefect": {"api_url": f"http://{h}:{ports['prefect']}/api"},
            "stack": {
                "ports": ports,
                "runner": False,
                "start_timeout_seconds": 300,
                "label_studio_venv": str(label_studio_venv(stack_settings)),
            },
        },
    )


def _all_ports(settings: Settings) -> list[int]:
    return [p for svc in SERVICES for p in service_ports(settings, svc).values()]


def test_up_refuses_a_taken_port(stack_settings: Settings, tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        s = _throwaway_settings(tmp_path, stack_settings, s3=port)
        with pytest.raises(StackError) as err:
            ensure_up(s)
    msg = str(err.value)
    import os

    assert f"port {port} (S3) is taken by pid {os.getpid()}" in msg, msg
    assert "\n" not in msg
    assert not procs.read_pid_file(stack_paths(s).pid("s3")), "nothing may be started when a port is taken"


def test_down_then_up_keeps_everything(stack_settings: Settings, tmp_path: Path) -> None:
    from label_studio_sdk import LabelStudio
    from mlflow import MlflowClient

    s = _throwaway_settings(tmp_path, stack_settings)
    try:
        first = ensure_up(s)
        assert set(first.started) == {"s3", "mlflow", "label-studio", "prefect"}
        again = ensure_up(s)  # idempotent: nothing restarted
        assert again.started == [] and set(again.already_running) == set(first.started)

        # -- state in every service ---------------------------------------------------------------
        store = S3Store(s)
        key, body = "keep/me.bin", random.randbytes(5000)
        store.put_bytes(s.s3.data_bucket, key, body)
        extra = [f"many-{i:02d}" for i in range(16)]  # SeaweedFS defaults ran out of volume slots at ~10 buckets
        for b in extra:
            store.ensure_bucket(b)
            store.put_bytes(b, "x", b"1")
        ml = MlflowClient(tracking_uri=s.mlflow.tracking_uri)
        exp_id = ml.create_experiment("keep")
        run = ml.create_run(exp_id)
        ml.log_text(run.info.run_id, "weights", "weights/w.txt")
        ml.set_terminated(run.info.run_id)
        ml.create_registered_model("keep-model")
        mv = ml.create_model_version("keep-model", source=f"{run.info.artifact_uri}/weights", run_id=run.info.run_id)
        ml.set_registered_model_alias("keep-model", "champion", mv.version)
        ls = LabelStudio(base_url=s.label_studio.url, api_key=s.label_studio_token())
        project = ls.projects.create(title="keep", label_config=LABEL_CONFIG)
        ls.projects.import_tasks(id=project.id, request=[{"image": "s3://b/k1.jpg"}, {"image": "s3://b/k2.jpg"}])
        flow_run_id = _run_flow_on(s.prefect.api_url, 1)

        # -- down: everything stops and frees its ports -------------------------------------------
        records = {svc: procs.read_pid_file(stack_paths(s).pid(svc)) for svc in first.started}
        outcome = down(s)
        assert {outcome[svc] for svc in first.started} <= {"terminated", "killed"}, outcome
        for svc, rec in records.items():
            assert rec is not None and not procs.live_process(rec), svc
            assert not procs.group_members(rec.pid), svc
        assert all(procs.port_bindable("127.0.0.1", p) for p in _all_ports(s))
        assert all(r.state == "stopped" for r in status(s) if r.service != "runner")

        # -- S3 alone (the benchmarks' quiet machine): its data is there, nothing else starts ------
        only = ensure_up(s, s3_only=True)
        assert only.started == ["s3"] and only.already_running == []
        assert store.get_bytes(s.s3.data_bucket, key) == body
        assert {r.service: r.state for r in status(s) if r.service != "runner"} == {
            "s3": "healthy", "mlflow": "stopped", "label-studio": "stopped", "prefect": "stopped"
        }

        # -- up again: everything is still there -------------------------------------------------
        t0 = time.monotonic()
        second = ensure_up(s)
        restart_s = time.monotonic() - t0
        assert set(second.started) == set(first.started) - {"s3"} and second.already_running == ["s3"]
        assert all(store.get_bytes(b, "x") == b"1" for b in extra)
        ml2 = MlflowClient(tracking_uri=s.mlflow.tracking_uri)
        assert ml2.get_run(run.info.run_id).info.status == "FINISHED"
        assert ml2.get_model_version_by_alias("keep-model", "champion").version == mv.version
        got = Path(ml2.download_artifacts(run.info.run_id, "weights/w.txt", str(tmp_path))).read_text()
        assert got == "weights"
        ls2 = LabelStudio(base_url=s.label_studio.url, api_key=s.label_studio_token())
        assert ls2.projects.get(id=project.id).title == "keep"
        assert len(list(ls2.tasks.list(project=project.id))) == 2
        assert _flow_run_state(s.prefect.api_url, flow_run_id) == "COMPLETED"
        print(f"throwaway stack: first up {first.seconds:.1f} s, restart {restart_s:.1f} s")
    finally:
        down(s)
