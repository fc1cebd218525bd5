"""``detloop bench faults``: every stack service killed at every stage of a round, and the loop still loses nothing.

A *cell* kills one service (SIGKILL of its process group, :func:`infra.faults.kill_service`) at the moment one
stage of a round uses it, lets the flow run end however it ends, brings the stack back with
:func:`infra.stack.ensure_up` (what ``detloop stack up`` does), re-runs the flow, and then counts what a user
would lose: duplicate Label Studio tasks, selected frames without a task, annotations not in the dataset
version, frames wrongly quarantined, duplicate model versions, and whether ``champion`` ever pointed at a
version that is not completely registered.

Stages (the moment of the kill):

==============  ====================================================================================
``scoring``     the selection flow reads its first frame from S3
``push``        the first batch of the round's tasks went into Label Studio (the next batches have not)
``pull``        the retrain flow starts reading the round's annotations (export)
``train``       the retrain flow created the training's MLflow run; the training worker starts
``promotion``   the post-training flow is about to move ``champion`` (MLflow alias)
==============  ====================================================================================

The ``runner`` row kills the process that runs the flow (the runner's child, which dies with the runner):
mid-training it is killed while the training worker runs. Each cell has its own Label Studio project, MLflow
experiment and registered model (and a random-weights first champion), on one shared synthetic world.

Every helper here is also used by ``tests/integration/test_faults.py`` (the ``make test`` subset).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import yaml

from benchmarks._common import machine_info, utc_now, write_result

RESULTS = Path(__file__).resolve().parent / "results"
STAGES = ("scoring", "push", "pull", "train", "promotion")
SERVICES = ("s3", "mlflow", "label-studio", "prefect", "runner")
START = date(2026, 3, 2)  # the world's production frames: START .. START + DAYS - 1
DAYS = 7
AS_OF = START + timedelta(days=DAYS)
BUDGET = 6
GOLDEN_FRAMES, SEED_FRAMES = 16, 20
INPUT_SIZE = 160  # training, evaluation and scoring at a quarter of the pixels of 320: these runs test plumbing


# --------------------------------------------------------------------------------------------
# A world on the stack, and one isolated config per cell
# --------------------------------------------------------------------------------------------
@dataclass
class FaultWorld:
    """Frames, golden and seed versions on the stack, and a random-weights model to start cells from."""

    stack: Any  # the stack's Settings (secrets filled)
    work: Path
    tag: str
    prefix: str
    golden: str
    seed: str
    weights: Path  # random-weights .pt (fine-tuning starts from it)
    artifact: Path  # its scoring artifact
    lease_seconds: float = 6.0

    def cell(self, name: str) -> Cell:
        """An isolated cell: own Label Studio project, MLflow experiment and model, a random champion."""
        from detloop.clients import Clients
        from detloop.settings import SECRET_FIELDS, load_settings
        from tasks.registry import promote, register_challenger

        sfx = f"{self.tag}-{name}"
        cfg = self.stack.model_dump(mode="json")  # resolved: the runner reads the same URLs from this file
        for section, secret in SECRET_FIELDS:
            cfg[section].pop(secret, None)
        cfg.pop("source", None)
        cfg["s3"] = {**cfg.get("s3", {}), "production_prefix": self.prefix}
        cfg["label_studio"] = {**cfg.get("label_studio", {}), "project_title": f"faults-{sfx}",
                               "import_batch_size": 2}
        cfg["mlflow"] = {**cfg.get("mlflow", {}), "experiment": f"faults-{sfx}", "model_name": f"faults-{sfx}"}
        cfg["training"] = {**cfg.get("training", {}), "finetune_epochs": 1, "batch": 8, "nbs": 8, "workers": 0}
        cfg["model"] = {**cfg.get("model", {}), "input_size": INPUT_SIZE}
        cfg["gate"] = {"bootstrap_floor": 0.0, "min_delta": -1.0, "class_tol": 1.0, "small_tol": 1.0,
                       "latency_ratio_max": 100.0}
        cfg["evaluation"] = {**cfg.get("evaluation", {}), "min_instances": 5, "golden_version": self.golden,
                             "latency_frames": 4}
        cfg["selection"] = {**cfg.get("selection", {}), "budget": BUDGET, "control_min": 1}
        cfg["locks"] = {"lease_seconds": self.lease_seconds}
        path = self.work / f"cell-{name}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        s = load_settings(path)
        clients = Clients.from_settings(s)
        run_id = clients.registry.create_run("random-first-champion", {"detloop.kind": "bench-faults"})
        clients.registry.end_run(run_id, "FINISHED")
        v = register_challenger(s, clients.registry, run_id, self.weights, self.artifact, dataset_version=self.seed)
        promote(s, clients.registry, clients.store, v, override=True, reason="fault bench: random-weights champion",
                actor="bench-faults")
        return Cell(name, str(path), s)


@dataclass
class Cell:
    """One isolated configuration on the shared world (its rounds, tasks and models are its own)."""

    name: str
    config: str
    settings: Any
    annotated: dict[str, set[int]] = field(default_factory=dict)  # round -> task ids with a submitted annotation


def make_world(stack: Any, work: Path, lease_seconds: float = 6.0, log: Callable[[str], None] = print) -> FaultWorld:
    """Publish a small world (7 days x 5 cameras x 3 frames), a golden (16) and a seed (20) version, and a
    random-weights model exported at 160 px."""
    from detloop.world.publish import publish_golden, publish_seed, publish_world
    from tasks.export import export_scoring_artifact, make_random_weights

    tag = uuid.uuid4().hex[:6]
    work.mkdir(parents=True, exist_ok=True)
    s = stack.model_copy(deep=True)
    s.s3.production_prefix = f"faults-{tag}/frames/"
    t0 = time.monotonic()
    publish_world(s, START, DAYS, 3, threads=4)
    golden = publish_golden(s, frames=GOLDEN_FRAMES, threads=4)
    seed = publish_seed(s, frames=SEED_FRAMES, threads=4)
    weights = make_random_weights(work / "random.pt", list(s.classes))
    artifact = export_scoring_artifact(weights, work / "random-scoring", list(s.classes), INPUT_SIZE)
    log(f"world {tag}: frames, golden {golden}, seed {seed}, random model in {time.monotonic() - t0:.0f} s")
    return FaultWorld(stack, work, tag, s.s3.production_prefix, golden, seed, weights, artifact, lease_seconds)


# --------------------------------------------------------------------------------------------
# The loop's steps, run in this process (the clients a flow builds can be replaced)
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def clients_wrapped(wrap: Callable[[Any], Any] | None) -> Iterator[None]:
    """Every ``Clients.from_settings`` in the block returns the real clients passed through ``wrap``."""
    from detloop.clients import Clients

    if wrap is None:
        yield
        return
    real = Clients.__dict__["from_settings"]
    Clients.from_settings = classmethod(lambda cls, s: wrap(real.__func__(cls, s)))  # type: ignore[method-assign]
    try:
        yield
    finally:
        Clients.from_settings = real  # type: ignore[method-assign]


@contextlib.contextmanager
def no_events() -> Iterator[None]:
    """Keep Prefect events of in-process flows local (a round-completed event would start the runner's retrain)."""
    import prefect.events

    real = prefect.events.emit_event
    prefect.events.emit_event = lambda **kw: None  # type: ignore[assignment]
    try:
        yield
    finally:
        prefect.events.emit_event = real  # type: ignore[assignment]


def select(cell: Cell, as_of: date = AS_OF, wrap: Callable[[Any], Any] | None = None) -> dict[str, Any]:
    from flows.loop import select_for_labeling
    from flows.params import SelectParams

    with clients_wrapped(wrap), no_events():
        return select_for_labeling(SelectParams(config=cell.config, as_of=as_of, budget=BUDGET))


def forget_scores(store: Any, bucket: str) -> int:
    """Delete the stored predictions (``predictions/`` in the data bucket); returns how many objects went.

    Every cell's first champion has the same random weights, so without this a cell's selection finds the
    predictions an earlier cell stored for the same frames and model, reads no frame, and its ``scoring`` kill
    (at the first frame read) never fires: the cell would measure nothing.
    """
    keys = [o.key for o in store.list(bucket, "predictions/")]
    for key in keys:
        store.delete(bucket, key)
    return len(keys)


def round_of(cell: Cell, as_of: date = AS_OF) -> str:
    from tasks.rounds import round_id_for

    return round_id_for(cell.settings.label_studio.project_title, as_of)


def annotate_and_close(cell: Cell, round_id: str) -> None:
    """The simulated annotator labels every task; watch-rounds closes the round (its event kept local)."""
    from detloop.sim.annotator import AnnotatorProfile, annotate_pending
    from flows.loop import watch_rounds
    from flows.params import WatchParams

    annotate_pending(cell.settings, AnnotatorProfile(seed=3), round_id=round_id)
    cell.annotated[round_id] = {t["id"] for t in ls_tasks(cell, round_id) if int(t.get("total_annotations") or 0)}
    with no_events():
        watch_rounds(WatchParams(config=cell.config))


def retrain(cell: Cell, round_id: str, wrap: Callable[[Any], Any] | None = None) -> dict[str, Any]:
    from flows.loop import retrain_and_promote
    from flows.params import RetrainParams

    with clients_wrapped(wrap), no_events():
        return retrain_and_promote(RetrainParams(config=cell.config, round_id=round_id))


def ls_tasks(cell: Cell, round_id: str) -> list[dict[str, Any]]:
    from detloop.clients.labelstudio import LabelStudioClient
    from detloop.ls_format import data_filter

    ls = LabelStudioClient(cell.settings)
    p = ls.find_project(cell.settings.label_studio.project_title)
    if p is None:
        return []
    return list(ls.iter_tasks(p.id, [data_filter("round_id", round_id)], fields="task_only",
                              include="id,data,total_annotations"))


# --------------------------------------------------------------------------------------------
# Where each stage's kill goes
# --------------------------------------------------------------------------------------------
def injector(stage: str, kill: Callable[[], None], injection: Any) -> Callable[[Any], Any]:
    """``wrap(clients)`` that makes the clients run ``kill`` at ``stage`` (one injection shared by every bundle)."""
    from infra.faults import kill_on_call

    def wrap(c: Any) -> Any:
        if stage == "scoring":
            c.store = kill_on_call(c.store, "read_frame", kill, injection=injection)
        elif stage == "push":
            c.labels = kill_on_call(c.labels, "import_tasks", kill, after=True, injection=injection)
        elif stage == "pull":
            c.labels = kill_on_call(c.labels, "export_tasks", kill, injection=injection)
        elif stage == "train":
            c.registry = kill_on_call(c.registry, "create_run", kill, after=True, injection=injection)
        elif stage == "registration":  # MLflow dies after the model files went up, before the version exists
            c.registry._client = kill_on_call(c.registry.client, "finalize_logged_model", kill, injection=injection)
        elif stage == "promotion":
            c.registry = kill_on_call(c.registry, "set_alias", kill, when=lambda alias, *a, **k: alias == "champion",
                                      injection=injection)
        else:
            raise ValueError(f"unknown stage {stage!r}; known: {', '.join(STAGES)}, registration")
        return c

    return wrap


def service_killer(stack: Any, service: str, restart_after_s: float | None = None) -> Callable[[], None]:
    """SIGKILL ``service``; with ``restart_after_s`` a supervisor brings it back that many seconds later
    (as systemd or Kubernetes would), while the flow goes on."""
    from infra.faults import kill_service
    from infra.stack import ensure_up

    def kill() -> None:
        kill_service(stack, service)
        if restart_after_s is not None:
            def later() -> None:
                time.sleep(restart_after_s)
                ensure_up(stack)

            threading.Thread(target=later, name=f"supervisor-{service}", daemon=True).start()

    return kill


# --------------------------------------------------------------------------------------------
# What a user would lose
# --------------------------------------------------------------------------------------------
def check(cell: Cell, round_id: str, trained: bool) -> dict[str, Any]:
    """Counts of everything that must be zero (and the champion's integrity) for one round of one cell."""
    from detloop.clients import Clients
    from tasks.selection import read_stored_selection

    s = cell.settings
    c = Clients.from_settings(s)
    bucket = s.s3.data_bucket
    tasks = ls_tasks(cell, round_id)
    keys = [str((t.get("data") or {}).get("s3_key")) for t in tasks]
    stored = read_stored_selection(c.store, bucket, round_id)
    selected = {f.frame.key for f in stored[0]} if stored else set()
    quarantined: list[str] = []
    for key in (f"runs/{round_id}/quarantine.json", f"runs/{round_id}/selection_report.json"):
        doc = c.store.get_bytes_or_none(bucket, key)
        if doc is not None:
            quarantined += [q.get("key") for q in json.loads(doc).get("quarantined", [])]
    out: dict[str, Any] = {
        "tasks": len(tasks), "selected": len(selected),
        "duplicate_tasks": len(keys) - len(set(keys)),
        "selected_without_task": len(selected - set(keys)),
        "wrongly_quarantined": len(set(quarantined)),  # the world has no bad frame: every entry is wrong
    }
    versions = c.registry.versions()
    runs = [v.run_id for v in versions]
    out["versions"] = len(versions)
    out["duplicate_versions"] = len(runs) - len(set(runs)) + max(
        0, sum(v.tags.get("detloop.round_id") == round_id for v in versions) - 1)
    if trained:
        res = c.store.get_json(bucket, f"rounds/{round_id}/result.json")
        annotated = cell.annotated.get(round_id, set())
        report = c.store.get_json(bucket, f"rounds/{round_id}/labels_report.json")
        out["annotated"] = len(annotated)
        out["lost_annotations"] = len(annotated) - int(report.get("labelled", 0))
        out["labelled_frames_in_version"] = res.get("labelled_frames")
        out["promoted"] = bool(res.get("promoted"))
    out.update(champion_integrity(s, c.registry))
    from tasks.registry import read_promotion_log

    logged = {e.get("version") for e in read_promotion_log(c.store, s) if e.get("model") == s.mlflow.model_name
              and e.get("action") in ("promote", "override")}
    out["promotions_not_logged"] = int(out.get("champion") is not None and out["champion"] not in logged)
    orphans = c.registry.find_runs("attributes.status = 'RUNNING'", max_results=50)
    out["orphan_mlflow_runs"] = len(orphans)
    return out


def champion_integrity(settings: Any, registry: Any) -> dict[str, Any]:
    """``champion_ok``: the version behind ``champion`` is READY, complete, and its ONNX is the one it records."""
    import shutil
    import tempfile

    from detloop.datasets import file_sha256
    from tasks.registry import CHAMPION, load_champion

    mv = registry.version_by_alias(CHAMPION)
    if mv is None:
        return {"champion": None, "champion_ok": False}
    source = str(getattr(mv, "source", "") or "")
    ready = True
    if source.startswith("models:/"):
        lm = registry.call("get logged model", lambda: registry.client.get_logged_model(source.split("/", 1)[1]))
        ready = str(getattr(lm, "status", "")).upper().endswith("READY")
    tmp = Path(tempfile.mkdtemp(prefix="champion-check-"))
    try:
        local = load_champion(settings, registry, tmp / "c", version=str(mv.version))
        onnx = local / "scoring" / "model.onnx" if local else None
        same = bool(onnx and onnx.is_file() and file_sha256(onnx) == mv.tags.get("detloop.onnx_sha256"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"champion": str(mv.version), "champion_ok": bool(ready and same)}


# --------------------------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------------------------
@dataclass
class CellResult:
    service: str
    stage: str
    faulted_run: str  # how the run that saw the kill ended: completed / failed: <error> / killed
    killed: bool  # the kill happened (the stage was reached)
    recovery_s: float  # ensure_up after the kill
    reruns: int
    lease_wait_s: float
    seconds: float
    counts: dict[str, Any]

    @property
    def lost(self) -> int:
        c = self.counts
        return sum(int(c.get(k) or 0) for k in ("duplicate_tasks", "selected_without_task", "wrongly_quarantined",
                                                   "duplicate_versions", "lost_annotations", "promotions_not_logged"))


def _outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    try:
        out = fn()
    except BaseException as err:  # the faulted run: whatever it raised is the measurement, one line
        if isinstance(err, KeyboardInterrupt):
            raise
        return f"failed: {type(err).__name__}: {' '.join(str(err).split())[:160]}", None
    return ("skipped: " + out["skipped"][:120]) if isinstance(out, dict) and out.get("skipped") else "completed", out


def rerun_until_done(fn: Callable[[], Any], lease_seconds: float, attempts: int = 4) -> tuple[int, float]:
    """Re-run ``fn`` after a fault until it completes: a run skipped because the killed run's lease is still
    live waits for the lease to expire. Returns ``(re-runs, seconds waited for leases)``."""
    waited = 0.0
    for i in range(1, attempts + 1):
        out = fn()
        if isinstance(out, dict) and out.get("skipped"):
            time.sleep(lease_seconds + 1)
            waited += lease_seconds + 1
            continue
        return i, waited
    raise RuntimeError(f"still not done after {attempts} re-runs")


def run_cell(world: FaultWorld, service: str, stage: str, log: Callable[[str], None] = print) -> CellResult:
    """Kill ``service`` at ``stage`` of a fresh round of a fresh cell; recover; re-run; count."""
    from infra.faults import Injection
    from infra.stack import ensure_up

    t0 = time.monotonic()
    cell = world.cell(f"{service.replace('-', '')}-{stage}")
    rid = round_of(cell)
    post = stage in ("pull", "train", "promotion", "registration")
    if post:
        select(cell)
        annotate_and_close(cell, rid)
    if stage == "scoring":  # scoring must read frames, not an earlier cell's stored predictions
        from detloop.clients.s3 import S3Store

        forget_scores(S3Store(cell.settings), cell.settings.s3.data_bucket)
    inj = Injection(service, stage)
    if service == "runner":  # the process running the flow is killed: a child process with the same injection
        faulted = child_run(cell, stage, rid)
    else:
        restart = 3.0 if service == "prefect" else None  # Prefect's client retries ~1 min: restart under it
        wrap = injector(stage, service_killer(world.stack, service, restart), inj)
        run = (lambda: retrain(cell, rid, wrap)) if post else (lambda: select(cell, wrap=wrap))
        faulted, _ = _outcome(run)
    killed = (service == "runner" and faulted == "killed") or inj.killed_at is not None
    t1 = time.monotonic()
    ensure_up(world.stack)
    recovery = time.monotonic() - t1
    if post:
        reruns, waited = rerun_until_done(lambda: retrain(cell, rid), world.lease_seconds)
    else:
        reruns, waited = rerun_until_done(lambda: select(cell), world.lease_seconds)
    counts = check(cell, rid, trained=post)
    res = CellResult(service, stage, faulted, killed, round(recovery, 1), reruns, round(waited, 1),
                     round(time.monotonic() - t0, 1), counts)
    log(f"{service:>12} @ {stage:<9} {faulted[:70]:<70} lost {res.lost} champion_ok {counts.get('champion_ok')} "
        f"({res.seconds:.0f} s)")
    return res


# --------------------------------------------------------------------------------------------
# The flow process itself killed (the runner row): a child process that SIGKILLs itself at the stage
# --------------------------------------------------------------------------------------------
def child_run(cell: Cell, stage: str, round_id: str, timeout_s: float = 900) -> str:
    """Run the stage's flow in a child process that kills itself (SIGKILL) at the stage; mid-training it dies
    8 s after the training started (the worker is running). Returns ``killed`` or how it ended otherwise."""
    cmd = [sys.executable, "-m", "benchmarks.faults", "--child", stage, "--config", cell.config, "--round", round_id]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
    if p.returncode == -signal.SIGKILL:
        return "killed"
    return f"exit {p.returncode}: {' '.join((p.stderr or p.stdout).split()[-30:])}"


def _child(stage: str, config: str, round_id: str) -> None:
    from detloop.settings import load_settings
    from infra.faults import Injection

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def die_later() -> None:
        threading.Timer(8.0, die).start()

    cell = Cell("child", config, load_settings(config))
    wrap = injector(stage, die_later if stage == "train" else die, Injection("runner", stage))
    if stage in ("scoring", "push"):
        select(cell, wrap=wrap)
    else:
        retrain(cell, round_id, wrap)


# --------------------------------------------------------------------------------------------
# Two retrains of one round at once, on two "hosts" that share nothing but the services
# --------------------------------------------------------------------------------------------
def two_retrains_at_once(cell: Cell, round_id: str, work: Path, timeout_s: float = 1800) -> list[dict[str, Any]]:
    """Start ``retrain-and-promote`` for ``round_id`` in two processes at the same moment, each with its own data
    dir, caches and Prefect home (no common file, no kernel lock to share): only the services are common. The
    credentials come from the environment, as a pod gets them. Returns both results (stdout JSON), in start order.
    """
    code = ("import json, sys; from flows.loop import retrain_and_promote; from flows.params import RetrainParams; "
            "out = retrain_and_promote(RetrainParams(config=sys.argv[1], round_id=sys.argv[2])); "
            "print('RESULT ' + json.dumps({k: out.get(k) for k in ('skipped', 'run_id', 'train_reused', 'version', "
            "'outcome', 'promoted', 'resumed')}))")
    s = cell.settings
    key, secret = s.s3_credentials()
    procs = []
    for host in ("a", "b"):
        home = work / f"host-{host}"
        home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DETLOOP_", "PREFECT_HOME"))}
        env.update({  # the services' addresses and credentials, as a pod's environment would carry them
            "DETLOOP_CONFIG": cell.config, "DETLOOP_DATA_DIR": str(home / "data"), "PREFECT_HOME": str(home / "prefect"),
            "PREFECT_API_URL": s.prefect.api_url, "DETLOOP_PREFECT__API_URL": s.prefect.api_url,
            "DETLOOP_S3__ENDPOINT_URL": s.s3.endpoint_url or "", "DETLOOP_MLFLOW__TRACKING_URI": s.mlflow.tracking_uri,
            "MLFLOW_TRACKING_URI": s.mlflow.tracking_uri, "DETLOOP_LABEL_STUDIO__URL": s.label_studio.url,
            "DETLOOP_S3__ACCESS_KEY_ID": key or "",
            "DETLOOP_S3__SECRET_ACCESS_KEY": secret or "", "DETLOOP_LABEL_STUDIO__API_TOKEN": s.label_studio_token() or "",
            "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]),
        })
        procs.append(subprocess.Popen([sys.executable, "-c", code, cell.config, round_id], env=env, cwd=str(home),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for p in procs:
        out, err = p.communicate(timeout=timeout_s)
        line = next((ln for ln in out.splitlines() if ln.startswith("RESULT ")), None)
        results.append(json.loads(line[7:]) if line else {"error": f"exit {p.returncode}: {err[-600:]}"})
    return results


# --------------------------------------------------------------------------------------------
# Secrets: everything the loop wrote, scanned for every secret value
# --------------------------------------------------------------------------------------------
def secret_values(stack: Any) -> dict[str, str]:
    """name -> value of every secret the stack and its clients use (S3 keys, Label Studio token and password,
    MLflow credentials when set)."""
    from detloop.settings import read_secrets_file

    key, secret = stack.s3_credentials()
    out = {"s3 access key id": key, "s3 secret access key": secret, "label studio token": stack.label_studio_token(),
           "label studio password": read_secrets_file(stack.secrets_file).get("LABEL_STUDIO_PASSWORD")}
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        if os.environ.get(name):
            out[name] = os.environ[name]
    return {k: v for k, v in out.items() if v}


def scan_for_secrets(stack: Any, since_ms: int, extra_keys: list[tuple[str, str]] = (),
                     extra_secrets: dict[str, str] | None = None) -> dict[str, Any]:
    """Look for every secret value in: the stack's log files and resolved config; every Prefect flow run's
    parameters, state message, artifacts and logs; every MLflow run's params and tags (and the artifacts of runs
    started after ``since_ms``), every model version's tags; and the given S3 objects ``(bucket, key)``.

    Args:
        extra_secrets: more values to look for (a planted canary proves the scan finds what is there).

    Returns:
        ``{"scanned": {place: count}, "found": ["<secret name> in <place>", ...]}``.
    """
    from mlflow import MlflowClient
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter
    from prefect.client.schemas.sorting import LogSort

    from detloop.clients.s3 import S3Store
    from infra.stack import stack_paths

    secrets = {**secret_values(stack), **(extra_secrets or {})}
    found: list[str] = []
    scanned: dict[str, int] = {}

    def look(text: str, where: str, kind: str) -> None:
        scanned[kind] = scanned.get(kind, 0) + 1
        for name, value in secrets.items():
            if value in text:
                found.append(f"{name} in {where}")

    paths = stack_paths(stack)
    for f in [*sorted(paths.logs.glob("*.log")), paths.resolved_config]:
        if f.is_file():
            look(f.read_text(errors="replace"), str(f), "stack files")
    with get_client(sync_client=True) as pc:
        offset = 0
        while True:
            runs = pc.read_flow_runs(limit=200, offset=offset)
            for r in runs:
                look(json.dumps(r.parameters, default=str) + (r.state.message or "" if r.state else ""),
                     f"flow run {r.name} parameters", "prefect flow runs")
            if len(runs) < 200:
                break
            offset += 200
        offset = 0
        while True:
            arts = pc.read_artifacts(limit=200, offset=offset)
            for a in arts:
                look(json.dumps(a.data, default=str) + (a.description or ""), f"prefect artifact {a.key}",
                     "prefect artifacts")
            if len(arts) < 200:
                break
            offset += 200
        offset = 0
        while offset < 50_000:
            logs = pc.read_logs(log_filter=LogFilter(), limit=200, offset=offset, sort=LogSort.TIMESTAMP_DESC)
            for lg in logs:
                look(lg.message, f"prefect log of flow run {lg.flow_run_id}", "prefect log lines")
            if len(logs) < 200:
                break
            offset += 200
    ml = MlflowClient(tracking_uri=stack.mlflow.tracking_uri)
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="secret-scan-"))
    for exp in ml.search_experiments(max_results=5000):
        for run in ml.search_runs([exp.experiment_id], max_results=5000):
            look(json.dumps(run.data.params) + json.dumps(run.data.tags), f"mlflow run {run.info.run_id} params/tags",
                 "mlflow runs")
            if run.info.start_time and run.info.start_time >= since_ms:
                for path in _artifact_files(ml, run.info.run_id):
                    if path.rsplit(".", 1)[-1] in ("json", "md", "txt", "yaml", "yml", "csv", "log"):
                        local = ml.download_artifacts(run.info.run_id, path, str(tmp))
                        look(Path(local).read_text(errors="replace"), f"mlflow artifact {run.info.run_id}/{path}",
                             "mlflow text artifacts")
    for rm in ml.search_registered_models(max_results=1000):
        for mv in ml.search_model_versions(f"name='{rm.name}'", max_results=1000):
            look(json.dumps(mv.tags), f"model version {rm.name}/{mv.version} tags", "model versions")
    store = S3Store(stack)
    for bucket, key in extra_keys:
        body = store.get_bytes_or_none(bucket, key)
        if body is not None:
            look(body.decode(errors="replace"), f"s3://{bucket}/{key}", "s3 reports and manifests")
    return {"scanned": scanned, "found": found}


def _artifact_files(ml: Any, run_id: str, path: str | None = None) -> list[str]:
    out: list[str] = []
    for a in ml.list_artifacts(run_id, path):
        out += _artifact_files(ml, run_id, a.path) if a.is_dir else [a.path]
    return out


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------
def markdown(cells: list[CellResult]) -> str:
    rows = ["| service | stage | killed | the run that saw the kill | stack up (s) | re-runs | lease wait (s) | lost | "
            "champion ok |", "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for c in cells:
        rows.append(f"| {c.service} | {c.stage} | {'yes' if c.killed else 'NO (stage not reached)'} | "
                    f"{c.faulted_run[:90].replace('|', '/')} | {c.recovery_s} | "
                    f"{c.reruns} | {c.lease_wait_s} | {c.lost} | {c.counts.get('champion_ok')} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="detloop bench faults", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None, help="the stack's config (default $DETLOOP_CONFIG or configs/test.yaml)")
    ap.add_argument("--services", default=",".join(SERVICES), help="comma-separated rows of the matrix")
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated columns of the matrix")
    ap.add_argument("--out", type=Path, default=RESULTS / "faults.json")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: <data_dir>/bench-faults)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--round", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child, args.config, args.round)
        return {}
    from detloop.offline import apply_offline_env
    from detloop.settings import load_settings
    from infra.stack import client_env, ensure_up

    stack = load_settings(args.config or os.environ.get("DETLOOP_CONFIG") or "configs/test.yaml")
    ensure_up(stack)
    os.environ.update(client_env(stack))
    apply_offline_env(stack)
    t0 = time.monotonic()
    world = make_world(stack, args.work or stack.data_dir / "bench-faults")
    cells: list[CellResult] = []
    for service in [x for x in args.services.split(",") if x]:
        for stage in [x for x in args.stages.split(",") if x]:
            cells.append(run_cell(world, service, stage))
    result = {
        "when": utc_now(), "host": machine_info(), "seconds": round(time.monotonic() - t0, 1),
        "lease_seconds": world.lease_seconds, "budget": BUDGET,
        "cells": [{**asdict(c), "lost": c.lost} for c in cells],
        "lost_total": sum(c.lost for c in cells),
        "champion_always_ok": all(c.counts.get("champion_ok") for c in cells),
        "table": markdown(cells),
    }
    write_result(args.out, result)
    print(result["table"])
    return result


if __name__ == "__main__":
    main()
