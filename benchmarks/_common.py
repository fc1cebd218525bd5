"""What every benchmark records beside its numbers: the machine, its load, when; and how it writes JSON."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Mapping
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


SECRET_MASK = "**********"  # what pydantic's JSON dump writes for a SecretStr that is set


def without_nulls(value: Any) -> Any:
    """``value`` (a settings dump: dicts, lists, scalars) with every null or secret dict entry dropped,
    recursively."""
    if isinstance(value, Mapping):
        return {k: without_nulls(v) for k, v in value.items() if v is not None and v != SECRET_MASK}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def settings_hash(dump: Mapping[str, Any], length: int) -> str:
    """The first ``length`` hex digits of the sha256 of a settings dump (``model_dump(mode="json")``), null
    entries and secrets left out.

    Null means "off" or "not set" throughout the settings tree, so an option added later at a null default names
    the same configuration as before it existed: results and caches keyed before it stay valid (a new field
    otherwise made every earlier soak non-resumable). Any non-null value, a default switched on included,
    changes the hash. Secrets are not configuration: set or not (the soak machine's environment), they hash the
    same."""
    return legacy_settings_hash(without_nulls(dict(dump)), length)


def legacy_settings_hash(dump: Mapping[str, Any], length: int) -> str:
    """:func:`settings_hash` as it was before nulls were left out (every entry hashed): to recognise results
    keyed by it."""
    return hashlib.sha256(json.dumps(dict(dump), sort_keys=True, default=str).encode()).hexdigest()[:length]


def parse_settings(text: str, what: str) -> dict[str, Any]:
    """``key=value,key=value`` (``null`` or ``None`` for None, JSON values: numbers as numbers) -> a dict.

    Raises:
        ValueError: not of that form, naming ``what`` (the option it came from).
    """
    import json

    out: dict[str, Any] = {}
    for part in text.split(","):
        key, eq, raw = part.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"{what} {text!r}: {part!r} is not key=value")
        try:
            out[key.strip()] = json.loads(raw) if raw.strip() not in ("", "None") else None
        except json.JSONDecodeError:
            out[key.strip()] = raw.strip()
    return out


def drift_with(settings: Any, overrides: Mapping[str, Any]) -> Any:
    """``settings.drift`` with ``overrides`` applied and validated (pydantic names a bad field), for benchmarks
    that compare drift-setting variants."""
    return type(settings.drift).model_validate({**settings.drift.model_dump(), **dict(overrides)})
