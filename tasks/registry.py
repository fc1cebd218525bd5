"""Registry workflow: register a challenger, record the gate, promote, roll back, pull the champion.

Network calls go through :class:`detloop.clients.registry.RegistryClient`; the rule deciding whether to
promote is the pure :func:`tasks.promotion.decide`. Aliases: ``challenger`` (newest registered),
``champion`` (served), ``previous-champion`` (what ``rollback`` restores). Moving ``champion`` is one
``set_registered_model_alias`` call, so a reader always sees exactly one champion. MLflow keeps no
alias history: every promotion / rollback is appended to ``promotions/log.jsonl`` in the data bucket.

Files of a registered version (the LoggedModel's artifacts)::

    weights/best.pt           Ultralytics checkpoint (fine-tuning starts from it)
    scoring/model.onnx        raw head + embedding (tasks.export)
    scoring/meta.json         ScoringArtifactMeta
    thresholds.json           per-class serving thresholds (best F1 on the golden slice)
    eval_report.json          EvalReport of the registration run (may be absent)
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from detloop.errors import DetloopError
from detloop.settings import Settings

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous-champion"
PROMOTION_LOG_KEY = "promotions/log.jsonl"


class PromotionError(DetloopError):
    """A promotion / rollback was refused (failed gate, nothing to roll back to, lock busy)."""


# --------------------------------------------------------------------------------------------
# Locks
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def file_lock(path: Path, what: str, wait_s: float = 0.0) -> Iterator[None]:
    """Exclusive ``flock`` on ``path``; waits up to ``wait_s`` then raises :class:`PromotionError`.

    A crashed holder releases the lock with its process (kernel flock), so no stale lock survives.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    f = path.open("a+")
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise PromotionError(f"another {what} is running (lock {path} is held)") from None
                time.sleep(0.5)
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": __import__("os").getpid(), "since": _now()}))
        f.flush()
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def training_lock(settings: Settings) -> contextlib.AbstractContextManager[None]:
    """At most one training per registered model name at a time (fails fast when busy)."""
    name = settings.mlflow.model_name
    return file_lock(settings.data_dir / "locks" / f"training-{name}.lock", f"training of {name}", wait_s=0.0)


def promotion_lock(settings: Settings) -> contextlib.AbstractContextManager[None]:
    """At most one promotion / rollback per registered model name (waits up to 60 s)."""
    name = settings.mlflow.model_name
    return file_lock(settings.data_dir / "locks" / f"promotion-{name}.lock", f"promotion of {name}", wait_s=60.0)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _client(settings: Settings, registry: Any) -> Any:
    if registry is not None:
        return registry
    from detloop.clients.registry import RegistryClient

    return RegistryClient(settings)


# --------------------------------------------------------------------------------------------
# Register
# --------------------------------------------------------------------------------------------
def build_model_dir(
    weights: Path, out_dir: Path, settings: Settings, report: Any | None = None, scoring_dir: Path | None = None
) -> Path:
    """Assemble the files of a model version in ``out_dir`` (exports ONNX unless ``scoring_dir`` given)."""
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
    run_id: str,
    weights: Path,
    report: Any | None = None,
    dataset_version: str | None = None,
    parent_version: str | None = None,
    extra_tags: dict[str, str] | None = None,
    scoring_dir: Path | None = None,
    registry: Any = None,
) -> str:
    """Register a trained model as a new version with alias ``challenger``; idempotent per run.

    An existing version for ``run_id`` is returned as is (a retried flow never duplicates). The version is
    created only after every file was uploaded and the LoggedModel finalized READY.

    Returns:
        The registry version (string).
    """
    reg = _client(settings, registry)
    existing = reg.version_for_run(run_id)
    if existing is not None:
        reg.set_alias(CHALLENGER, existing.version)
        return str(existing.version)
    work = settings.data_dir / "registry" / f"run-{run_id}"
    build_model_dir(Path(weights), work, settings, report, scoring_dir)
    tags = {
        "detloop.run_id": run_id,
        "detloop.dataset_version": dataset_version or "",
        "detloop.parent_version": parent_version or "",
        "detloop.classes": ",".join(settings.classes),
        "detloop.input_size": str(settings.model.input_size),
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
    mv = reg.register_logged_model(run_id, work, name=f"{reg.model_name}-{run_id[:8]}", tags=tags,
                                   params={"run_id": run_id})
    reg.set_alias(CHALLENGER, mv.version)
    if report is not None:
        reg.log_metrics(run_id, [(f"eval.{k}", v, 0) for k, v in report.flat_metrics().items()])
    return str(mv.version)


def record_gate(settings: Settings, version: str, decision: Any, run_id: str | None = None,
                champion_version: str | None = None, registry: Any = None) -> None:
    """Write the gate outcome as version tags and the markdown report as a run artifact."""
    reg = _client(settings, registry)
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
def _append_log(settings: Settings, entry: dict[str, Any], log_key: str) -> None:
    from detloop.clients.s3 import S3Store
    from detloop.errors import ServiceError

    store = S3Store(settings)
    bucket = settings.s3.data_bucket
    try:
        body = store.get_bytes(bucket, log_key)
    except ServiceError as err:
        if "NoSuchKey" not in str(err) and "404" not in str(err):
            raise
        body = b""
    line = json.dumps(entry, sort_keys=True).encode() + b"\n"
    store.put_bytes(bucket, log_key, body + line, content_type="application/x-ndjson")


def read_promotion_log(settings: Settings, log_key: str = PROMOTION_LOG_KEY) -> list[dict[str, Any]]:
    """Entries of the promotion log (oldest first)."""
    from detloop.clients.s3 import S3Store
    from detloop.errors import ServiceError

    try:
        body = S3Store(settings).get_bytes(settings.s3.data_bucket, log_key)
    except ServiceError as err:
        if "NoSuchKey" in str(err) or "404" in str(err):
            return []
        raise
    return [json.loads(line) for line in body.decode().splitlines() if line.strip()]


def promote(
    settings: Settings,
    version: str,
    decision: Any | None = None,
    override: bool = False,
    reason: str | None = None,
    actor: str | None = None,
    registry: Any = None,
    log_key: str = PROMOTION_LOG_KEY,
) -> dict[str, Any]:
    """Move ``champion`` to ``version`` (old champion -> ``previous-champion``) and log it.

    Without ``override`` the version must have passed the gate (``decision.passed``, or its recorded
    ``gate.passed`` tag). With ``override`` a ``reason`` is required; who and why are recorded.

    Returns:
        The promotion-log entry.

    Raises:
        PromotionError: failed gate without override, missing reason, or the promotion lock is busy.
    """
    reg = _client(settings, registry)
    actor = actor or getpass.getuser()
    with promotion_lock(settings):
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
        _append_log(settings, entry, log_key)
    return entry


def rollback(settings: Settings, reason: str | None = None, actor: str | None = None, registry: Any = None,
             log_key: str = PROMOTION_LOG_KEY) -> dict[str, Any]:
    """Restore ``previous-champion`` as ``champion``; the demoted version becomes ``previous-champion``.

    Raises:
        PromotionError: there is no ``previous-champion``.
    """
    reg = _client(settings, registry)
    actor = actor or getpass.getuser()
    with promotion_lock(settings):
        prev = reg.version_by_alias(PREVIOUS)
        if prev is None:
            raise PromotionError(f"model {reg.model_name}: no '{PREVIOUS}' alias, nothing to roll back to")
        cur = reg.version_by_alias(CHAMPION)
        reg.set_alias(CHAMPION, prev.version)
        if cur is not None:
            reg.set_alias(PREVIOUS, cur.version)
            reg.set_version_tags(cur.version, {"detloop.rolled_back_at": _now(), "detloop.rolled_back_by": actor})
        else:
            reg.delete_alias(PREVIOUS)
        entry = {"at": _now(), "action": "rollback", "model": reg.model_name, "version": str(prev.version),
                 "previous": str(cur.version) if cur is not None else None, "actor": actor, "reason": reason or ""}
        _append_log(settings, entry, log_key)
    return entry


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
def champion_version(settings: Settings, registry: Any = None) -> Any | None:
    return _client(settings, registry).version_by_alias(CHAMPION)


def load_champion(settings: Settings, dest_dir: str | Path | None = None, alias: str = CHAMPION,
                  registry: Any = None, version: str | None = None) -> Path | None:
    """Fetch the files of the version behind ``alias`` (or of ``version``) into ``dest_dir`` (as a deployment would).

    Writes ``dest_dir/champion.json`` (version, alias, thresholds, class names) and stamps the version
    into ``scoring/meta.json``. Returns None when no version holds the alias (bootstrap). Safe when
    several processes (e.g. Dask workers on one host) fetch the same version at once.
    """
    reg = _client(settings, registry)
    mv = reg.get_version(version) if version is not None else reg.version_by_alias(alias)
    if mv is None:
        return None
    dest = Path(dest_dir) if dest_dir else settings.data_dir / "champion" / f"v{mv.version}"
    marker = dest / "champion.json"
    if marker.is_file() and json.loads(marker.read_text()).get("version") == str(mv.version):
        return dest
    tmp = dest.with_name(f"{dest.name}.partial-{os.getpid()}-{threading.get_ident()}")
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


def list_models(settings: Settings, registry: Any = None) -> list[dict[str, Any]]:
    """Versions (newest first) with aliases, gate outcome and golden mAP."""
    reg = _client(settings, registry)
    out = []
    for v in reg.versions():
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


# --------------------------------------------------------------------------------------------
# One call for a whole post-training step (CLI `detloop train --register` and the flows)
# --------------------------------------------------------------------------------------------
def evaluate_register_gate(
    settings: Settings,
    train_result: Any,
    slices: list[Any],
    dataset_version: str | None = None,
    promote_if_passed: bool | None = None,
    registry: Any = None,
    work_dir: Path | None = None,
    log_key: str = PROMOTION_LOG_KEY,
) -> dict[str, Any]:
    """Evaluate challenger and champion on the same slices, register, gate, and promote when allowed.

    Args:
        settings: settings (gate policy from ``settings.gate``).
        train_result: :class:`tasks.training.TrainResult` of the challenger.
        slices: evaluation slices; the one named ``golden`` gates (``tasks.evaluation.gate_scores``).
        dataset_version: dataset version id recorded on the version.
        promote_if_passed: default ``settings.gate.auto_promote``.
        registry: registry client (default from settings).
        work_dir: scratch directory (default under the data dir).
        log_key: promotion-log key in the data bucket.

    Returns:
        ``{"version", "champion_version", "decision", "challenger_report", "champion_report", "promoted"}``.
    """
    from tasks.evaluation import evaluate_pair, gate_scores
    from tasks.promotion import GatePolicy, decide

    reg = _client(settings, registry)
    work = work_dir or settings.data_dir / "eval" / train_result.run_id
    champ = reg.version_by_alias(CHAMPION)
    if champ is not None and champ.run_id == train_result.run_id:  # a retry after a completed promotion
        prev = reg.version_by_alias(PREVIOUS)
        return {"version": str(champ.version), "champion_version": str(prev.version) if prev else None,
                "decision": None, "challenger_report": None, "champion_report": None, "promoted": True}
    champ_dir = load_champion(settings, registry=reg) if champ is not None else None
    ch_rep, cp_rep = evaluate_pair(train_result.weights, champ_dir / "scoring" if champ_dir else None, slices,
                                   settings, work)
    parent = str(champ.version) if champ is not None else None
    version = register_challenger(settings, train_result.run_id, train_result.weights, ch_rep,
                                  dataset_version=dataset_version, parent_version=parent, registry=reg)
    policy = GatePolicy.from_settings(settings.gate)
    decision = decide(gate_scores(ch_rep), gate_scores(cp_rep) if cp_rep is not None else None, policy)
    record_gate(settings, version, decision, run_id=train_result.run_id, champion_version=parent, registry=reg)
    do_promote = settings.gate.auto_promote if promote_if_passed is None else promote_if_passed
    promoted = False
    if decision.passed and do_promote:
        promote(settings, version, decision, actor="detloop-gate", registry=reg, log_key=log_key)
        promoted = True
    return {"version": version, "champion_version": parent, "decision": decision, "challenger_report": ch_rep,
            "champion_report": cp_rep, "promoted": promoted}
