"""Registry workflow: register a challenger, record the gate, promote, roll back, pull the champion.

Network calls go through the injected :class:`~detloop.clients.protocols.ModelRegistry` (and the object
store for the promotion log); the rule deciding whether to promote is the pure :func:`tasks.promotion.decide`. Aliases: ``challenger`` (newest registered),
``champion`` (served), ``previous-champion`` (what ``rollback`` restores). Moving ``champion`` is one
``set_registered_model_alias`` call, so a reader always sees exactly one champion. MLflow keeps no
alias history: every promotion / rollback is appended to ``promotions/log.jsonl`` in the data bucket.

Files of a registered version (the LoggedModel's artifacts): an MLflow pyfunc model
(:func:`detloop.serving.build_pyfunc_model`) plus what fine-tuning needs::

    MLmodel, pyfunc_model.py, code/detloop/, requirements.txt, python_env.yaml, input_example.json, ...
    artifacts/scoring/model.onnx   raw head + embedding (tasks.export): the file the gate evaluated
    artifacts/scoring/meta.json    ScoringArtifactMeta
    artifacts/serving.json         serving defaults (the scoring decode, class names, thresholds)
    artifacts/thresholds.json      per-class serving thresholds (best F1 on the golden slice)
    weights/best.pt                Ultralytics checkpoint (fine-tuning starts from it)
    eval_report.json               EvalReport of the registration run (may be absent)

The scoring folder is the very one the gate evaluated (copied, never exported again): the version records
its ``model.onnx`` SHA-256 in the tag ``detloop.onnx_sha256``. :func:`load_champion` gives detloop the same
local layout for old (plain files) and new (pyfunc) versions: ``weights/best.pt``, ``scoring/`` and
``thresholds.json`` (links into ``artifacts/``), ``champion.json``.

MLflow's UI can move aliases by hand, around the gate: :func:`check_champion` compares ``champion`` with the
promotion log, and the weekly flow refuses to open a round on a champion the log does not hold until
``detloop promote --version V --override --reason ...`` records it.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
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
        export_scoring_artifact(weights, out_dir / "scoring", settings.classes, settings.model.input_size,
                                dynamic_hw=settings.model.tta.needs_dynamic_hw,  # TTA scales need dynamic HW
                                head=settings.model.export_head)
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
        if gs is not None and gs.overall.map50 is not None:  # the selection's regime rule reads it
            tags["detloop.golden_map50"] = f"{gs.overall.map50:.4f}"
        if report.latency_ms is not None:
            tags["detloop.latency_ms"] = f"{report.latency_ms:.2f}"
        tags["detloop.thresholds"] = json.dumps({k: round(v, 4) for k, v in report.thresholds.items()})
    mv = registry.register_logged_model(run_id, work, name=f"{registry.model_name}-{run_id[:8]}", tags=tags,
                                        params={"run_id": run_id}, serving=serving_config(settings, report),
                                        description=version_description(tags, None))
    registry.describe(None, model_description(settings, registry.model_name))
    registry.set_alias(CHALLENGER, mv.version)
    if report is not None:
        registry.log_metrics(run_id, [(f"eval.{k}", v, 0) for k, v in report.flat_metrics().items()])
        for path in report.plots.values():  # confusion matrix, PR curves, golden frames (tasks.eval_plots)
            registry.log_artifact(run_id, Path(path), "plots")
    return str(mv.version)


def serving_config(settings: Settings, report: Any | None = None) -> Any:
    """The served model's defaults: production scoring's decode (``model.nms``) and tiling (``model.tiling``, per
    camera), the classes, the golden best-F1 thresholds."""
    from detloop.serving import ServingConfig

    ms = settings.model
    thresholds = dict(report.thresholds) if report is not None and report.thresholds else {}
    return ServingConfig(ms.decode_params(ms.scoring_conf_threshold, ms.scoring_max_candidates), ms.fast_decode,
                         list(settings.classes), thresholds, settings.mlflow.model_name, tiling=ms.tile_spec(),
                         camera_tiling={c: ms.tile_spec(c) for c in ms.tiling.cameras})


def model_description(settings: Settings, model_name: str) -> str:
    """The registered model's description (markdown, shown on its MLflow page)."""
    return (
        f"detloop detector for classes {', '.join(settings.classes)} ({settings.model.input_size} px input).\n\n"
        "Each version is an MLflow pyfunc model: input a binary column `image` (JPEG/PNG bytes; base64 in JSON), "
        "output per image `boxes` ([x1, y1, x2, y2] in frame pixels), `class_ids`, `class_names`, `scores` "
        "(confidence in [0, 1]). Pre- and post-processing are detloop's scoring code; no torch needed.\n\n"
        f"- load: `mlflow.pyfunc.load_model(\"models:/{model_name}@champion\")`\n"
        f"- serve: `mlflow models serve -m models:/{model_name}@champion --env-manager local -p 5055`\n\n"
        "Aliases: `champion` (served; moved only by detloop's gate or `detloop promote`, every move is in "
        "`promotions/log.jsonl`), `challenger` (newest), `previous-champion` (what `detloop rollback` restores). "
        "Moving `champion` with the alias buttons here bypasses the gate: detloop then refuses to open a round "
        "until `detloop promote --version V --override --reason ...` records it."
    )


def version_description(tags: dict[str, str], decision: Any | None) -> str:
    """A version's description: where it came from and, once gated, the gate's outcome."""
    parent = tags.get("detloop.parent_version") or ""
    src = f"fine-tuned from v{parent}" if parent else "bootstrap (trained from the model YAML)"
    parts = [f"{src} on dataset version `{tags.get('detloop.dataset_version') or '-'}`"]
    if tags.get("detloop.round_id"):
        parts.append(f"labels of round `{tags['detloop.round_id']}`")
    if tags.get("detloop.golden_map"):
        parts.append(f"golden mAP50-95 {tags['detloop.golden_map']}")
    text = "; ".join(parts) + "."
    if decision is not None:
        text += f"\n\nGate: **{decision.outcome}**" + (
            "" if not decision.reasons else " - " + "; ".join(decision.reasons)) + "."
    return text


def record_gate(registry: Any, version: str, decision: Any, run_id: str | None = None,
                champion_version: str | None = None) -> None:
    """Write the gate outcome as version tags (and in the description), the markdown report as a run artifact."""
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
    reg.describe(version, version_description(dict(reg.get_version(version).tags or {}), decision))
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


def logged_champion(store: Any, settings: Settings, model_name: str, log_key: str = PROMOTION_LOG_KEY) -> str | None:
    """The champion the promotion log says ``model_name`` has: the version of its last entry (None: no entry)."""
    mine = [e for e in read_promotion_log(store, settings, log_key) if e.get("model") == model_name]
    return str(mine[-1]["version"]) if mine else None


@dataclass(frozen=True)
class ChampionCheck:
    """The ``champion`` alias against the promotion log (MLflow's alias buttons bypass the gate)."""

    model: str
    alias_version: str | None
    logged_version: str | None
    unlogged: bool = False  # detloop moved the alias itself, then lost the log line (an outage at the write)

    @property
    def drifted(self) -> bool:
        """True when the alias points at a version the log does not name as champion, and detloop did not put it
        there (see :func:`promoted_after_log`)."""
        return self.alias_version is not None and self.alias_version != self.logged_version and not self.unlogged

    def message(self) -> str:
        if not self.drifted:
            return f"champion of {self.model}: v{self.alias_version} (matches the promotion log)"
        logged = f"v{self.logged_version}" if self.logged_version else "no champion"
        return (f"CHAMPION ALIAS MOVED OUTSIDE DETLOOP: models:/{self.model}@champion is v{self.alias_version}, but the "
                f"promotion log records {logged} (someone moved the alias in MLflow's UI, bypassing the gate). "
                f"To keep v{self.alias_version}: detloop promote --version {self.alias_version} --override --reason "
                f"\"...\"; to undo: move the alias back to {logged} in MLflow")


class ChampionDrift(PromotionError):
    """The ``champion`` alias was moved outside detloop; nothing is built on it until an override records it."""


def promoted_after_log(version_tags: dict[str, str], log_entries: list[dict[str, Any]]) -> bool:
    """Whether detloop itself made this version champion after the log's last entry (pure).

    :func:`promote` tags the version (``detloop.promotion``, ``detloop.promoted_at``) after moving the alias and
    before appending the log line: a version so tagged *later* than the model's last log entry was promoted by
    detloop, which then failed to write the line (the object store down at that moment). A version moved by
    MLflow's alias buttons has no such tag, or an older one (a version detloop promoted before, then demoted).
    """
    if version_tags.get("detloop.promotion") not in ("promote", "override", "record"):
        return False
    at = version_tags.get("detloop.promoted_at") or ""
    last = max((str(e.get("at") or "") for e in log_entries), default="")
    return bool(at) and at > last


def check_champion(settings: Settings, registry: Any, store: Any, log_key: str = PROMOTION_LOG_KEY) -> ChampionCheck:
    """Compare the ``champion`` alias with the promotion log (two reads; the version's tags when they differ)."""
    cur = registry.version_by_alias(CHAMPION)
    logged = logged_champion(store, settings, registry.model_name, log_key)
    alias = str(cur.version) if cur is not None else None
    unlogged = False
    if cur is not None and alias != logged:
        mine = [e for e in read_promotion_log(store, settings, log_key) if e.get("model") == registry.model_name]
        unlogged = promoted_after_log(dict(cur.tags or {}), mine)
    return ChampionCheck(registry.model_name, alias, logged, unlogged)


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
    ``gate.passed`` tag). With ``override`` a ``reason`` is required; who and why are recorded. An override
    of the version that already holds ``champion`` but is not the log's champion (the alias was moved in
    MLflow's UI) records it (action ``record``) without moving any alias.

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
            if not override or logged_champion(store, settings, reg.model_name, log_key) == str(version):
                raise PromotionError(f"version {version} is already the champion")
            # the alias was moved outside detloop (MLflow's UI): record it, move nothing
            entry = {"at": _now(), "action": "record", "model": reg.model_name, "version": str(version),
                     "previous": logged_champion(store, settings, reg.model_name, log_key), "actor": actor,
                     "reason": reason, "gate_outcome": mv.tags.get("gate.outcome")}
            reg.set_version_tags(version, {"detloop.promoted_at": entry["at"], "detloop.promoted_by": actor,
                                           "detloop.promotion": "record", "detloop.override_reason": reason})
            held.check()
            _append_log(store, settings, entry, log_key)
            return entry
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
        if logged_champion(store, settings, registry.model_name, log_key) == str(version):
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
    golden_map50: float | None = None  # its mAP50 on the golden set at registration (selection's regime rule)

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
    tags = mv.tags or {}
    return Champion(str(mv.version), local, getattr(mv, "run_id", None),
                    tags.get("detloop.dataset_version") or None, _float_tag(tags, "detloop.golden_map50"))


def _float_tag(tags: dict[str, Any], key: str) -> float | None:
    try:
        return float(tags[key])
    except (KeyError, TypeError, ValueError):
        return None


def load_champion(settings: Settings, registry: Any, dest_dir: str | Path | None = None, alias: str = CHAMPION,
                  version: str | None = None) -> Path | None:
    """Fetch the files of the version behind ``alias`` (or of ``version``) into ``dest_dir`` (as a deployment would).

    Writes ``dest_dir/champion.json`` (model, version, alias, thresholds, class names) and stamps the version
    into ``scoring/meta.json``. Returns None when no version holds the alias (bootstrap). Safe when
    several processes (e.g. Dask workers on one host) fetch the same version at once. The default
    ``dest_dir`` is ``<data_dir>/champion/<model name>/v<version>``: version numbers restart with every
    registered model, so two models sharing a data dir (a demo and the tests' models) never share a copy.
    """
    reg = registry
    mv = reg.get_version(version) if version is not None else reg.version_by_alias(alias)
    if mv is None:
        return None
    dest = Path(dest_dir) if dest_dir else champion_dir(settings, reg.model_name, str(mv.version))
    marker = dest / "champion.json"
    if _is_copy_of(marker, reg.model_name, str(mv.version)):
        return dest
    tmp = dest.with_name(f"{dest.name}.partial-{os.getpid()}-{threading.get_ident()}")
    from detloop.localfs import writing

    with writing(dest):  # a full disk: one line naming the folder; the partial copy is never taken as the model
        try:
            return _download_champion(settings, reg, mv, dest, marker, tmp, alias)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def champion_dir(settings: Settings, model_name: str, version: str) -> Path:
    """The local copy of registered ``model_name`` version ``version``: ``<data_dir>/champion/<model>/v<version>``
    (characters other than letters, digits, ``.``, ``_`` and ``-`` in the name become ``_``)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", model_name) or "_"
    return settings.data_dir / "champion" / safe / f"v{version}"


def _is_copy_of(marker: Path, model_name: str, version: str) -> bool:
    """Whether ``marker`` (a ``champion.json``) says its folder holds ``model_name`` version ``version``."""
    if not marker.is_file():
        return False
    doc = json.loads(marker.read_text())
    return doc.get("version") == version and doc.get("model") == model_name


def _download_champion(settings: Settings, reg: Any, mv: Any, dest: Path, marker: Path, tmp: Path,
                       alias: str) -> Path:
    if tmp.exists():
        shutil.rmtree(tmp)
    reg.download_version(mv, tmp)
    link_pyfunc_layout(tmp)
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
    if _is_copy_of(marker, reg.model_name, str(mv.version)):
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


def link_pyfunc_layout(local: Path) -> Path:
    """Give a downloaded pyfunc version detloop's layout: ``scoring`` and ``thresholds.json`` link into
    ``artifacts/`` (a version registered as plain files already has them). The pyfunc model stays loadable."""
    for name in ("scoring", "thresholds.json"):
        target = local / "artifacts" / name
        if target.exists() and not (local / name).exists():
            (local / name).symlink_to(Path("artifacts") / name)
    return local


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
