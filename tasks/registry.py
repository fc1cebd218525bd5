"""Registry workflow: register a challenger, record the gate, promote, roll back, pull the champion.

Network calls go through the injected :class:`~detloop.clients.protocols.ModelRegistry` (and the object
store for the promotion log); the rule deciding whether to promote is the pure :func:`tasks.promotion.decide`. Aliases: ``challenger`` (newest registered),
``champion`` (served), ``previous-champion`` (what ``rollback`` restores). Moving ``champion`` is one
``set_registered_model_alias`` call, so a reader always sees exactly one champion. MLflow keeps no
alias history: every promotion / rollback is appended to ``promotions/log.jsonl`` in the data bucket.

Files of a registered version (the LoggedModel's artifacts)::

    weights/best.pt           Ultralytics checkpoint (fine-tuning starts from it)
    scoring/model.onnx        raw head + embedding (tasks.export)
    scoring/meta.json         ScoringArtifactMeta
    thresholds.json           per-class serving thresholds (best F1 on the golden slice)
    eval_report.json          EvalReport of the registration run (may be absent)

The ``scoring/`` folder is the very one the gate evaluated (copied, never exported again): the version
records its ``model.onnx`` SHA-256 in the tag ``detloop.onnx_sha256``.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import shutil
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from detloop.errors import DetloopError
from detloop.settings import Settings

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous-champion"
PROMOTION_LOG_KEY = "promotions/log.jsonl"


class PromotionError(DetloopError):
    """A promotion / rollback was refused (failed gate, missing reason, nothing to roll back to)."""


# --------------------------------------------------------------------------------------------
# Locks: leases in the object store (tasks/leases.py), so they hold on every host the flows run on
# --------------------------------------------------------------------------------------------
def training_lock(settings: Settings, store: Any) -> contextlib.AbstractContextManager[Any]:
    """At most one training per registered model name at a time, on any host (fails fast when busy)."""
    from tasks.leases import lease

    name = settings.mlflow.model_name
    return lease(store, settings.s3.data_bucket, f"training-{name}", f"training of {name}",
                 settings.locks.lease_seconds, wait_s=0.0)


def promotion_lock(settings: Settings, store: Any) -> contextlib.AbstractContextManager[Any]:
    """At most one promotion / rollback per registered model name, on any host (waits up to 60 s)."""
    from tasks.leases import lease

    name = settings.mlflow.model_name
    return lease(store, settings.s3.data_bucket, f"promotion-{name}", f"promotion of {name}",
                 settings.locks.lease_seconds, wait_s=60.0, poll_s=1.0)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------
# Register
# --------------------------------------------------------------------------------------------
def build_model_dir(
    weights: Path, out_dir: Path, settings: Settings, report: Any | None = None, scoring_dir: Path | None = None
) -> Path:
    """Assemble the files of a model version in ``out_dir`` (exports ONNX unless ``scoring_dir`` given)."""
    from detloop.localfs import writing

    with writing(out_dir):  # a full disk: one line naming the folder (rebuilt from scratch on the next run)
        return _build_model_dir(weights, out_dir, settings, report, scoring_dir)


def _build_model_dir(weights: Path, out_dir: Path, settings: Settings, report: Any | None,
                     scoring_dir: Path | None) -> Path:
    from tasks.export import export_scoring_artifact

    if out_dir.exists():
        shutil.rmtree(out_dir)
    (out_dir / "weights").mkdir(parents=True)
    shutil.copyfile(weights, out_dir / "weights" / "best.pt")
    if scoring_dir is not None:
        shutil.copytree(scoring_dir, out_dir / "scoring")
    else:
        export_scoring_artifact(weights, out_dir / "scoring", settings.classes, settings.model.input_size)
    thresholds = dict(report.thresholds) if report is not None and report.thresholds else {
        c: settings.selection.conf_threshold for c in settings.classes}
    (out_dir / "thresholds.json").write_text(json.dumps(
        {"thresholds": thresholds, "class_names": settings.classes,
         "source": report.threshold_slice if report is not None else "default"}, indent=2))
    if report is not None:
        (out_dir / "eval_report.json").write_text(json.dumps(report.to_dict(), indent=1))
    return out_dir


def register_challenger(
    settings: Settings,
    registry: Any,
    run_id: str,
    weights: Path,
    scoring_dir: Path,
    report: Any | None = None,
    dataset_version: str | None = None,
    parent_version: str | None = None,
    extra_tags: dict[str, str] | None = None,
) -> str:
    """Register a trained model as a new version with alias ``challenger``; idempotent per run.

    Args:
        scoring_dir: the scoring artifact the gate evaluated (``model.onnx`` + ``meta.json``); it is
            registered as is, byte for byte.

    An existing version for ``run_id`` is returned as is (a retried flow never duplicates). The version is
    created only after every file was uploaded and the LoggedModel finalized READY.

    Returns:
        The registry version (string).
    """
    from detloop.datasets import file_sha256
    from tasks.export import ONNX_NAME

    existing = registry.version_for_run(run_id)
    if existing is not None:
        registry.set_alias(CHALLENGER, existing.version)
        return str(existing.version)
    work = settings.data_dir / "registry" / f"run-{run_id}"
    build_model_dir(Path(weights), work, settings, report, Path(scoring_dir))
    tags = {
        "detloop.run_id": run_id,
        "detloop.dataset_version": dataset_version or "",
        "detloop.parent_version": parent_version or "",
        "detloop.classes": ",".join(settings.classes),
        "detloop.input_size": str(settings.model.input_size),
        "detloop.onnx_sha256": file_sha256(work / "scoring" / ONNX_NAME),
        "detloop.registered_at": _now(),
        **(extra_tags or {}),
    }
    if report is not None:
        gs = report.slices.get("golden")
        if gs is not None and gs.overall.map is not None:
            tags["detloop.golden_map"] = f"{gs.overall.map:.4f}"
        if report.latency_ms is not None:
            tags["detloop.latency_ms"] = f"{report.latency_ms:.2f}"
        tags["detloop.thresholds"] = json.dumps({k: round(v, 4) for k, v in report.thresholds.items()})
    mv = registry.register_logged_model(run_id, work, name=f"{registry.model_name}-{run_id[:8]}", tags=tags,
                                        params={"run_id": run_id})
    registry.set_alias(CHALLENGER, mv.version)
    if report is not None:
        registry.log_metrics(run_id, [(f"eval.{k}", v, 0) for k, v in report.flat_metrics().items()])
    return str(mv.version)


def record_gate(registry: Any, version: str, decision: Any, run_id: str | None = None,
                champion_version: str | None = None) -> None:
    """Write the gate outcome as version tags and the markdown report as a run artifact."""
    reg = registry
    reg.set_version_tags(version, {
        "gate.outcome": decision.outcome,
        "gate.passed": str(decision.passed).lower(),
        "gate.bootstrap": str(decision.bootstrap).lower(),
        "gate.reasons": " | ".join(decision.reasons)[:5000] or "-",
        "gate.compared_to": champion_version or "-",
        "gate.checks": json.dumps([[c.name, c.status, c.value] for c in decision.checks])[:5000],
        "gate.at": _now(),
    })
    if run_id:
        reg.log_text(run_id, decision.to_markdown(), f"gate/gate_report_v{version}.md")


# --------------------------------------------------------------------------------------------
# Promote / rollback
# --------------------------------------------------------------------------------------------
def _append_log(store: Any, settings: Settings, entry: dict[str, Any], log_key: str) -> None:
    bucket = settings.s3.data_bucket
    body = store.get_bytes_or_none(bucket, log_key) or b""
    line = json.dumps(entry, sort_keys=True).encode() + b"\n"
    store.put_bytes(bucket, log_key, body + line, content_type="application/x-ndjson")


def read_promotion_log(store: Any, settings: Settings, log_key: str = PROMOTION_LOG_KEY) -> list[dict[str, Any]]:
    """Entries of the promotion log (oldest first)."""
    body = store.get_bytes_or_none(settings.s3.data_bucket, log_key)
    if body is None:
        return []
    return [json.loads(line) for line in body.decode().splitlines() if line.strip()]


def promote(
    settings: Settings,
    registry: Any,
    store: Any,
    version: str,
    decision: Any | None = None,
    override: bool = False,
    reason: str | None = None,
    actor: str | None = None,
    log_key: str = PROMOTION_LOG_KEY,
) -> dict[str, Any]:
    """Move ``champion`` to ``version`` (old champion -> ``previous-champion``) and log it.

    Without ``override`` the version must have passed the gate (``decision.passed``, or its recorded
    ``gate.passed`` tag). With ``override`` a ``reason`` is required; who and why are recorded.

    Returns:
        The promotion-log entry.

    Raises:
        PromotionError: failed gate without override, or a missing reason. LockBusy: another promotion.
    """
    reg = registry
    actor = actor or getpass.getuser()
    with promotion_lock(settings, store) as held:
        mv = reg.get_version(version)
        passed = decision.passed if decision is not None else mv.tags.get("gate.passed") == "true"
        if not passed and not override:
            why = " | ".join(decision.reasons) if decision is not None else mv.tags.get("gate.reasons", "no gate run")
            raise PromotionError(f"version {version} did not pass the gate ({why}); use --override --reason to force")
        if override and not (reason and reason.strip()):
            raise PromotionError("--override needs --reason \"...\" (recorded with the promotion)")
        old = reg.version_by_alias(CHAMPION)
        if old is not None and str(old.version) == str(version):
            raise PromotionError(f"version {version} is already the champion")
        held.check()  # still ours: nobody else moves the aliases or appends to the log meanwhile
        if old is not None:
            reg.set_alias(PREVIOUS, old.version)
        reg.set_alias(CHAMPION, version)  # one call: readers see the old or the new champion, never none
        entry = {
            "at": _now(), "action": "override" if override else "promote", "model": reg.model_name,
            "version": str(version), "previous": str(old.version) if old is not None else None, "actor": actor,
            "reason": reason or ("gate passed" if passed else ""),
            "gate_outcome": decision.outcome if decision is not None else mv.tags.get("gate.outcome"),
        }
        reg.set_version_tags(version, {"detloop.promoted_at": entry["at"], "detloop.promoted_by": actor,
                                       "detloop.promotion": entry["action"],
                                       **({"detloop.override_reason": reason} if override and reason else {})})
        _append_log(store, settings, entry, log_key)
    return entry


def log_promotion_if_missing(settings: Settings, registry: Any, store: Any, version: str, reason: str, actor: str,
                             log_key: str = PROMOTION_LOG_KEY) -> dict[str, Any] | None:
    """Append the log line of ``champion``'s promotion to ``version`` when a crash lost it (the alias moved, then
    the store failed before the line was written); returns the entry, or None when the log has it already."""
    with promotion_lock(settings, store) as held:
        cur = registry.version_by_alias(CHAMPION)
        if cur is None or str(cur.version) != str(version):
            return None
        log = read_promotion_log(store, settings, log_key)
        if any(e.get("model") == registry.model_name and e.get("version") == str(version)
               and e.get("action") in ("promote", "override") for e in log):
            return None
        entry = {"at": _now(), "action": "promote", "model": registry.model_name, "version": str(version),
                 "previous": (cur.tags or {}).get("detloop.parent_version") or None, "actor": actor,
                 "reason": f"{reason} (logged after the fact: the alias had moved before the log line was written)",
                 "gate_outcome": (cur.tags or {}).get("gate.outcome")}
        held.check()
        _append_log(store, settings, entry, log_key)
    return entry


def rollback(settings: Settings, registry: Any, store: Any, reason: str | None = None, actor: str | None = None,
             log_key: str = PROMOTION_LOG_KEY) -> dict[str, Any]:
    """Restore ``previous-champion`` as ``champion``; the demoted version becomes ``previous-champion``.

    Raises:
        PromotionError: there is no ``previous-champion``.
    """
    reg = registry
    actor = actor or getpass.getuser()
    with promotion_lock(settings, store) as held:
        prev = reg.version_by_alias(PREVIOUS)
        if prev is None:
            raise PromotionError(f"model {reg.model_name}: no '{PREVIOUS}' alias, nothing to roll back to")
        cur = reg.version_by_alias(CHAMPION)
        held.check()
        reg.set_alias(CHAMPION, prev.version)
        if cur is not None:
            reg.set_alias(PREVIOUS, cur.version)
            reg.set_version_tags(cur.version, {"detloop.rolled_back_at": _now(), "detloop.rolled_back_by": actor})
        else:
            reg.delete_alias(PREVIOUS)
        entry = {"at": _now(), "action": "rollback", "model": reg.model_name, "version": str(prev.version),
                 "previous": str(cur.version) if cur is not None else None, "actor": actor, "reason": reason or ""}
        _append_log(store, settings, entry, log_key)
    return entry


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
def champion_version(registry: Any) -> Any | None:
    return registry.version_by_alias(CHAMPION)


@dataclass(frozen=True)
class Champion:
    """The model behind an alias, fetched into a local directory (``weights/``, ``scoring/``, ...)."""

    version: str
    local_dir: Path
    run_id: str | None
    dataset_version: str | None  # the dataset version it was trained on

    @property
    def scoring_dir(self) -> Path:
        return self.local_dir / "scoring"

    @property
    def weights(self) -> Path:
        return self.local_dir / "weights" / "best.pt"


def fetch_champion(settings: Settings, registry: Any, alias: str = CHAMPION) -> Champion | None:
    """The one champion fetcher: the version behind ``alias``, downloaded once per version; None when none.

    Raises:
        ServiceUnavailable: MLflow (or its artifact store) is not reachable.
    """
    mv = registry.version_by_alias(alias)
    if mv is None:
        return None
    local = load_champion(settings, registry, version=str(mv.version), alias=alias)
    if local is None:  # pragma: no cover - the version was deleted in between
        return None
    return Champion(str(mv.version), local, getattr(mv, "run_id", None),
                    (mv.tags or {}).get("detloop.dataset_version") or None)


def load_champion(settings: Settings, registry: Any, dest_dir: str | Path | None = None, alias: str = CHAMPION,
                  version: str | None = None) -> Path | None:
    """Fetch the files of the version behind ``alias`` (or of ``version``) into ``dest_dir`` (as a deployment would).

    Writes ``dest_dir/champion.json`` (version, alias, thresholds, class names) and stamps the version
    into ``scoring/meta.json``. Returns None when no version holds the alias (bootstrap). Safe when
    several processes (e.g. Dask workers on one host) fetch the same version at once.
    """
    reg = registry
    mv = reg.get_version(version) if version is not None else reg.version_by_alias(alias)
    if mv is None:
        return None
    dest = Path(dest_dir) if dest_dir else settings.data_dir / "champion" / f"v{mv.version}"
    marker = dest / "champion.json"
    if marker.is_file() and json.loads(marker.read_text()).get("version") == str(mv.version):
        return dest
    tmp = dest.with_name(f"{dest.name}.partial-{os.getpid()}-{threading.get_ident()}")
    from detloop.localfs import writing

    with writing(dest):  # a full disk: one line naming the folder; the partial copy is never taken as the model
        try:
            return _download_champion(settings, reg, mv, dest, marker, tmp, alias)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _download_champion(settings: Settings, reg: Any, mv: Any, dest: Path, marker: Path, tmp: Path,
                       alias: str) -> Path:
    if tmp.exists():
        shutil.rmtree(tmp)
    reg.download_version(mv, tmp)
    meta_path = tmp / "scoring" / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        meta.update(registry_version=str(mv.version), model_name=reg.model_name)
        meta_path.write_text(json.dumps(meta, indent=2))
    th_path = tmp / "thresholds.json"
    thresholds = json.loads(th_path.read_text()).get("thresholds", {}) if th_path.is_file() else {}
    (tmp / "champion.json").write_text(json.dumps({
        "model": reg.model_name, "version": str(mv.version), "alias": alias, "run_id": mv.run_id,
        "thresholds": thresholds, "class_names": settings.classes, "pulled_at": _now()}, indent=2))
    if marker.is_file() and json.loads(marker.read_text()).get("version") == str(mv.version):
        shutil.rmtree(tmp)  # another process finished the same download first
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    try:
        tmp.rename(dest)
    except OSError:  # lost a race to another process: keep its copy when it is complete
        shutil.rmtree(tmp, ignore_errors=True)
        if not marker.is_file():
            raise
    return dest


def list_models(registry: Any) -> list[dict[str, Any]]:
    """Versions (newest first) with aliases, gate outcome and golden mAP."""
    out = []
    for v in registry.versions():
        out.append({
            "version": str(v.version),
            "aliases": sorted(getattr(v, "aliases", []) or []),
            "gate": v.tags.get("gate.outcome", "-"),
            "golden_map": v.tags.get("detloop.golden_map", "-"),
            "dataset_version": v.tags.get("detloop.dataset_version", "") or "-",
            "parent": v.tags.get("detloop.parent_version", "") or "-",
            "run_id": v.run_id,
            "created": datetime.fromtimestamp(v.creation_timestamp / 1000, UTC).isoformat(timespec="seconds"),
            "reasons": v.tags.get("gate.reasons", ""),
        })
    return out
