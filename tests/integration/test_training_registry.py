"""Training, scoring export, evaluation, registration, gate, promotion and rollback against the REAL
local MLflow server and S3 of the test stack.

One module-scoped tiny bootstrap training (2 epochs, 16 frames, 320 px) feeds every test; names
(experiment, registered model, promotion-log key) are unique per session so parallel runs do not collide.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def settings(request: pytest.FixtureRequest) -> Any:
    base = request.getfixturevalue("stack_settings")
    tag = uuid.uuid4().hex[:8]
    s = base.model_copy(deep=True)
    s.mlflow.experiment = f"test-training-{tag}"
    s.mlflow.model_name = f"test-detector-{tag}"
    from detloop.offline import apply_offline_env

    apply_offline_env(s)
    return s


@pytest.fixture(scope="module")
def log_key(settings: Any) -> str:
    return f"test-promotions/{settings.mlflow.model_name}/log.jsonl"


@pytest.fixture(scope="module")
def dataset(settings: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from detloop.synth_shapes import write_yolo_dataset

    return write_yolo_dataset(tmp_path_factory.mktemp("ds"), settings.classes, n_train=16, n_val=12, seed=1,
                              r_range=(8.0, 40.0))


@pytest.fixture(scope="module")
def clients(settings: Any) -> Any:
    from detloop.clients import Clients

    return Clients.from_settings(settings)


@pytest.fixture(scope="module")
def boot(settings: Any, dataset: Path, clients: Any) -> Any:
    from tasks.training import train

    return train(dataset, settings, clients.registry, None, f"boot-{settings.mlflow.model_name}",
                 {"round_id": "r-boot"}, dataset_version="dv-seed", epochs=2, store=clients.store)


def test_dataset_refusals(settings: Any, dataset: Path, tmp_path: Path) -> None:
    import yaml

    from detloop.errors import DataError
    from detloop.synth_shapes import write_yolo_dataset
    from tasks.training import check_dataset

    data = yaml.safe_load(dataset.read_text())
    data["names"] = {0: "square", 1: "disc", 2: "triangle", 3: "ring", 4: "hexagon"}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(DataError, match=r"missing \['star'\]; unexpected \['hexagon'\]"):
        check_dataset(bad, settings.classes, 4)
    data["names"] = {0: "square", 1: "disc", 2: "triangle", 3: "ring", 4: "star"}
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(DataError, match="order differs"):
        check_dataset(bad, settings.classes, 4)
    tiny = write_yolo_dataset(tmp_path / "tiny", settings.classes, n_train=2, n_val=0)
    with pytest.raises(DataError, match=r"2 train frames \(need >= 4\), 0 val frames"):
        check_dataset(tiny, settings.classes, 4)


@pytest.mark.slow
def test_bootstrap_training_is_tracked_and_reused(settings: Any, dataset: Path, boot: Any, clients: Any) -> None:
    from detloop.clients.registry import RegistryClient
    from tasks.training import train

    assert boot.weights.is_file() and not boot.reused and boot.bootstrap
    reg = RegistryClient(settings)
    run = reg.client.get_run(boot.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == "2" and run.data.params["dataset_version"] == "dv-seed"
    assert run.data.tags["detloop.input_hash"] == boot.input_hash
    assert len(run.data.tags["detloop.git_commit"]) >= 7
    hist = reg.client.get_metric_history(boot.run_id, "metrics/mAP50-95_B")
    assert sorted(m.step for m in hist) == [1, 2]  # one point per epoch
    assert run.data.metrics["train_seconds"] > 0
    arts = {a.path for a in reg.client.list_artifacts(boot.run_id, "plots")}
    assert "plots/curves.png" in arts
    # what a person reads in MLflow's UI: the model-training view, a meaningful arch, a description, a clean log
    exp = reg.client.get_experiment(run.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert run.data.params["arch"] == settings.model.arch and run.data.params["mode"] == "bootstrap"
    assert "Bootstrap of" in run.data.tags["mlflow.note.content"]
    log = reg.download_run_artifact(boot.run_id, "logs/train.log", Path(boot.out_dir) / "dl")
    text = log.read_text()
    assert "\x1b[" not in text and "\r" not in text and "Epoch" in text
    # the same inputs again: the finished run is reused, nothing retrained
    again = train(dataset, settings, clients.registry, None, f"boot-{settings.mlflow.model_name}",
                  {"round_id": "r-boot"}, dataset_version="dv-seed", epochs=2, store=clients.store)
    assert again.reused and again.run_id == boot.run_id and again.weights.is_file()


@pytest.mark.slow
def test_onnx_parity_on_trained_model(settings: Any, dataset: Path, boot: Any, tmp_path: Path) -> None:
    """ONNX raw head == torch raw head of the trained model on letterboxed real frames."""
    import torch
    from ultralytics import YOLO

    from tasks.evaluation import _load_rgb
    from tasks.export import export_scoring_artifact, open_session, preprocess, run_onnx

    art = export_scoring_artifact(boot.weights, tmp_path / "art", settings.classes, settings.model.input_size)
    imgs = sorted((dataset.parent / "images" / "val").glob("*.png"))[:4]
    frames = [_load_rgb(str(p))[:250] for p in imgs]  # non-square: letterbox padding is exercised
    batch, _ = preprocess(frames, settings.model.input_size)
    raw, emb = run_onnx(open_session(art), batch)
    model = YOLO(str(boot.weights)).model.float().eval()
    with torch.no_grad():
        ref = model(torch.from_numpy(batch))[0].numpy()
    np.testing.assert_allclose(raw, ref, atol=2e-2, rtol=1e-3)
    # the embedding pools every feature map the Detect head reads: 64+128+256 = 448 for YOLO11n, 480 with P2
    head = model.model[-1]
    dim = sum(int(branch[0].conv.in_channels) for branch in head.cv2)
    assert emb.shape == (4, dim) and np.isfinite(emb).all()


@pytest.mark.slow
def test_crash_marks_run_failed_and_registers_nothing(settings: Any, dataset: Path, monkeypatch: Any,
                                                      clients: Any) -> None:
    from tasks.training import TrainingError, train

    monkeypatch.setenv("DETLOOP_TEST_CRASH_TRAINING", "1")
    with pytest.raises(TrainingError, match="exited with code"):
        train(dataset, settings, clients.registry, None, "crash", {"round_id": "r-crash"}, epochs=3,
              store=clients.store)
    reg = clients.registry
    runs = reg.find_runs("tags.round_id = 'r-crash'")
    assert runs and runs[0].info.status == "FAILED"
    assert reg.version_for_run(runs[0].info.run_id) is None


def test_mlflow_down_is_unavailable_naming_the_url(settings: Any) -> None:
    from detloop.clients.registry import RegistryClient
    from detloop.errors import ServiceUnavailable

    s = settings.model_copy(deep=True)
    s.mlflow.tracking_uri = "http://127.0.0.1:9"  # nothing listens on the discard port
    with pytest.raises(ServiceUnavailable, match=r"MLflow at http://127.0.0.1:9 is not reachable"):
        RegistryClient(s).version_by_alias("champion")


def test_mlflow_answers_are_classified(settings: Any, clients: Any) -> None:
    """Against the real server: an unknown alias or version is NotFound, a bad request is ServiceRejected."""
    from detloop.errors import NotFound, ServiceRejected

    reg = clients.registry
    assert reg.version_by_alias("no-such-alias") is None
    with pytest.raises(NotFound):
        reg.get_version("987654")
    with pytest.raises(ServiceRejected, match="HTTP 400"):
        reg.find_runs("this is not a filter")


@pytest.mark.slow
def test_register_gate_promote_rollback(settings: Any, dataset: Path, boot: Any, log_key: str,
                                        tmp_path: Path, clients: Any) -> None:
    from detloop.settings import GateSettings
    from tasks import registry as R
    from tasks.evaluation import evaluate_pair, gate_scores, slice_from_yolo_dir
    from tasks.promotion import decide
    from tasks.training import oversample_hard, train

    reg, store = clients.registry, clients.store
    golden = slice_from_yolo_dir("golden", dataset.parent / "images" / "val", len(settings.classes))
    assert R.load_champion(settings, reg, tmp_path / "none") is None  # bootstrap: no champion yet

    # ---- bootstrap: evaluate, gate (floor 0: a weak first model may start the loop), register, promote
    ch, cp = evaluate_pair(boot.weights, None, [golden], settings, tmp_path / "eval1")
    assert cp is None and ch.latency_ms and ch.latency_ms > 0
    assert set(ch.thresholds) == set(settings.classes)
    art = Path(ch.artifact)
    v1 = R.register_challenger(settings, reg, boot.run_id, boot.weights, art, ch, dataset_version="dv-seed")
    assert R.register_challenger(settings, reg, boot.run_id, boot.weights, art, ch) == v1  # retry: no duplicate
    assert len(reg.versions()) == 1
    d1 = decide(gate_scores(ch), None, GateSettings(bootstrap_floor=0.0))
    assert d1.passed and d1.bootstrap
    R.record_gate(reg, v1, d1, run_id=boot.run_id)
    R.promote(settings, reg, store, v1, d1, log_key=log_key)
    assert reg.version_by_alias("champion").version == v1

    # ---- round 1: fine-tune from the champion on an oversampled train list
    champ_dir = R.load_champion(settings, reg, tmp_path / "champ")
    assert champ_dir is not None
    meta = json.loads((champ_dir / "scoring" / "meta.json").read_text())
    assert meta["registry_version"] == v1 and meta["class_names"] == settings.classes
    assert set(json.loads((champ_dir / "champion.json").read_text())["thresholds"]) == set(settings.classes)
    hard = sorted(p.stem for p in (dataset.parent / "images" / "train").glob("*.png"))[:3]
    over = oversample_hard(dataset, hard, 3, tmp_path / "over")
    assert len((tmp_path / "over" / "train.txt").read_text().split()) == 16 + 3 * 2
    ft = train(over, settings, reg, champ_dir / "weights" / "best.pt", f"ft-{settings.mlflow.model_name}",
               {"round_id": "r-1"}, dataset_version="dv-1", parent_version=v1, epochs=1, store=clients.store)
    log = (ft.out_dir / "train.log").read_text()
    assert "22 train" in log  # the repeats survived Ultralytics' loader (16 + 6 copies)
    ch2, cp2 = evaluate_pair(ft.weights, champ_dir / "scoring", [golden], settings, tmp_path / "eval2")
    assert cp2 is not None and cp2.latency_ms and ch2.latency_ms
    # champion re-evaluated on the same data equals its own registration-time numbers
    assert cp2.slices["golden"].overall.map == pytest.approx(ch.slices["golden"].overall.map, abs=1e-6)
    v2 = R.register_challenger(settings, reg, ft.run_id, ft.weights, Path(ch2.artifact), ch2, dataset_version="dv-1",
                               parent_version=v1)
    assert reg.version_by_alias("challenger").version == v2
    assert reg.get_version(v2).tags["detloop.parent_version"] == v1

    # ---- a failing gate never promotes
    strict = GateSettings(min_delta=1.0)
    d2 = decide(gate_scores(ch2), gate_scores(cp2), strict)
    assert not d2.passed and any("golden mAP50-95" in r for r in d2.reasons)
    s50 = gate_scores(ch2, metric="map50")  # gate.metric map50: the same reports, AP at IoU 0.5
    assert s50.golden_map == pytest.approx(ch2.slices["golden"].overall.map50)
    d50 = decide(s50, gate_scores(cp2, metric="map50"), GateSettings(min_delta=1.0, metric="map50"))
    assert not d50.passed and any(r.startswith("golden mAP50 ") for r in d50.reasons)
    R.record_gate(reg, v2, d2, run_id=ft.run_id, champion_version=v1)
    with pytest.raises(R.PromotionError, match="did not pass the gate"):
        R.promote(settings, reg, store, v2, d2, log_key=log_key)
    with pytest.raises(R.PromotionError, match="did not pass the gate"):
        R.promote(settings, reg, store, v2, None, log_key=log_key)  # from the recorded tags (the CLI path)
    assert reg.version_by_alias("champion").version == v1
    assert reg.get_version(v2).tags["gate.outcome"] == "rejected"
    gate_md = reg.client.list_artifacts(ft.run_id, "gate")
    assert any(a.path.endswith(f"gate_report_v{v2}.md") for a in gate_md)

    # ---- a human overrides, with a reason; then rolls back
    with pytest.raises(R.PromotionError, match="needs --reason"):
        R.promote(settings, reg, store, v2, None, override=True, log_key=log_key)
    R.promote(settings, reg, store, v2, None, override=True, reason="field test", actor="tester", log_key=log_key)
    assert reg.version_by_alias("champion").version == v2
    assert reg.version_by_alias("previous-champion").version == v1
    assert reg.get_version(v2).tags["detloop.override_reason"] == "field test"
    R.rollback(settings, reg, store, reason="regression", actor="tester", log_key=log_key)
    assert reg.version_by_alias("champion").version == v1
    assert reg.version_by_alias("previous-champion").version == v2

    entries = R.read_promotion_log(store, settings, log_key)
    assert [(e["action"], e["version"]) for e in entries] == [("promote", v1), ("override", v2), ("rollback", v1)]
    assert entries[1]["actor"] == "tester" and entries[1]["reason"] == "field test"
    rows = {r["version"]: r for r in R.list_models(reg)}
    assert rows[v1]["aliases"] == ["champion"] and rows[v2]["gate"] == "rejected"
    assert "previous-champion" in rows[v2]["aliases"]


@pytest.fixture(scope="module")
def post(settings: Any, dataset: Path, boot: Any) -> Any:
    """The post-training subflow (a real Prefect flow run) on the boot model, as champion of its own model name."""
    from flows.post_training import evaluate_and_promote
    from tests.integration.conftest import TEST_CONFIG

    name = f"{settings.mlflow.model_name}-post"
    overrides = {"data_dir": str(settings.data_dir), "gate": {"bootstrap_floor": 0.0},
                 "mlflow": {"experiment": settings.mlflow.experiment, "model_name": name}}
    s = settings.model_copy(deep=True)
    s.mlflow.model_name = name
    return {"post": evaluate_and_promote(boot.run_id, str(boot.weights), "dv-seed", str(TEST_CONFIG), overrides,
                                         golden_data_yaml=str(dataset)),
            "overrides": overrides, "settings": s}


@pytest.mark.slow
def test_the_registered_onnx_is_byte_identical_to_the_one_the_gate_evaluated(post: Any, dataset: Path, boot: Any,
                                                                            tmp_path: Path) -> None:
    """The registered version's scoring ONNX (inside the pyfunc model's artifacts) is the evaluated file."""
    from detloop.clients.registry import RegistryClient
    from detloop.datasets import file_sha256
    from flows.post_training import evaluate_and_promote
    from tests.integration.conftest import TEST_CONFIG

    p, s = post["post"], post["settings"]
    evaluated = Path(p.challenger_report.artifact) / "model.onnx"
    reg = RegistryClient(s)
    local = reg.download_version(reg.get_version(p.version), tmp_path / "registered")
    assert (local / "artifacts" / "scoring" / "model.onnx").read_bytes() == evaluated.read_bytes()
    assert reg.get_version(p.version).tags["detloop.onnx_sha256"] == file_sha256(evaluated)
    assert p.promoted and reg.version_by_alias("champion").version == p.version
    again = evaluate_and_promote(boot.run_id, str(boot.weights), "dv-seed", str(TEST_CONFIG), post["overrides"],
                                 golden_data_yaml=str(dataset))  # a retried run: nothing registered twice
    assert again.outcome == "already-champion" and again.version == p.version and len(reg.versions()) == 1
    # detloop's own reader still gets weights/, scoring/ and thresholds.json of a pyfunc version
    from tasks.registry import fetch_champion

    champ = fetch_champion(s, reg)
    assert champ is not None and champ.weights.is_file() and (champ.scoring_dir / "model.onnx").is_file()
    assert (champ.local_dir / "thresholds.json").is_file()
    # what the MLflow UI shows: descriptions, plots of the evaluated model on its run
    rm = reg.client.get_registered_model(s.mlflow.model_name)
    assert "mlflow.pyfunc.load_model" in rm.description
    assert "Gate: **" in reg.get_version(p.version).description
    plots = {a.path for a in reg.client.list_artifacts(boot.run_id, "plots")}
    assert {"plots/confusion_matrix.png", "plots/pr_curves.png", "plots/golden_frames.png"} <= plots


def _frame_jpeg(dataset: Path) -> bytes:
    """A val frame upscaled to 960x720 JPEG (large enough that scoring decodes it at reduced scale)."""
    import cv2

    img = cv2.imread(str(sorted((dataset.parent / "images" / "val").glob("*.png"))[0]))
    return bytes(cv2.imencode(".jpg", cv2.resize(img, (960, 720)))[1].tobytes())


def _clean_env(settings: Any) -> dict[str, str]:
    """A user's shell: the venv on PATH, the tracking server, nothing of detloop's test process."""
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("DETLOOP_", "PYTHONPATH", "MLFLOW_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_TRACKING_URI"] = settings.mlflow.tracking_uri
    return env


@pytest.mark.slow
def test_the_champion_loads_with_mlflow_pyfunc_in_a_clean_process_and_serves(post: Any, dataset: Path,
                                                                             tmp_path: Path) -> None:
    """``mlflow.pyfunc.load_model("models:/<name>@champion")`` in a fresh Python predicts the boxes detloop's scoring
    gives for the same frame; ``mlflow models serve ... --env-manager local`` answers a request with them."""
    import base64
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from detloop.clients.registry import RegistryClient
    from detloop.contracts import FrameRef
    from detloop.settings import ModelSettings
    from tasks.registry import fetch_champion
    from tasks.scoring import OnnxScorer, score

    s = post["settings"]
    name = s.mlflow.model_name
    jpeg = _frame_jpeg(dataset)
    (tmp_path / "frame.jpg").write_bytes(jpeg)
    conf = 1e-4  # low enough that the 2-epoch model gives boxes (at most max_det per frame)

    # the signature a serving user reads
    import mlflow

    info = mlflow.models.get_model_info(f"models:/{name}@champion")
    assert info.signature.inputs.to_dict() == [{"type": "binary", "name": "image", "required": True},
        {"type": "string", "name": "camera", "required": False}]
    assert {"boxes", "class_names", "scores"} <= set(info.signature.outputs.input_names())

    # detloop's scoring of the frame, read from S3 as production frames are
    key = f"it-pyfunc-{uuid.uuid4().hex[:8]}/frames/camera=c/date=2026-01-05/100000-a.jpg"
    from detloop.clients.s3 import S3Store

    store = S3Store(s)
    store.put_bytes(s.s3.production_bucket, key, jpeg)
    champ = fetch_champion(s, RegistryClient(s))
    ms = ModelSettings(scoring_conf_threshold=conf)
    ours = score([FrameRef(s.s3.production_bucket, key, "", "c", "2026-01-05")], OnnxScorer(champ.scoring_dir, 1),
                 store, ms).frames[0].detections
    assert len(ours) > 0

    code = ("import json, sys, mlflow, pandas as pd\n"
            f"m = mlflow.pyfunc.load_model('models:/{name}@champion')\n"
            "out = m.predict(pd.DataFrame({'image': [open(sys.argv[1], 'rb').read()]}), "
            f"params={{'conf_threshold': {conf}}})\n"
            "print(json.dumps(out.iloc[0].to_dict()))\n"
            "print(json.dumps(sorted(k for k in sys.modules if k.split('.')[0] in ('torch', 'ultralytics'))))\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "frame.jpg")], cwd=tmp_path, env=_clean_env(s),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    row, heavy = json.loads(lines[-2]), json.loads(lines[-1])
    assert heavy == []  # served without torch or Ultralytics
    np.testing.assert_allclose(np.array(row["boxes"]).reshape(-1, 4), ours.xyxy, atol=2e-3)
    np.testing.assert_allclose(row["scores"], ours.confidence, atol=1e-4)
    assert row["class_ids"] == ours.class_id.tolist() and (row["width"], row["height"]) == (960, 720)

    with socket.socket() as sock:  # a free port (the stack's MLflow is on another)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    serve = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m",
                              f"models:/{name}@champion", "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                             cwd=tmp_path, env=_clean_env(s), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                assert serve.poll() is None, serve.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "mlflow models serve did not answer /ping"
                time.sleep(1)
        body = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(jpeg).decode()]]},
                           "params": {"conf_threshold": conf}}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            served = json.loads(r.read())["predictions"][0]
        assert served["boxes"] == row["boxes"] and served["scores"] == row["scores"]
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(timeout=30)


_SCORING_INPUTS: dict[str, tuple[Any, ...]] = {}


def _scoring_flow(runner: str) -> Any:
    """``flows.selection.score_sample`` inside a flow run (its inputs are not flow parameters: no settings in the API).

    The run's clients are built inside the flow: Prefect ships the flow run's context (this closure and the globals
    it reads) to Dask workers, and clients hold sockets and locks that never travel between processes.
    """
    from prefect import flow

    from flows.selection import score_sample

    @flow(name=f"test-scoring-{runner}")
    def run() -> Any:
        from detloop.clients import Clients

        settings, sample, model = _SCORING_INPUTS[runner]
        return score_sample(settings, Clients.from_settings(settings), sample, model)

    return run()


def test_scoring_on_a_dask_local_cluster_matches_threads(settings: Any, clients: Any) -> None:
    """`prefect.task_runner: dask` fans scoring chunks out to Dask workers (here a LocalCluster of two
    processes) that fetch the champion from the registry themselves; results equal the thread runner's."""
    import types
    from datetime import date

    from distributed import Client, LocalCluster

    from benchmarks.scoring_pipeline import synthetic_jpegs, upload_frames
    from tasks import registry as R
    from tasks.scoring import ModelRef

    champion = R.champion_version(clients.registry)
    assert champion is not None, "needs the champion left by test_register_gate_promote_rollback"
    store = clients.store
    refs = upload_frames(store, settings.s3.production_bucket, f"it-dask-{uuid.uuid4().hex[:8]}/",
                         synthetic_jpegs(23, seed=5))
    results = {}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        for runner, day in (("threads", 1), ("dask", 2)):  # another window: no cache hit between the two
            s = settings.model_copy(deep=True)
            s.prefect.task_runner = runner
            s.prefect.dask_address = cluster.scheduler_address
            s.prefect.score_chunk_frames = 10
            sample = types.SimpleNamespace(frames=refs, window=(date(2030, 1, day), date(2030, 1, day)))

            _SCORING_INPUTS[runner] = (s, sample, ModelRef(version=str(champion.version)))
            results[runner] = _scoring_flow(runner)
        with Client(cluster.scheduler_address) as client:  # the workers, not this process, scored the chunks
            ran = client.run(lambda: "tasks.scoring" in __import__("sys").modules)
    threads, dask = results["threads"], results["dask"]
    assert threads.timings["chunks"] == 1 and dask.timings["chunks"] == 3
    assert len(ran) == 2 and any(ran.values())
    assert [f.frame.key for f in dask.frames] == [f.frame.key for f in threads.frames] == [r.key for r in refs]
    for a, b in zip(threads.frames, dask.frames, strict=True):
        assert a.detections.equals(b.detections, atol=1e-3)
        np.testing.assert_allclose(a.embedding, b.embedding, atol=1e-4)


@pytest.mark.slow
def test_cli_models_pull_and_refused_promote(settings: Any, boot: Any, tmp_path: Path, monkeypatch: Any) -> None:
    """The CLI on the state left by the promotion test: list, pull the champion, refuse a failed version."""
    from typer.testing import CliRunner

    from cli.main import app
    from tasks.registry import PromotionError

    monkeypatch.setenv("DETLOOP_MLFLOW__MODEL_NAME", settings.mlflow.model_name)
    monkeypatch.setenv("DETLOOP_MLFLOW__EXPERIMENT", settings.mlflow.experiment)
    runner = CliRunner()
    r = runner.invoke(app, ["models", "--json"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.output.splitlines() if line.startswith("{")]
    champ = next(row for row in rows if "champion" in row["aliases"])
    rejected = next(row for row in rows if row["gate"] == "rejected")
    r = runner.invoke(app, ["champion", "pull", str(tmp_path / "srv")])
    assert r.exit_code == 0, r.output
    info = json.loads((tmp_path / "srv" / "champion.json").read_text())
    assert info["version"] == champ["version"] and (tmp_path / "srv" / "scoring" / "model.onnx").is_file()
    r = runner.invoke(app, ["promote", "--version", rejected["version"]])
    assert isinstance(r.exception, PromotionError) and "did not pass the gate" in str(r.exception)


def test_training_lock_refuses_a_second_training(settings: Any, dataset: Path, clients: Any) -> None:
    from detloop.errors import LockBusy
    from tasks.registry import training_lock
    from tasks.training import train

    with training_lock(settings, clients.store), pytest.raises(
            LockBusy, match=r"another training .* held by host \S+ pid \d+ since .* expires in"):
        train(dataset, settings, clients.registry, None, "locked", epochs=1, store=clients.store)


@pytest.fixture(autouse=True)
def _no_crash_env(monkeypatch: Any) -> None:
    if os.environ.get("DETLOOP_TEST_CRASH_TRAINING"):
        monkeypatch.delenv("DETLOOP_TEST_CRASH_TRAINING")
