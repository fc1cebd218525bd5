"""No acknowledged write is lost: not across `detloop stack down` / `up` (SeaweedFS now stops cleanly), nor across a
SIGKILL of S3 while a writer is busy.

A write is *acknowledged* when its call returned without error: frames and manifests through ``S3Store``, model
files through MLflow's artifact proxy (which stores them in S3 before it answers). Every acknowledged one must read back byte for byte after the restart;
writes in flight at the kill may or may not exist (never half: a read gives the whole object or nothing).
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from detloop.settings import Settings


def _writer(store: Any, bucket: str, prefix: str, stop: threading.Event, acked: dict[str, str],
            failed: list[str]) -> None:
    """Put frames (30-70 KB) until ``stop``; ``acked`` maps each acknowledged key to its SHA-256."""
    rng = random.Random(7)
    i = 0
    while not stop.is_set():
        key = f"{prefix}camera=cam{i % 3}/date=2026-01-0{1 + i % 7}/{i:06d}-frame.jpg"
        body = rng.randbytes(rng.randrange(30_000, 70_000))
        try:
            store.put_bytes(bucket, key, body, "image/jpeg")
            acked[key] = hashlib.sha256(body).hexdigest()
        except Exception as err:  # the kill: this write was not acknowledged (recorded, not lost)
            failed.append(f"{key}: {type(err).__name__}")
            time.sleep(0.05)
        i += 1


def _read_back(store: Any, bucket: str, acked: dict[str, str]) -> list[str]:
    """Keys whose bytes are missing or differ."""
    from detloop.errors import NotFound

    bad = []
    for key, sha in acked.items():
        try:
            got = hashlib.sha256(store.get_bytes(bucket, key)).hexdigest()
        except NotFound:
            got = "missing"
        if got != sha:
            bad.append(f"{key}: {got}")
    return bad


def test_acknowledged_writes_survive_sigkill_and_a_clean_down_up(stack_settings: Settings, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from detloop.clients.s3 import S3Store
    from infra.faults import kill_service
    from infra.stack import down, ensure_up, stack_paths, stop_steps

    s = stack_settings
    store = S3Store(s)
    bucket, prefix = s.s3.production_bucket, f"durability-{uuid.uuid4().hex[:8]}/frames/"
    manifest_key = f"durability/{uuid.uuid4().hex[:8]}/manifest.json"
    ml = MlflowClient(tracking_uri=s.mlflow.tracking_uri)
    run = ml.create_run(ml.create_experiment(f"durability-{uuid.uuid4().hex[:8]}"))
    weights = tmp_path / "best.pt"
    weights.write_bytes(random.randbytes(1_500_000))
    ml.log_artifact(run.info.run_id, str(weights), "weights")
    store.put_json(s.s3.data_bucket, manifest_key, {"frames": 1, "v": 1})

    # -- 1. SIGKILL S3 while a writer is busy ------------------------------------------------------
    acked: dict[str, str] = {}
    failed: list[str] = []
    stop = threading.Event()
    t = threading.Thread(target=_writer, args=(store, bucket, prefix, stop, acked, failed), daemon=True)
    t.start()
    try:
        # a kill mid-stream, not before the first write lands (a loaded machine may need seconds for a new volume)
        deadline = time.monotonic() + 60.0
        while len(acked) < 20 and time.monotonic() < deadline and t.is_alive():
            time.sleep(0.1)
        time.sleep(1.0)
        n_before = len(acked)
        kill_service(s, "s3")
        time.sleep(1.0)
        stop.set()
        t.join(timeout=60)
    finally:
        stop.set()
        ensure_up(s)
    assert n_before > 10 and failed, (n_before, failed[:3])  # writes were in flight and the kill hit some
    assert _read_back(store, bucket, acked) == []
    assert store.get_json(s.s3.data_bucket, manifest_key) == {"frames": 1, "v": 1}
    got = Path(ml.download_artifacts(run.info.run_id, "weights/best.pt", str(tmp_path / "a")))
    assert got.read_bytes() == weights.read_bytes()

    # -- 2. a routine `down` / `up`: S3 stops by itself (no SIGKILL) and keeps everything ----------
    store.put_json(s.s3.data_bucket, manifest_key, {"frames": 2, "v": 2})  # acknowledged just before down
    ml.log_text(run.info.run_id, "after the kill", "notes/after.txt")
    log_path = stack_paths(s).log("s3")
    log_start = log_path.stat().st_size
    t0 = time.monotonic()
    outcome = down(s, services=("s3",))
    stop_s = time.monotonic() - t0
    try:
        # was "killed" every time with a 3 s wait for a 15-25 s stop; a failure names the step SeaweedFS was in
        assert outcome["s3"] == "terminated", (outcome, f"{stop_s:.0f} s", stop_steps(log_path, log_start))
    finally:
        ensure_up(s)
    assert _read_back(store, bucket, acked) == []
    assert store.get_json(s.s3.data_bucket, manifest_key) == {"frames": 2, "v": 2}
    assert Path(ml.download_artifacts(run.info.run_id, "notes/after.txt", str(tmp_path / "b"))).read_text() == \
        "after the kill"
    print(f"durability: {len(acked)} acknowledged frames, {len(failed)} refused during the kill; "
          f"clean down of s3 {stop_s:.1f} s")
