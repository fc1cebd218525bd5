"""Benchmark of the local stack: first ``up`` (optionally with the Label Studio venv install), restart, RSS.

Runs a throwaway stack (temp data dir, free ports, runner off) so the shared test stack and the demo stack
are untouched::

    .venv/bin/python -m benchmarks.stack_startup                 # installs a fresh Label Studio venv
    .venv/bin/python -m benchmarks.stack_startup --reuse-venv PATH   # reuse an installed one

Writes ``benchmarks/results/stack_startup.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from detloop.settings import REPO_ROOT, Settings, load_settings

OUT = REPO_ROOT / "benchmarks" / "results" / "stack_startup.json"


def _free_ports(n: int) -> list[int]:
    from infra.procs import port_bindable

    rng, out = random.Random(), []
    while len(out) < n:
        p = rng.randrange(20000, 29999)
        if p not in out and port_bindable("127.0.0.1", p) and port_bindable("127.0.0.1", p + 10000):
            out.append(p)
    return out


def _settings(data_dir: Path, venv: Path | None) -> Settings:
    names = ["s3", "weed_master", "weed_volume", "weed_filer", "mlflow", "label_studio", "prefect"]
    ports = dict(zip(names, _free_ports(len(names)), strict=True))
    h = "127.0.0.1"
    stack: dict[str, object] = {"ports": ports, "runner": False, "start_timeout_seconds": 900}
    if venv is not None:
        stack["label_studio_venv"] = str(venv)
    return load_settings(
        REPO_ROOT / "configs" / "test.yaml",
        env={},
        overrides={
            "data_dir": str(data_dir),
            "s3": {"endpoint_url": f"http://{h}:{ports['s3']}"},
            "mlflow": {"tracking_uri": f"http://{h}:{ports['mlflow']}"},
            "label_studio": {"url": f"http://{h}:{ports['label_studio']}"},
            "prefect": {"api_url": f"http://{h}:{ports['prefect']}/api"},
            "stack": stack,
        },
    )


def _du_mb(path: Path) -> float:
    out = subprocess.run(["du", "-sm", str(path)], capture_output=True, text=True, check=False).stdout
    return float(out.split()[0]) if out else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reuse-venv", type=Path, default=None, help="Existing Label Studio venv (skip the install).")
    ap.add_argument("--settle-seconds", type=float, default=10.0, help="Wait before reading RSS.")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    from infra.stack import down, ensure_up, service_rss_mb

    tmp = Path(tempfile.mkdtemp(prefix="detloop-bench-stack-"))
    s = _settings(tmp / "data", args.reuse_venv)
    result: dict[str, object] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "label_studio_venv_installed_fresh": args.reuse_venv is None,
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),  # other work on the machine inflates every time
    }
    try:
        t0 = time.monotonic()
        first = ensure_up(s, log=print)
        result["first_up_s"] = round(time.monotonic() - t0, 1)
        result["first_up_phases_s"] = first.phases
        time.sleep(args.settle_seconds)
        result["rss_mb_after_first_up"] = service_rss_mb(s)
        t0 = time.monotonic()
        ensure_up(s)
        result["idempotent_up_s"] = round(time.monotonic() - t0, 2)
        t0 = time.monotonic()
        result["down_outcomes"] = down(s)
        result["down_s"] = round(time.monotonic() - t0, 1)
        t0 = time.monotonic()
        second = ensure_up(s, log=print)
        result["restart_up_s"] = round(time.monotonic() - t0, 1)
        result["restart_phases_s"] = second.phases
        time.sleep(args.settle_seconds)
        rss = service_rss_mb(s)
        result["rss_mb_after_restart"] = rss
        result["rss_mb_total_after_restart"] = round(sum(rss.values()), 1)
        result["data_dir_mb"] = _du_mb(s.data_dir) - (_du_mb(s.data_dir / "label-studio-venv")
                                                      if args.reuse_venv is None else 0.0)
        if args.reuse_venv is None:
            result["label_studio_venv_mb"] = _du_mb(s.data_dir / "label-studio-venv")
        result["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    finally:
        down(s)
        shutil.rmtree(tmp, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
