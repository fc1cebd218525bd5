"""The embedded local stack: real servers on loopback, started and stopped by ``detloop stack``.

Services (start order; ``down`` goes in reverse):

====================  ===========================================  ==============================
name                  what                                         health
====================  ===========================================  ==============================
``s3``                SeaweedFS ``weed server`` (S3 + filer)       ``GET /healthz`` on the S3 port
``mlflow``            MLflow tracking server, artifacts proxied    ``GET /health``
                      to ``s3://<artifacts_bucket>/``
``label-studio``      Label Studio 1.23 from its own venv          ``GET /health`` + token accepted
``prefect``           Prefect server (API + UI, SQLite)            ``GET /api/health``
``runner``            ``python -m flows.serve`` (deployments)      process alive
====================  ===========================================  ==============================

All state lives under ``settings.data_dir``::

    <data_dir>/secrets.env              generated keys and token (mode 600)
    <data_dir>/stack-config.yaml        the resolved config the runner is started with (no secrets)
    <data_dir>/logs/<service>.log       stdout+stderr of each service (appended)
    <data_dir>/pids/<service>.pid       JSON pid record (pid, start time, argv)
    <data_dir>/weed/                    SeaweedFS volumes, master and filer metadata, s3.json
    <data_dir>/mlflow/mlflow.db         MLflow backend store (artifacts are in S3)
    <data_dir>/label-studio/            Label Studio SQLite DB and media
    <data_dir>/label-studio-venv/       Label Studio's own venv (or ``stack.label_studio_venv``)
    <data_dir>/prefect/                 PREFECT_HOME of the server (prefect.db)

Public API for other areas: :func:`ensure_up`, :func:`down`, :func:`status`, :func:`client_env`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from detloop.settings import REPO_ROOT, SECRET_FIELDS, Settings
from infra import procs
from infra.procs import PidRecord, StackError
from infra.secrets import StackSecrets, ensure_secrets

SERVICES: tuple[str, ...] = ("s3", "mlflow", "label-studio", "prefect", "runner")
TITLES = {
    "s3": "S3 (SeaweedFS)",
    "mlflow": "MLflow",
    "label-studio": "Label Studio",
    "prefect": "Prefect server",
    "runner": "Prefect runner",
}
# Every S3 bucket is a SeaweedFS collection with its own volumes. Defaults (7 volumes per new collection,
# slots = free disk / 30 GB or 1 GB) ran out after ~10 buckets; one volume per collection, 256 MB volumes
# (files are not preallocated) and 1000 slots leave room for many test buckets.
WEED_VOLUME_SIZE_MB = 256
WEED_MAX_VOLUMES = 1000
GRPC_OFFSET = 10000
PORT_RELEASE_S = 20.0  # a port held by no visible process (a service still dying) is waited for this long
# SeaweedFS on SIGTERM runs its stop hooks one after the other (SeaweedFS 4.x source): the filer's gRPC graceful
# stop (waits for its metadata subscribers, the S3 gateway's and its own aggregator's streams in the same process,
# which only end with it: always its fixed 15 s), the filer's HTTP shutdown (up to 15 s for requests in flight),
# then the volume server: `-volume.preStopSeconds` (default 10 s; 0 here, a single node has no peer to hand
# traffic to), its cluster HTTP stop (up to 30 s for connections that are new or busy), its gRPC graceful stop
# (no limit), then the master. Measured quiet: 25.4 s with the default preStop, 15.3 s with 0; 15.1 s also with
# both cores and the disk loaded, with a slow upload in flight, and with raw connections open to the volume port.
# The bounded steps can add up to 60 s (the source's limits; what made them run long was not reproduced): a wait
# of 3 s ended it with SIGKILL every time, 30 s once on a loaded machine, 60 s once in CI. 90 s covers them.
TERM_TIMEOUT_S = {"s3": 90.0}
# A line of a service's log that names a step of its stop (SeaweedFS: "Gracefully stopping gRPC server", "graceful
# stop cluster http server ...", "volume server has been killed"): the last one says where a killed stop was stuck.
_STOP_STEP = re.compile(r"stop|killed|shut ?down", re.IGNORECASE)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
RUNNER_MODULE = "flows.serve"
LS_INSTALL_TIMEOUT_S = 1800
# Inherited variables that would leak into a server's behaviour or carry secrets of another setup.
_SCRUB_PREFIXES = ("DETLOOP_", "AWS_", "LABEL_STUDIO_", "HEARTEX_", "MLFLOW_", "PREFECT_")
_SCRUB_NAMES = {"HOST", "PORT", "USERNAME", "PASSWORD", "DJANGO_DB", "DJANGO_SETTINGS_MODULE", "S3_ENDPOINT"}

Log = Callable[[str], None]


def _noop(_: str) -> None:
    return None


# --------------------------------------------------------------------------------------------
# Paths and URLs
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StackPaths:
    """Every file and folder of one stack (all under the data dir)."""

    root: Path

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pids(self) -> Path:
        return self.root / "pids"

    @property
    def weed(self) -> Path:
        return self.root / "weed"

    @property
    def mlflow(self) -> Path:
        return self.root / "mlflow"

    @property
    def label_studio(self) -> Path:
        return self.root / "label-studio"

    @property
    def prefect(self) -> Path:
        return self.root / "prefect"

    @property
    def lock(self) -> Path:
        return self.root / "stack.lock"

    @property
    def resolved_config(self) -> Path:
        return self.root / "stack-config.yaml"

    def log(self, service: str) -> Path:
        return self.logs / f"{service}.log"

    def pid(self, service: str) -> Path:
        return self.pids / f"{service}.pid"


def stack_paths(settings: Settings) -> StackPaths:
    return StackPaths(Path(settings.data_dir))


def service_url(settings: Settings, service: str) -> str:
    """Base URL the stack serves ``service`` on (built from ``stack.host`` and ``stack.ports``)."""
    h, p = settings.stack.host, settings.stack.ports
    return {
        "s3": f"http://{h}:{p.s3}",
        "mlflow": f"http://{h}:{p.mlflow}",
        "label-studio": f"http://{h}:{p.label_studio}",
        "prefect": f"http://{h}:{p.prefect}/api",
        "runner": f"{RUNNER_MODULE} -> http://{h}:{p.prefect}/api",
    }[service]


def url_mismatches(settings: Settings) -> list[str]:
    """Client URLs of ``settings`` that do not point at the ports this stack serves (one line each)."""
    pairs = [
        ("s3.endpoint_url", settings.s3.endpoint_url, service_url(settings, "s3")),
        ("mlflow.tracking_uri", settings.mlflow.tracking_uri, service_url(settings, "mlflow")),
        ("label_studio.url", settings.label_studio.url, service_url(settings, "label-studio")),
        ("prefect.api_url", settings.prefect.api_url, service_url(settings, "prefect")),
    ]
    norm = lambda u: (u or "").rstrip("/").replace("://localhost:", "://127.0.0.1:")  # noqa: E731
    return [
        f"{name} is {got!r} but the stack serves {want!r} (stack.host/stack.ports)"
        for name, got, want in pairs
        if norm(got) != norm(want)
    ]


def host_warning(host: str) -> str | None:
    """A warning when ``stack.host`` is not a loopback address (None when it is)."""
    import ipaddress

    if host in LOOPBACK_HOSTS:
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return (f"stack.host is {host!r}, not a loopback address: the services listen there and anyone who reaches "
            "it can use MLflow and Prefect (no authentication) and try the S3 keys and the Label Studio login; "
            "use 127.0.0.1 unless a firewall keeps that network private")


def service_ports(settings: Settings, service: str) -> dict[str, int]:
    """label -> port that ``service`` will bind (checked free before start)."""
    p = settings.stack.ports
    if service == "s3":
        base = {"S3": p.s3, "SeaweedFS master": p.weed_master, "SeaweedFS volume": p.weed_volume,
                "SeaweedFS filer": p.weed_filer}
        out = dict(base)
        out.update({f"{k} gRPC": v + GRPC_OFFSET for k, v in base.items()})
        return out
    if service == "mlflow":
        return {"MLflow": p.mlflow}
    if service == "label-studio":
        return {"Label Studio": p.label_studio}
    if service == "prefect":
        return {"Prefect": p.prefect}
    return {}


def label_studio_venv(settings: Settings) -> Path:
    """Where Label Studio's own venv lives: ``stack.label_studio_venv`` or ``<data_dir>/label-studio-venv``."""
    v = settings.stack.label_studio_venv
    if v is None:
        return Path(settings.data_dir) / "label-studio-venv"
    return Path(v).expanduser().resolve()


def runner_installed() -> bool:
    """True when the flows area provides ``flows.serve``."""
    import importlib.util

    try:
        return importlib.util.find_spec(RUNNER_MODULE) is not None
    except (ImportError, ValueError):
        return False


def runner_wanted(settings: Settings) -> bool:
    return bool(settings.stack.runner) and runner_installed()


# --------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------
def client_env(settings: Settings) -> dict[str, str]:
    """Variables a client process (CLI, flows, tests, the demo) needs to talk to this stack.

    No secrets: clients read those from the environment or ``<data_dir>/secrets.env`` via
    :func:`detloop.settings.load_settings`.
    """
    from detloop.offline import offline_env

    env = offline_env(settings)
    env.update(
        {
            "PREFECT_API_URL": settings.prefect.api_url,
            "MLFLOW_TRACKING_URI": settings.mlflow.tracking_uri,
            "DETLOOP_DATA_DIR": str(settings.data_dir),
        }
    )
    if settings.source:
        env["DETLOOP_CONFIG"] = str(Path(settings.source).resolve())
    if settings.s3.endpoint_url:
        env["MLFLOW_S3_ENDPOINT_URL"] = settings.s3.endpoint_url
    return env


def _base_env(settings: Settings, parent: Mapping[str, str] | None = None) -> dict[str, str]:
    """The parent environment minus anything that could steer a server elsewhere, plus offline switches."""
    from detloop.offline import OFFLINE_ENV

    parent = os.environ if parent is None else parent
    env = {
        k: v
        for k, v in parent.items()
        if not k.startswith(_SCRUB_PREFIXES) and k not in _SCRUB_NAMES
    }
    env.update(OFFLINE_ENV)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def s3_identity_config(access_key: str, secret_key: str) -> dict[str, object]:
    """SeaweedFS ``-s3.config`` content: one admin identity."""
    return {
        "identities": [
            {
                "name": "detloop",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }


# --------------------------------------------------------------------------------------------
# Service definitions
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServiceSpec:
    """How to start one service."""

    name: str
    argv: tuple[str, ...]
    env: dict[str, str] = field(repr=False)
    cwd: Path


def _bin(name: str) -> str:
    """A console script of this environment (next to the running interpreter)."""
    cand = Path(sys.executable).parent / name
    if cand.exists():
        return str(cand)
    import shutil

    found = shutil.which(name)
    if not found:
        raise StackError(f"`{name}` not found next to {sys.executable} nor on PATH; is detloop installed?")
    return found


def build_spec(settings: Settings, service: str, sec: StackSecrets) -> ServiceSpec:
    """The argv, environment and working dir of ``service`` (pure apart from locating binaries)."""
    paths = stack_paths(settings)
    h, p = settings.stack.host, settings.stack.ports
    base = _base_env(settings)
    s3_url = service_url(settings, "s3")
    if service == "s3":
        argv = (
            _bin("weed"), "server",
            f"-ip={h}", f"-ip.bind={h}", f"-dir={paths.weed}",
            f"-volume.max={WEED_MAX_VOLUMES}", f"-master.volumeSizeLimitMB={WEED_VOLUME_SIZE_MB}",
            f"-master.port={p.weed_master}", f"-volume.port={p.weed_volume}",
            "-filer", f"-filer.port={p.weed_filer}",
            "-s3", f"-s3.port={p.s3}", f"-s3.config={paths.weed / 's3.json'}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.telemetry=false", "-master.electionTimeout=1s", "-volume.preStopSeconds=0",
        )  # fmt: skip
        env = dict(base)
        env["WEED_MASTER_VOLUME_GROWTH_COPY_1"] = "1"  # one volume per new bucket (collection), not 7
        # co-located with the work it serves: at most half the cores for Go's scheduler (measured while
        # scoring on 2 cores: 0.9-1.0 instead of 1.2-1.4 ms of server CPU per GET, same throughput)
        env.setdefault("GOMAXPROCS", str(max(1, (os.cpu_count() or 2) // 2)))
        return ServiceSpec(service, argv, env, paths.weed)
    if service == "mlflow":
        env = dict(base)
        env.update(
            {
                "MLFLOW_S3_ENDPOINT_URL": s3_url,
                "AWS_ACCESS_KEY_ID": sec.s3_access_key_id,
                "AWS_SECRET_ACCESS_KEY": sec.s3_secret_access_key,
                "AWS_DEFAULT_REGION": settings.s3.region,
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                "MLFLOW_DISABLE_TELEMETRY": "true",
            }
        )
        argv = (
            _bin("mlflow"), "server",
            "--backend-store-uri", f"sqlite:///{paths.mlflow / 'mlflow.db'}",
            "--artifacts-destination", f"s3://{settings.s3.artifacts_bucket}/",
            "--host", h, "--port", str(p.mlflow), "--workers", "1",
        )  # fmt: skip
        return ServiceSpec(service, argv, env, paths.mlflow)
    if service == "label-studio":
        env = dict(base)
        env.update(
            {
                "LABEL_STUDIO_USERNAME": settings.label_studio.username,
                "LABEL_STUDIO_PASSWORD": sec.label_studio_password,
                "LABEL_STUDIO_USER_TOKEN": sec.label_studio_token,
                "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
                "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
                "S3_ENDPOINT": s3_url,
            }
        )
        venv = label_studio_venv(settings)
        argv = (
            str(venv / "bin" / "label-studio"), "start",
            "--no-browser", "--internal-host", h, "--port", str(p.label_studio),
            "--data-dir", str(paths.label_studio),
        )  # fmt: skip
        return ServiceSpec(service, argv, env, paths.label_studio)
    if service == "prefect":
        env = dict(base)
        env.update(
            {
                "PREFECT_HOME": str(paths.prefect),
                "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{paths.prefect / 'prefect.db'}",
                "PREFECT_API_URL": service_url(settings, "prefect"),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_SERVER_UI_ENABLED": "true",
                "DO_NOT_TRACK": "1",
            }
        )
        argv = (_bin("prefect"), "server", "start", "--host", h, "--port", str(p.prefect))
        return ServiceSpec(service, argv, env, paths.prefect)
    if service == "runner":
        env = dict(base)
        env.update(client_env(settings))
        argv = (sys.executable, "-m", RUNNER_MODULE, "--config", str(paths.resolved_config))
        return ServiceSpec(service, argv, env, REPO_ROOT)
    raise StackError(f"unknown service {service!r}; known: {', '.join(SERVICES)}")


# --------------------------------------------------------------------------------------------
# Health
# --------------------------------------------------------------------------------------------
def http_ok(url: str, headers: Mapping[str, str] | None = None, timeout_s: float = 3.0) -> bool:
    """True when ``GET url`` answers 2xx."""
    req = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return 200 <= r.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def health_url(settings: Settings, service: str) -> str | None:
    u = service_url(settings, service)
    return {
        "s3": f"{u}/healthz",
        "mlflow": f"{u}/health",
        "label-studio": f"{u}/health",
        "prefect": f"{u}/health",
    }.get(service)


def healthy(settings: Settings, service: str, record: PidRecord | None = None) -> bool:
    """Health of one service: its HTTP check, or (runner) its process being alive."""
    url = health_url(settings, service)
    if url is None:
        return record is not None and procs.live_process(record)
    return http_ok(url)


def label_studio_token_ok(settings: Settings, token: str) -> bool:
    """True when Label Studio accepts ``token`` (legacy ``Authorization: Token ...``)."""
    url = service_url(settings, "label-studio") + "/api/current-user/whoami"
    return http_ok(url, headers={"Authorization": f"Token {token}"}, timeout_s=10.0)


# --------------------------------------------------------------------------------------------
# Label Studio venv
# --------------------------------------------------------------------------------------------
def label_studio_venv_ok(venv: Path, version_spec: str) -> bool:
    """True when ``venv`` has a ``label-studio`` script and a Label Studio matching ``==version_spec``."""
    if not (venv / "bin" / "label-studio").exists() or not (venv / "bin" / "python").exists():
        return False
    try:
        out = subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import label_studio; print(label_studio.__version__)"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    if out.returncode != 0:
        return False
    from packaging.specifiers import InvalidSpecifier, SpecifierSet
    from packaging.version import InvalidVersion, Version

    try:
        return Version(out.stdout.strip()) in SpecifierSet(f"=={version_spec}")
    except (InvalidSpecifier, InvalidVersion):
        return False


def ensure_label_studio_venv(settings: Settings, log: Log = _noop) -> Path:
    """Reuse Label Studio's venv when present and working, otherwise create it and pip-install Label Studio.

    It needs its own venv: installed beside Prefect it downgrades packages Prefect needs.

    Raises:
        StackError: when the install fails (naming the install log).
    """
    venv = label_studio_venv(settings)
    spec = settings.stack.label_studio_version
    if label_studio_venv_ok(venv, spec):
        return venv
    paths = stack_paths(settings)
    install_log = paths.log("label-studio-install")
    with procs.file_lock(venv.parent / f".{venv.name}.lock"):
        if label_studio_venv_ok(venv, spec):
            return venv
        log(f"installing Label Studio {spec} into {venv} (first time only, ~1-2 min; log: {install_log})")
        install_log.parent.mkdir(parents=True, exist_ok=True)
        steps = []
        if not (venv / "bin" / "python").exists():
            steps.append([sys.executable, "-m", "venv", str(venv)])
        steps.append([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", f"label-studio=={spec}"])
        with open(install_log, "ab") as f:
            for cmd in steps:
                f.write(f"\n==== {' '.join(cmd)}\n".encode())
                f.flush()
                try:
                    rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=LS_INSTALL_TIMEOUT_S,
                                        check=False).returncode
                except subprocess.TimeoutExpired as err:
                    raise StackError(f"Label Studio install timed out after {LS_INSTALL_TIMEOUT_S} s; log: {install_log}") from err
                if rc != 0:
                    raise StackError(f"Label Studio install failed (exit {rc}: {cmd[2]} ...); log: {install_log}")
        if not label_studio_venv_ok(venv, spec):
            raise StackError(f"Label Studio {spec} not importable from {venv} after install; log: {install_log}")
    return venv


# --------------------------------------------------------------------------------------------
# Up
# --------------------------------------------------------------------------------------------
@dataclass
class UpResult:
    """What ``ensure_up`` did: services started / found running / skipped, runner errors, wall time (s).

    A runner that exits at start does not make ``ensure_up`` raise (the servers are usable without it):
    it is reported in ``errors`` and ``detloop stack up`` exits 1.
    """

    started: list[str] = field(default_factory=list)
    already_running: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)


def _current(settings: Settings, service: str, log: Log) -> PidRecord | None:
    """The live record of ``service``; a stale pid file is removed."""
    path = stack_paths(settings).pid(service)
    rec = procs.read_pid_file(path)
    if rec is None:
        if path.exists():
            log(f"{service}: removing unreadable pid file {path}")
            path.unlink(missing_ok=True)
        return None
    if procs.live_process(rec):
        return rec
    log(f"{service}: removing stale pid file (pid {rec.pid} is gone or is another program)")
    path.unlink(missing_ok=True)
    return None


def _start(settings: Settings, service: str, sec: StackSecrets, log: Log) -> PidRecord:
    paths = stack_paths(settings)
    procs.check_ports_free(settings.stack.host, service_ports(settings, service), release_s=PORT_RELEASE_S)
    spec = build_spec(settings, service, sec)
    rec = procs.spawn_detached(service, spec.argv, spec.env, paths.log(service), paths.pid(service), spec.cwd)
    log(f"{service}: started pid {rec.pid} ({service_url(settings, service)}; log {paths.log(service)})")
    return rec


def _wait_healthy(settings: Settings, service: str, rec: PidRecord, deadline: float) -> None:
    paths = stack_paths(settings)
    url = health_url(settings, service) or service_url(settings, service)
    while True:
        if healthy(settings, service, rec):
            return
        if not procs.live_process(rec):
            procs.stop_group(rec)  # reap the zombie and any orphans of its group
            tail = " | ".join(line.strip() for line in procs.tail_lines(paths.log(service), 3))
            raise StackError(
                f"{TITLES[service]} exited during start (pid {rec.pid}); log {paths.log(service)}; last lines: {tail}"
            )
        if time.monotonic() >= deadline:
            raise StackError(
                f"{TITLES[service]} did not become healthy at {url} within "
                f"{settings.stack.start_timeout_seconds} s; log: {paths.log(service)}"
            )
        time.sleep(0.5)


def _wait_volumes_registered(settings: Settings, deadline: float) -> None:
    """Wait until SeaweedFS's master knows every volume on disk.

    ``/healthz`` answers before the volume server's first heartbeat reaches the master; until then a
    GET of an existing object fails with ``InternalError`` (measured: right after ``up --s3-only``).
    """
    import urllib.request

    paths = stack_paths(settings)
    on_disk = len(list(paths.weed.glob("*.dat")))
    url = f"http://{settings.stack.host}:{settings.stack.ports.weed_master}/dir/status"
    known = -1
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                topo = json.load(resp).get("Topology", {})
            known = sum(int(n.get("Volumes", 0)) for dc in topo.get("DataCenters") or []
                        for rack in dc.get("Racks") or [] for n in rack.get("DataNodes") or [])
            if known >= on_disk:
                return
        except (OSError, ValueError):
            pass
        if time.monotonic() >= deadline:
            raise StackError(
                f"{TITLES['s3']}: the master at {url} knows {known} of the {on_disk} volumes on disk after "
                f"{settings.stack.start_timeout_seconds} s; log: {paths.log('s3')}"
            )
        time.sleep(0.2)


def _write_s3_config(settings: Settings, sec: StackSecrets) -> None:
    path = stack_paths(settings).weed / "s3.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(s3_identity_config(sec.s3_access_key_id, sec.s3_secret_access_key), f, indent=1)


def _write_resolved_config(settings: Settings) -> None:
    """The settings the runner is started with: the resolved tree, secrets and ``source`` left out."""
    import yaml

    data = settings.model_dump(mode="json")
    for section, name in SECRET_FIELDS:
        data.get(section, {}).pop(name, None)
    data.pop("source", None)
    stack_paths(settings).resolved_config.write_text(
        "# Written by `detloop stack up`: the resolved config the runner uses (no secrets).\n"
        + yaml.safe_dump(data, sort_keys=False)
    )


def create_buckets(settings: Settings, sec: StackSecrets, timeout_s: float = 60.0) -> list[str]:
    """Create every bucket of ``settings.s3`` on the stack's S3 (idempotent); returns their names."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.client(
        "s3",
        endpoint_url=service_url(settings, "s3"),
        region_name=settings.s3.region,
        aws_access_key_id=sec.s3_access_key_id,
        aws_secret_access_key=sec.s3_secret_access_key,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3, "mode": "standard"}),
    )
    names = [settings.s3.production_bucket, settings.s3.data_bucket, settings.s3.artifacts_bucket,
             settings.s3.oracle_bucket]  # fmt: skip
    deadline = time.monotonic() + timeout_s
    for name in dict.fromkeys(names):
        while True:
            try:
                client.head_bucket(Bucket=name)
                break
            except (ClientError, BotoCoreError):
                pass
            try:
                client.create_bucket(Bucket=name)
                break
            except ClientError as err:
                code = err.response.get("Error", {}).get("Code", "")
                if code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    break
                last = f"{code}: {err}"
            except BotoCoreError as err:
                last = str(err)
            if time.monotonic() > deadline:
                raise StackError(f"S3 at {service_url(settings, 's3')}: cannot create bucket {name!r} ({last})")
            time.sleep(1.0)
    return list(dict.fromkeys(names))


def _fill_settings_secrets(settings: Settings, sec: StackSecrets) -> None:
    from pydantic import SecretStr

    if settings.s3.access_key_id is None:
        settings.s3.access_key_id = SecretStr(sec.s3_access_key_id)
    if settings.s3.secret_access_key is None:
        settings.s3.secret_access_key = SecretStr(sec.s3_secret_access_key)
    if settings.label_studio.api_token is None:
        settings.label_studio.api_token = SecretStr(sec.label_studio_token)


def ensure_up(settings: Settings, log: Log = _noop, s3_only: bool = False) -> UpResult:
    """Start whatever is not running yet and wait until every service is healthy (idempotent).

    ``s3_only``: start S3 and create the buckets, nothing else (what the scoring and selection
    benchmarks need: a quiet machine to time on). Services already running are left running.

    A running, healthy service is left alone; a stale pid file is removed; a port held by another
    program is refused with its pid. Fills missing secrets of ``settings`` in place from the
    stack's ``secrets.env``. Safe to call from several processes at once (a file lock serialises them).

    Raises:
        StackError: port taken, service exited, health timeout, Label Studio install failure,
            Label Studio refusing the token: one line naming the service, URL and log file.
    """
    t0 = time.monotonic()
    paths = stack_paths(settings)
    paths.root.mkdir(parents=True, exist_ok=True)
    res = UpResult()
    with procs.file_lock(paths.lock):
        for line in [*url_mismatches(settings), host_warning(settings.stack.host)]:
            if line:
                log(f"warning: {line}")
        sec = ensure_secrets(settings.secrets_file)
        _fill_settings_secrets(settings, sec)
        _write_resolved_config(settings)
        deadline = time.monotonic() + settings.stack.start_timeout_seconds

        def bring(service: str) -> PidRecord:
            rec = _current(settings, service, log)
            if rec is None:
                if service == "s3":
                    _write_s3_config(settings, sec)
                rec = _start(settings, service, sec, log)
                res.started.append(service)
            else:
                res.already_running.append(service)
            return rec

        def mark(phase: str, since: float) -> float:
            now = time.monotonic()
            res.phases[phase] = round(now - since, 2)
            return now

        t = time.monotonic()
        s3 = bring("s3")
        _wait_healthy(settings, "s3", s3, deadline)
        if "s3" in res.started:
            _wait_volumes_registered(settings, deadline)
        create_buckets(settings, sec)
        t = mark("s3_and_buckets", t)
        if s3_only:
            res.seconds = time.monotonic() - t0
            return res
        waiting = {"mlflow": bring("mlflow"), "prefect": bring("prefect")}
        ensure_label_studio_venv(settings, log)
        t = mark("label_studio_venv", t)
        # the health timeout is for starting services: a first-time install does not eat into it
        deadline = max(deadline, time.monotonic() + settings.stack.start_timeout_seconds)
        waiting["label-studio"] = bring("label-studio")
        for name, rec in waiting.items():
            _wait_healthy(settings, name, rec, deadline)
        if not procs.wait_until(lambda: label_studio_token_ok(settings, sec.label_studio_token), 30.0, 1.0):
            raise StackError(
                f"Label Studio at {service_url(settings, 'label-studio')} refuses the token in "
                f"{settings.secrets_file} (or DETLOOP_LABEL_STUDIO__API_TOKEN); its admin was created with "
                f"another token: set that one, or stop the stack and delete {paths.label_studio}"
            )
        t = mark("mlflow_prefect_label_studio", t)
        if not settings.stack.runner:
            res.skipped["runner"] = "disabled (stack.runner: false)"
        elif not runner_installed():
            res.skipped["runner"] = f"not installed ({RUNNER_MODULE} not found)"
        else:
            rec = bring("runner")
            time.sleep(3.0 if "runner" in res.started else 0.0)
            try:
                _wait_healthy(settings, "runner", rec, deadline)
            except StackError as err:  # the rest of the stack is usable: report, do not raise
                res.errors["runner"] = str(err)
            mark("runner", t)
    res.seconds = time.monotonic() - t0
    return res


# --------------------------------------------------------------------------------------------
# Down / status
# --------------------------------------------------------------------------------------------
def down(settings: Settings, log: Log = _noop, services: tuple[str, ...] = SERVICES) -> dict[str, str]:
    """Stop what ``up`` started, in reverse order, by pid (verified), and check each is gone.

    Returns:
        service -> ``"terminated"`` / ``"killed"`` / ``"not running"``.
    """
    paths = stack_paths(settings)
    out: dict[str, str] = {}
    if not paths.root.exists():
        return {s: "not running" for s in services}
    with procs.file_lock(paths.lock):
        for service in reversed(SERVICES):
            if service not in services:
                continue
            pid_path = paths.pid(service)
            rec = procs.read_pid_file(pid_path)
            if rec is None:
                out[service] = "not running"
                pid_path.unlink(missing_ok=True)
                continue
            log_path = paths.log(service)
            log_start = log_path.stat().st_size if log_path.is_file() else 0
            term_s = TERM_TIMEOUT_S.get(service, 10.0)
            outcome = procs.stop_group(rec, term_timeout_s=term_s)
            pid_path.unlink(missing_ok=True)
            out[service] = outcome
            msg = f"{service}: {outcome}" + ("" if outcome == "not running" else f" (pid {rec.pid})")
            if outcome == "killed":
                steps = stop_steps(log_path, log_start)
                msg += f": still stopping {term_s:.0f} s after SIGTERM" + (
                    f"; its last stop step: {steps[-1]}" if steps else "") + f" (log: {log_path})"
            log(msg)
    return out


def stop_steps(log_path: Path, start: int = 0) -> list[str]:
    """Lines of a service's log, from byte ``start`` on, that name a step of its stop (at most the last 1 MB)."""
    return [line.strip()[:200] for line in procs.read_tail(log_path, start).splitlines() if _STOP_STEP.search(line)]


@dataclass(frozen=True)
class ServiceStatus:
    service: str
    title: str
    url: str
    pid: int | None
    state: str  # healthy | unhealthy | stopped | not installed | disabled
    log: Path


def status(settings: Settings) -> list[ServiceStatus]:
    """Status of every service (no side effects)."""
    paths = stack_paths(settings)
    out = []
    for service in SERVICES:
        rec = procs.read_pid_file(paths.pid(service))
        live = rec is not None and procs.live_process(rec)
        pid = rec.pid if (rec and live) else None
        if service == "runner" and not settings.stack.runner:
            state = "disabled"
        elif service == "runner" and not runner_installed():
            state = "not installed"
        elif not live:
            state = "running (not started by this stack)" if healthy(settings, service) else "stopped"
        else:
            state = "healthy" if healthy(settings, service, rec) else "unhealthy"
        out.append(ServiceStatus(service, TITLES[service], service_url(settings, service), pid, state, paths.log(service)))
    return out


def service_rss_mb(settings: Settings) -> dict[str, float]:
    """Resident memory (MB) of each running service, summed over its process group."""
    import psutil

    paths = stack_paths(settings)
    out: dict[str, float] = {}
    for service in SERVICES:
        rec = procs.read_pid_file(paths.pid(service))
        if rec is None or not procs.live_process(rec):
            continue
        total = 0
        for pid in procs.group_members(rec.pid):
            try:
                total += psutil.Process(pid).memory_info().rss
            except psutil.Error:
                continue
        out[service] = round(total / 2**20, 1)
    return out
