"""Pure and process-level parts of the local stack, no services: port messages, pid files, group stop, secrets."""

from __future__ import annotations

import os
import re
import socket
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from detloop.settings import REPO_ROOT, load_settings
from infra import procs
from infra.procs import PidRecord, PortOwner, StackError
from infra.secrets import LS_PASSWORD, LS_TOKEN, S3_KEY, S3_SECRET, ensure_secrets, resolve_secrets
from infra.stack import (
    _base_env,
    build_spec,
    client_env,
    s3_identity_config,
    service_ports,
    stop_steps,
    url_mismatches,
)


# ---- ports ---------------------------------------------------------------------------------------
def test_port_conflict_message_names_port_service_pid_and_program() -> None:
    msg = procs.port_conflict_message(8333, "S3", PortOwner(1234, "python"))
    assert msg == "port 8333 (S3) is taken by pid 1234 (python)"
    assert "owner not visible" in procs.port_conflict_message(8333, "S3", None)


def test_check_ports_free_reports_the_owner_of_a_listening_socket() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        assert not procs.port_bindable("127.0.0.1", port)
        with pytest.raises(StackError, match=rf"^port {port} \(Prefect\) is taken by pid {os.getpid()} \("):
            procs.check_ports_free("127.0.0.1", {"MLflow": _free_port(), "Prefect": port})
    assert procs.port_bindable("127.0.0.1", port)


def test_check_ports_free_waits_for_a_port_whose_owner_is_gone_and_not_for_a_live_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A dying service's port (bound, no visible owner) is waited for up to ``release_s``; a live owner fails at once."""
    import time

    calls = {"n": 0}

    def bindable(host: str, port: int) -> bool:
        calls["n"] += 1
        return calls["n"] > 3  # released on the fourth look

    monkeypatch.setattr(procs, "port_bindable", bindable)
    monkeypatch.setattr(procs, "port_owner", lambda port: None)
    procs.check_ports_free("127.0.0.1", {"S3": 8433}, release_s=5.0)
    assert calls["n"] == 4

    calls["n"] = -10**6  # never released
    t0 = time.monotonic()
    with pytest.raises(StackError, match=r"^port 8433 \(S3\) is already in use \(owner not visible"):
        procs.check_ports_free("127.0.0.1", {"S3": 8433}, release_s=0.5)
    assert 0.4 <= time.monotonic() - t0 < 3.0

    monkeypatch.setattr(procs, "port_owner", lambda port: PortOwner(4321, "weed"))
    t0 = time.monotonic()
    with pytest.raises(StackError, match=r"taken by pid 4321 \(weed\)"):
        procs.check_ports_free("127.0.0.1", {"S3": 8433}, release_s=30.0)
    assert time.monotonic() - t0 < 1.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_seaweedfs_ports_include_grpc_offsets() -> None:
    s = load_settings(REPO_ROOT / "configs" / "test.yaml", env={})
    ports = service_ports(s, "s3")
    p = s.stack.ports
    assert ports["S3"] == p.s3 and ports["S3 gRPC"] == p.s3 + 10000
    assert ports["SeaweedFS master gRPC"] == p.weed_master + 10000
    assert len(set(ports.values())) == 8


# ---- pid files -----------------------------------------------------------------------------------
def test_pid_file_round_trip_and_corrupt_file(tmp_path: Path) -> None:
    rec = PidRecord("mlflow", 4242, 1700000000.25, ("/x/bin/mlflow", "server", "--port", "5100"))
    path = tmp_path / "pids" / "mlflow.pid"
    procs.write_pid_file(path, rec)
    assert procs.read_pid_file(path) == rec
    path.write_text("{not json")
    assert procs.read_pid_file(path) is None
    assert procs.read_pid_file(tmp_path / "missing.pid") is None


def test_cmdline_matching_accepts_a_shebang_interpreter_and_rejects_other_programs() -> None:
    argv = ("/v/bin/label-studio", "start", "--port", "8180")
    assert procs.cmdline_matches(argv, ["/v/bin/python3.11", "/v/bin/label-studio", "start", "--port", "8180"])
    assert not procs.cmdline_matches(argv, ["/v/bin/python3.11", "/v/bin/label-studio", "start", "--port", "8080"])
    assert not procs.cmdline_matches(argv, ["/usr/bin/vim", "start", "--port", "8180"])
    assert not procs.cmdline_matches(argv, [])


def test_recycled_pid_is_not_ours() -> None:
    me = psutil.Process()
    rec = PidRecord("x", me.pid, me.create_time(), tuple(me.cmdline()))
    assert procs.live_process(rec)
    assert not procs.live_process(PidRecord("x", me.pid, me.create_time() - 5.0, rec.argv))  # other start time
    assert not procs.live_process(PidRecord("x", me.pid, me.create_time(), ("/bin/other", "--flag")))


def test_a_stepped_wall_clock_does_not_make_our_processes_strangers() -> None:
    """create_time is boot time (from the wall clock) + ticks: a clock step moves it; the ticks since boot do not."""
    me = psutil.Process()
    ticks = procs.start_ticks(me.pid)
    assert ticks is not None and ticks > 0
    stepped = PidRecord("x", me.pid, me.create_time() - 658.0, tuple(me.cmdline()), start_ticks=ticks)
    assert procs.live_process(stepped)  # the clock moved by 658 s since it was written: still ours
    assert not procs.live_process(PidRecord("x", me.pid, me.create_time(), tuple(me.cmdline()), start_ticks=ticks + 1))
    path = Path(tempfile.mkdtemp()) / "x.pid"
    procs.write_pid_file(path, stepped)
    assert procs.read_pid_file(path) == stepped


SLEEPER = "import time; time.sleep(120)"
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(120)"


def _spawn(tmp_path: Path, code: str) -> PidRecord:
    return procs.spawn_detached(
        "t", [sys.executable, "-c", code], os.environ, tmp_path / "t.log", tmp_path / "t.pid", tmp_path
    )


def test_spawned_process_has_own_session_and_stops(tmp_path: Path) -> None:
    rec = _spawn(tmp_path, SLEEPER)
    try:
        assert procs.read_pid_file(tmp_path / "t.pid") == rec
        assert os.getpgid(rec.pid) == rec.pid != os.getpgid(0)
        assert procs.live_process(rec)
    finally:
        outcome = procs.stop_group(rec, term_timeout_s=5)
    assert outcome == "terminated"
    assert not procs.live_process(rec) and procs.group_members(rec.pid) == []
    assert procs.stop_group(rec) == "not running"


def test_process_ignoring_sigterm_is_killed(tmp_path: Path) -> None:
    rec = _spawn(tmp_path, STUBBORN)
    assert procs.wait_until(lambda: "ready" in (tmp_path / "t.log").read_text(), 10, 0.1)
    assert procs.stop_group(rec, term_timeout_s=1.0) == "killed"
    assert procs.group_members(rec.pid) == []


def test_stop_group_never_signals_a_pid_whose_start_time_differs(tmp_path: Path) -> None:
    rec = _spawn(tmp_path, SLEEPER)
    try:
        impostor = PidRecord("t", rec.pid, rec.create_time + 100.0, rec.argv)
        assert procs.stop_group(impostor, term_timeout_s=0.5) == "not running"
        assert procs.live_process(rec)
    finally:
        procs.stop_group(rec)


def test_tail_lines(tmp_path: Path) -> None:
    p = tmp_path / "x.log"
    p.write_text("".join(f"line {i}\n" for i in range(100)))
    assert procs.tail_lines(p, 3) == ["line 97", "line 98", "line 99"]
    assert procs.tail_lines(tmp_path / "none.log", 3) == []


def test_stop_steps_are_the_stop_lines_written_after_the_offset(tmp_path: Path) -> None:
    """What ``down`` quotes when SeaweedFS had to be killed: the steps of THIS stop, not of an earlier one."""
    p = tmp_path / "s3.log"
    earlier = "I1207 00:35:07 filer.go:496 Gracefully stopping gRPC server\nI1207 00:35:08 volume.go:481 volume server has been killed\n"
    p.write_text(earlier + "==== start s3 ====\nI1207 00:36:00 master.go:1 leader is 127.0.0.1\n")
    start = p.stat().st_size
    with open(p, "a") as f:
        f.write("I1207 00:37:00 filer.go:496 Gracefully stopping gRPC server\n"
                "W1207 00:37:01 s3api.go:813 GetObjectHandler: failed to get entry\n"
                "I1207 00:37:15 volume.go:554 graceful stop cluster http server ... \n")
    steps = stop_steps(p, start)
    assert [s.split(" ", 2)[2] for s in steps] == ["filer.go:496 Gracefully stopping gRPC server",
                                                  "volume.go:554 graceful stop cluster http server ..."]
    assert len(stop_steps(p)) == 4  # from the start: the earlier stop's two steps as well
    assert stop_steps(tmp_path / "missing.log") == []


# ---- secrets -------------------------------------------------------------------------------------
def test_secrets_generated_once_mode_600_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "secrets.env"
    s1 = ensure_secrets(path, env={})
    assert path.stat().st_mode & 0o777 == 0o600
    assert re.fullmatch(r"[0-9a-f]{40}", s1.label_studio_token)
    assert len(s1.s3_secret_access_key) >= 30 and s1.s3_access_key_id != s1.s3_secret_access_key
    text = path.read_text()
    for key in (S3_KEY, S3_SECRET, LS_TOKEN, LS_PASSWORD):
        assert f"{key}=" in text
    assert s1.label_studio_token not in repr(s1)
    assert ensure_secrets(path, env={}) == s1  # second call: same values
    other = ensure_secrets(tmp_path / "other" / "secrets.env", env={})
    assert other.label_studio_token != s1.label_studio_token  # random per data dir
    # settings read the generated file
    s = load_settings(REPO_ROOT / "configs" / "test.yaml", env={}, overrides={"data_dir": str(tmp_path)})
    assert s.label_studio_token() == s1.label_studio_token
    assert s.s3_credentials() == (s1.s3_access_key_id, s1.s3_secret_access_key)


def test_secrets_from_env_win_and_are_not_written(tmp_path: Path) -> None:
    path = tmp_path / "secrets.env"
    env = {"AWS_ACCESS_KEY_ID": "AKENV", "DETLOOP_S3__SECRET_ACCESS_KEY": "SKENV"}
    s, values, changed = resolve_secrets(path, env)
    assert (s.s3_access_key_id, s.s3_secret_access_key) == ("AKENV", "SKENV")
    assert changed and S3_KEY not in values and S3_SECRET not in values and LS_TOKEN in values
    ensure_secrets(path, env)
    assert "AKENV" not in path.read_text() and "SKENV" not in path.read_text()


def test_loose_permissions_are_tightened(tmp_path: Path) -> None:
    path = tmp_path / "secrets.env"
    ensure_secrets(path, env={})
    path.chmod(0o644)
    ensure_secrets(path, env={})
    assert path.stat().st_mode & 0o777 == 0o600


# ---- service specs -------------------------------------------------------------------------------
def test_specs_bind_loopback_scrub_env_and_keep_secrets_out_of_client_env(tmp_path: Path) -> None:
    s = load_settings(REPO_ROOT / "configs" / "test.yaml", env={}, overrides={"data_dir": str(tmp_path)})
    sec = ensure_secrets(s.secrets_file, env={})
    weed = build_spec(s, "s3", sec)
    assert "-ip.bind=127.0.0.1" in weed.argv and "-master.telemetry=false" in weed.argv
    assert "-s3.port.iceberg=0" in weed.argv and "-s3.port.lance=0" in weed.argv
    assert f"-s3.port={s.stack.ports.s3}" in weed.argv
    assert weed.env["WEED_MASTER_VOLUME_GROWTH_COPY_1"] == "1" and "-volume.max=1000" in weed.argv
    import os

    if "GOMAXPROCS" not in os.environ:  # half the cores for the co-located S3 server, unless the user set it
        assert weed.env["GOMAXPROCS"] == str(max(1, (os.cpu_count() or 2) // 2))
    else:
        assert weed.env["GOMAXPROCS"] == os.environ["GOMAXPROCS"]
    ml = build_spec(s, "mlflow", sec)
    assert ml.env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert ml.env["AWS_SECRET_ACCESS_KEY"] == sec.s3_secret_access_key
    assert f"s3://{s.s3.artifacts_bucket}/" in ml.argv
    assert not any(sec.s3_secret_access_key in a for a in ml.argv)  # secrets never on a command line
    ls = build_spec(s, "label-studio", sec)
    assert ls.env["LABEL_STUDIO_USER_TOKEN"] == sec.label_studio_token
    assert ls.env["S3_ENDPOINT"] == f"http://127.0.0.1:{s.stack.ports.s3}"
    assert ls.argv[ls.argv.index("--internal-host") + 1] == "127.0.0.1"
    pf = build_spec(s, "prefect", sec)
    assert pf.env["PREFECT_HOME"] == str(tmp_path / "prefect")
    assert pf.env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    env = client_env(s)
    assert env["PREFECT_API_URL"] == s.prefect.api_url and env["MLFLOW_TRACKING_URI"] == s.mlflow.tracking_uri
    secrets = {sec.s3_access_key_id, sec.s3_secret_access_key, sec.label_studio_token, sec.label_studio_password}
    assert not secrets & set(env.values())


def test_base_env_scrubs_stray_variables() -> None:
    s = load_settings(REPO_ROOT / "configs" / "test.yaml", env={})
    parent = {"PATH": "/bin", "HOST": "0.0.0.0", "PORT": "9999", "USERNAME": "bob", "LABEL_STUDIO_PORT": "1",
              "AWS_SECRET_ACCESS_KEY": "leak", "PREFECT_API_URL": "http://elsewhere", "DETLOOP_S3__X": "y"}
    env = _base_env(s, parent)
    assert env["PATH"] == "/bin"
    for k in ("HOST", "PORT", "USERNAME", "LABEL_STUDIO_PORT", "AWS_SECRET_ACCESS_KEY", "PREFECT_API_URL", "DETLOOP_S3__X"):
        assert k not in env
    assert env["DO_NOT_TRACK"] == "1"


def test_s3_identity_config_shape() -> None:
    cfg = s3_identity_config("AK", "SK")
    ident = cfg["identities"][0]  # type: ignore[index]
    assert ident["credentials"] == [{"accessKey": "AK", "secretKey": "SK"}]
    assert "Admin" in ident["actions"]


def test_url_mismatch_between_client_urls_and_stack_ports() -> None:
    s = load_settings(REPO_ROOT / "configs" / "test.yaml", env={})
    assert url_mismatches(s) == []
    assert url_mismatches(load_settings(REPO_ROOT / "configs" / "local.yaml", env={})) == []
    bad = load_settings(REPO_ROOT / "configs" / "test.yaml", env={}, overrides={"mlflow": {"tracking_uri": "http://127.0.0.1:5000"}})
    (line,) = url_mismatches(bad)
    assert line.startswith("mlflow.tracking_uri is 'http://127.0.0.1:5000' but the stack serves 'http://127.0.0.1:5100'")


# ---- security --------------------------------------------------------------------------------------------
def test_a_non_loopback_stack_host_is_warned_about(tmp_path: Path) -> None:
    from infra.stack import ensure_up, host_warning

    assert host_warning("127.0.0.1") is None and host_warning("::1") is None and host_warning("localhost") is None
    assert host_warning("127.0.0.2") is None  # all of 127/8 is loopback
    for host in ("0.0.0.0", "192.168.1.20", "myhost.example"):
        msg = host_warning(host)
        assert msg is not None and host in msg and "not a loopback address" in msg and "\n" not in msg
    # `stack up` prints it (first thing, before anything starts: a port refusal stops it right after)
    s = load_settings(REPO_ROOT / "configs" / "test.yaml", env={},
                      overrides={"data_dir": str(tmp_path), "stack": {"host": "192.0.2.1"}})
    lines: list[str] = []
    with pytest.raises(Exception):  # noqa: B017 - 192.0.2.1 (TEST-NET) is not an address of this machine
        ensure_up(s, log=lines.append)
    assert any(line.startswith("warning: stack.host is '192.0.2.1', not a loopback address") for line in lines), lines


def test_nothing_ships_a_default_secret() -> None:
    """No tracked config, deploy file or code carries a password, token or key value: the local stack generates
    them per data dir (see test_secrets_generated_once_mode_600_and_stable), deployments must supply them."""
    import subprocess

    files = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.split()
    names = r"\b(?i:password|secret_access_key|secret_key|api_token|api_key|user_token|access_key_id)"
    in_code = re.compile(  # name = "literal" (an environment variable's NAME, all caps, is not a value)
        names + r"\w*\s*[:=]\s*[\"'](?![A-Z0-9_]+[\"'])(?!\$\{)([^\"'\s]{8,})[\"']")
    in_yaml = re.compile(names + r"\s*:\s*(?!null\b|\$\{|[\"']?(?:true|false)\b)([^\s#{}]{6,})")
    hits = []
    for f in files:
        if f.startswith(("tests/", "benchmarks/results/")) or not f.endswith(
                (".py", ".yaml", ".yml", ".toml", ".env", ".json", "Dockerfile", ".cfg", ".ini")):
            continue
        text = (REPO_ROOT / f).read_text(errors="replace")
        pats = [in_yaml] if f.endswith((".yaml", ".yml")) else [in_code]
        hits += [f"{f}: {m.group(0)[:60]}" for p in [*pats, re.compile(r"AKIA[0-9A-Z]{16}")] for m in p.finditer(text)]
    assert hits == []
    # and the check itself sees a planted one
    assert in_code.search('api_token = "s3cr3t-v4lue"') and in_yaml.search("  password: hunter2hunter")
    compose = (REPO_ROOT / "infra" / "deploy" / "docker-compose.yml").read_text()
    for var in ("POSTGRES_PASSWORD", "S3_ACCESS_KEY", "S3_SECRET_KEY", "LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_API_KEY"):
        assert "${" + var + ":?" in compose, var  # compose refuses to start without it: no fallback value
