"""What every benchmark records beside its numbers: the machine, its load, when; and how it writes JSON."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def machine_info(**extra: Any) -> dict[str, Any]:
    """Cores, Python, the 1-minute load average at the end of the run (noisy machines), plus ``extra``."""
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "loadavg_1m_at_end": round(os.getloadavg()[0], 2), **extra}


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


LEGACY_ARCH = "yolo11n.yaml"  # model.arch's default: caches keyed before the key held the family are its


def arch_key_part(arch: str) -> dict[str, str]:
    """A from-scratch model family's part of a benchmark cache key: ``{"arch": arch}``, or nothing for
    :data:`LEGACY_ARCH` (the only family of caches made before the key held it, which so stay valid)."""
    return {} if arch == LEGACY_ARCH else {"arch": arch}


def configured_arch(config: str | Path) -> str:
    """``model.arch`` of a detloop config (relative paths from the repository), environment overrides applied."""
    from detloop.settings import load_settings

    path = Path(config)
    return load_settings(path if path.is_absolute() else REPO / path).model.arch


def write_result(out: Path, result: dict[str, Any]) -> dict[str, Any]:
    """Write the result JSON (creating its folder) and print it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return result


def service_cpu_s(settings: Any, service: str) -> float | None:
    """CPU seconds (user + system) used so far by a stack service's process group (None if not running)."""
    import psutil

    from infra import procs
    from infra.stack import stack_paths

    rec = procs.read_pid_file(stack_paths(settings).pid(service))
    if rec is None:
        return None
    total = 0.0
    for pid in procs.group_members(rec.pid):
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total
