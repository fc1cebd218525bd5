"""Training: bootstrap from a model YAML or fine-tune from the champion, in a subprocess, tracked in MLflow.

Entry point: :func:`train`. What it does, in order:

1. :func:`check_dataset`: the dataset's class list must equal the configured one (same names, same
   order; differences listed), and it needs at least ``training.min_train_frames`` train frames and one
   val frame (counts in the error).
2. An input hash over the dataset files, the starting weights and the training parameters. A FINISHED
   MLflow run with the same hash is reused (its weights downloaded) instead of training again: retries
   of a flow are idempotent.
3. The MLflow run is created by the parent; the subprocess (``python -m tasks.training_worker``) trains
   with all cores, ``YOLO_CONFIG_DIR`` and outputs under ``<data_dir>/training/<run_name>``, in its own
   process group (killed on timeout). A crash or timeout marks the run FAILED and raises
   :class:`TrainingError`; nothing is registered.
4. The parent logs params, per-epoch metrics (``results.csv``), the curves as a PNG, the weights, the
   dataset version id, parent champion version, git commit and training time.

Hard-example oversampling is :func:`oversample_hard`: hard frames are repeated in the train list as
hard-linked copies (names ``<stem>__rep<k>``) so repeats cannot be deduplicated by a loader.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from detloop.errors import DataError, DetloopError, NotFound
from detloop.localfs import link_or_copy, writing
from detloop.settings import REPO_ROOT, Settings

IMG_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class TrainingError(DetloopError):
    """Training failed (crash, timeout); the MLflow run is marked FAILED."""


@dataclass
class TrainResult:
    """Outcome of :func:`train`.

    Attributes:
        run_id: MLflow run id.
        weights: local path of the best ``.pt``.
        out_dir: local training directory.
        metrics: final-epoch metrics from ``results.csv`` (e.g. ``metrics/mAP50-95(B)``).
        train_seconds: wall time of the training subprocess (0 when reused).
        reused: True when a FINISHED run with the same input hash was reused.
        input_hash: hash of dataset files + starting weights + parameters.
        epochs: epochs trained.
        bootstrap: trained from the model YAML (no starting weights).
    """

    run_id: str
    weights: Path
    out_dir: Path
    metrics: dict[str, float]
    train_seconds: float
    reused: bool
    input_hash: str
    epochs: int
    bootstrap: bool
    tags: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["weights"], d["out_dir"] = str(self.weights), str(self.out_dir)
        return d


# --------------------------------------------------------------------------------------------
# Dataset checks and oversampling (pure file work)
# --------------------------------------------------------------------------------------------
def _names_list(names: Any) -> list[str]:
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names, key=int)]
    return [str(n) for n in names or []]


def class_difference(dataset: list[str], configured: list[str]) -> str | None:
    """Human-readable difference between two class lists, or None when identical (order matters)."""
    if dataset == configured:
        return None
    parts = []
    missing = [c for c in configured if c not in dataset]
    extra = [c for c in dataset if c not in configured]
    if missing:
        parts.append(f"missing {missing}")
    if extra:
        parts.append(f"unexpected {extra}")
    if not missing and not extra:
        moved = [f"{c}: {dataset.index(c)} (config {configured.index(c)})" for c in configured
                 if dataset.index(c) != configured.index(c)]
        parts.append(f"order differs: {moved}")
    return "; ".join(parts)


def _split_images(data: dict[str, Any], root: Path, split: str) -> list[Path]:
    entries = data.get(split)
    if entries is None:
        return []
    out: list[Path] = []
    for e in entries if isinstance(entries, list) else [entries]:
        p = Path(e) if Path(e).is_absolute() else root / e
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMG_EXT)
        elif p.is_file() and p.suffix == ".txt":
            for line in p.read_text().splitlines():
                line = line.strip()
                if line:
                    q = Path(line.replace("./", str(p.parent) + os.sep, 1) if line.startswith("./") else line)
                    out.append(q if q.is_absolute() else root / q)
        elif p.is_file():
            out.append(p)
    return out


def read_data_yaml(data_yaml: str | Path) -> tuple[dict[str, Any], Path]:
    import yaml

    path = Path(data_yaml)
    if not path.is_file():
        raise DataError(f"dataset file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    root = Path(data.get("path") or path.parent)
    if not root.is_absolute():
        root = (path.parent / root).resolve()
    return data, root


def bounded_epochs(epochs: int, train_frames: int, max_images: int | None) -> int:
    """Epochs of a fine-tune under ``training.finetune_max_images``: ``epochs`` unless ``epochs x train_frames``
    passes the bound, then as many whole epochs as fit (at least 1).

    >>> bounded_epochs(10, 262, 1500), bounded_epochs(10, 431, 1500), bounded_epochs(10, 100, 1500)
    (5, 3, 10)
    >>> bounded_epochs(10, 4000, 1500), bounded_epochs(10, 4000, None)
    (1, 10)
    """
    if max_images is None or epochs * train_frames <= max_images:
        return epochs
    return max(1, max_images // max(train_frames, 1))


def check_dataset(data_yaml: str | Path, class_names: list[str], min_train_frames: int) -> dict[str, int]:
    """Refuse a dataset whose classes differ from config, or that is empty / too small.

    Returns:
        ``{"train": n_train_images, "val": n_val_images, "train_boxes": n}``.

    Raises:
        DataError: naming the class difference or the counts.
    """
    data, root = read_data_yaml(data_yaml)
    diff = class_difference(_names_list(data.get("names")), list(class_names))
    if diff:
        raise DataError(f"{data_yaml}: dataset classes differ from config `classes`: {diff}")
    train = _split_images(data, root, "train")
    val = _split_images(data, root, "val")
    boxes = 0
    for img in train:
        lp = _label_for(img)
        if lp.is_file():
            boxes += sum(1 for line in lp.read_text().splitlines() if line.strip())
    if len(train) < min_train_frames or not val or boxes == 0:
        raise DataError(
            f"{data_yaml}: too little data to train: {len(train)} train frames (need >= {min_train_frames}), "
            f"{len(val)} val frames (need >= 1), {boxes} train boxes (need >= 1)"
        )
    return {"train": len(train), "val": len(val), "train_boxes": boxes}


def _label_for(img: Path) -> Path:
    s = str(img)
    i = s.rfind(f"{os.sep}images{os.sep}")
    if i >= 0:
        s = s[:i] + f"{os.sep}labels{os.sep}" + s[i + len("/images/"):]
    return Path(s).with_suffix(".txt")


def oversample_hard(data_yaml: str | Path, hard: Iterable[str], factor: int, out_dir: str | Path) -> Path:
    """A new ``data.yaml`` whose train list repeats hard frames ``factor`` times (hard-linked copies).

    Args:
        data_yaml: source dataset.
        hard: image stems (file names without extension) of hard frames (missed boxes / corrected).
        factor: total occurrences of each hard frame (1 = no oversampling).
        out_dir: where the copies, the train list and the new ``data.yaml`` go.

    Returns:
        Path of the new ``data.yaml`` (val / other splits unchanged).
    """
    import yaml

    data, root = read_data_yaml(data_yaml)
    hard_set = set(hard)
    out = Path(out_dir)
    img_dir, lbl_dir = out / "images" / "train_rep", out / "labels" / "train_rep"
    img_dir.mkdir(parents=True, exist_ok=True)
    lbl_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for img in _split_images(data, root, "train"):
        lines.append(str(img.resolve()))
        if img.stem not in hard_set:
            continue
        for k in range(1, factor):
            dst = img_dir / f"{img.stem}__rep{k}{img.suffix}"
            lbl = lbl_dir / f"{img.stem}__rep{k}.txt"
            for src, d in ((img, dst), (_label_for(img), lbl)):
                if d.exists() or not src.exists():
                    continue
                link_or_copy(src, d)  # whole or absent (an existing copy is never half-written)
            lines.append(str(dst.resolve()))
    (out / "train.txt").write_text("\n".join(lines) + "\n")
    new = dict(data)
    new["path"] = str(root)
    new["train"] = str((out / "train.txt").resolve())
    for split in ("val", "test"):
        if split in data and not Path(str(data[split])).is_absolute():
            new[split] = str(root / data[split]) if isinstance(data[split], str) else [str(root / e) for e in data[split]]
    p = out / "data.yaml"
    p.write_text(yaml.safe_dump(new, sort_keys=False))
    return p


# --------------------------------------------------------------------------------------------
# Hashing, git, curves
# --------------------------------------------------------------------------------------------
def input_hash(data_yaml: str | Path, init_weights: str | Path | None, params: dict[str, Any]) -> str:
    """sha256 over dataset image/label names + sizes, starting weights bytes and parameters."""
    data, root = read_data_yaml(data_yaml)
    h = hashlib.sha256()
    h.update(json.dumps(_names_list(data.get("names"))).encode())
    for split in ("train", "val"):
        for img in _split_images(data, root, split):
            h.update(f"{split}:{img.name}:{img.stat().st_size if img.exists() else -1}".encode())
            lp = _label_for(img)
            if lp.is_file():
                h.update(hashlib.sha256(lp.read_bytes()).digest())
    if init_weights:
        h.update(hashlib.sha256(Path(init_weights).read_bytes()).digest())
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def clean_log(text: str) -> str:
    """A training log as a person reads it: no ANSI colour codes, one line per progress bar (its final state).

    Ultralytics redraws its progress bars with carriage returns; a line holding several ``\\r``-separated
    states keeps only the last non-empty one.
    """
    out = []
    for line in _ANSI.sub("", text).split("\n"):
        parts = [p for p in line.split("\r") if p.strip()]
        out.append(parts[-1].rstrip() if parts else "")
    return "\n".join(out).strip("\n") + "\n"


def _log_clean_train_log(reg: Any, run_id: str, raw: Path) -> None:
    """Upload ``raw`` (the worker's stdout) cleaned by :func:`clean_log` as the run's ``logs/train.log``."""
    if not raw.is_file():
        return
    clean = raw.parent / "mlflow-logs" / "train.log"
    clean.parent.mkdir(parents=True, exist_ok=True)
    clean.write_text(clean_log(raw.read_text(errors="replace")))
    reg.log_artifact(run_id, clean, "logs")


def run_description(bootstrap: bool, arch: str | None, tags: dict[str, str], parent_version: str | None) -> str:
    """The run's description (``mlflow.note.content``, markdown): what was trained, from what, and links back."""
    what = (f"Bootstrap of `{arch}` from scratch" if bootstrap
            else f"Fine-tune of champion v{parent_version}" + (f" (`{arch}`)" if arch else ""))
    lines = [f"{what} on dataset version `{tags.get('detloop.dataset_version') or '-'}`."]
    if tags.get("detloop.round_id"):
        link = tags.get("detloop.label_studio_round_url")
        lines.append(f"Labels: round `{tags['detloop.round_id']}`" + (f" ([Label Studio]({link}))" if link else "") + ".")
    if tags.get("detloop.prefect.flow_run_url"):
        lines.append(f"Started by Prefect flow run [{tags.get('detloop.prefect.flow_run_name') or 'run'}]"
                     f"({tags['detloop.prefect.flow_run_url']}).")
    lines.append("Plots: `plots/` (curves; after the gate: confusion matrix, PR curves, golden frames). "
                 "Log: `logs/train.log`.")
    return "\n\n".join(lines)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def read_results_csv(path: Path) -> list[dict[str, float]]:
    """Rows of Ultralytics' ``results.csv`` as floats (keys stripped)."""
    if not path.is_file():
        return []
    rows = []
    with path.open() as f:
        for row in csv.DictReader(f):
            clean = {}
            for k, v in row.items():
                try:
                    clean[k.strip()] = float(v)
                except (TypeError, ValueError):
                    continue
            rows.append(clean)
    return rows


def plot_curves(rows: list[dict[str, float]], out_png: Path) -> Path:
    """Loss and mAP curves per epoch as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    ep = [r.get("epoch", i + 1) for i, r in enumerate(rows)]
    for key in ("train/box_loss", "train/cls_loss", "train/dfl_loss", "val/box_loss", "val/cls_loss"):
        if rows and key in rows[0]:
            axes[0].plot(ep, [r.get(key, float("nan")) for r in rows], label=key)
    for key in ("metrics/mAP50(B)", "metrics/mAP50-95(B)", "metrics/precision(B)", "metrics/recall(B)"):
        if rows and key in rows[0]:
            axes[1].plot(ep, [r.get(key, float("nan")) for r in rows], label=key)
    axes[0].set_title("losses")
    axes[1].set_title("validation metrics")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    return out_png


def cls_loss_params(cfg: Any) -> dict[str, Any]:
    """The classification-loss parameters a run is hashed and logged with (``training.cls_loss``).

    Empty for the default (plain BCE, no class weighting) so runs hashed before the option existed stay reusable.
    """
    out: dict[str, Any] = {}
    if cfg.kind != "bce":
        out.update({"cls_loss": cfg.kind, "cls_gamma": cfg.gamma, "cls_alpha": cfg.alpha})
    if cfg.cls_pw:
        out["cls_pw"] = cfg.cls_pw
    return out


def cls_loss_spec(cfg: Any) -> dict[str, Any]:
    """:class:`TrainSpec` keyword arguments for ``training.cls_loss``: the worker's loss config and ``cls_pw``."""
    out: dict[str, Any] = {}
    if cfg.kind != "bce":
        out["cls_loss"] = {"kind": cfg.kind, "gamma": cfg.gamma, "alpha": cfg.alpha}
    if cfg.cls_pw:
        out["extra"] = {"cls_pw": cfg.cls_pw}
    return out


def train_extra(tc: Any) -> dict[str, Any]:
    """:class:`TrainSpec` keyword arguments beyond the plain ones: the class loss (:func:`cls_loss_spec`) and, when
    configured, the warm-up's bias learning rate (``training.warmup_bias_lr``), through the worker's extra
    Ultralytics arguments. Empty for the defaults, so runs hashed before the options existed stay reusable."""
    out = cls_loss_spec(tc.cls_loss)
    if tc.warmup_bias_lr is not None:
        out["extra"] = {**out.get("extra", {}), "warmup_bias_lr": tc.warmup_bias_lr}
    return out


# --------------------------------------------------------------------------------------------
# Subprocess
# --------------------------------------------------------------------------------------------
@dataclass
class TrainSpec:
    """JSON spec passed to ``tasks.training_worker``."""

    data: str
    model: str
    pretrained: bool | str
    epochs: int
    imgsz: int
    batch: int
    nbs: int
    optimizer: str
    lr0: float
    workers: int
    threads: int
    device: str
    seed: int
    out_dir: str
    yolo_config_dir: str
    extra: dict[str, Any] = field(default_factory=dict)
    cls_loss: dict[str, Any] | None = None  # training.cls_loss when not plain BCE: {kind, gamma, alpha}


def run_worker(spec: TrainSpec, timeout_s: float, log_path: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run the training subprocess in its own process group; kill the group on timeout.

    Raises:
        TrainingError: non-zero exit or timeout, with the log path and its last lines.
    """
    out = Path(spec.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec_path = out / "spec.json"
    spec_path.write_text(json.dumps(asdict(spec), indent=2))
    (out / "result.json").unlink(missing_ok=True)
    penv = dict(os.environ if env is None else env)
    penv["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), penv.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    penv["YOLO_CONFIG_DIR"] = spec.yolo_config_dir
    penv["OMP_NUM_THREADS"] = str(spec.threads)
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tasks.training_worker", str(spec_path)],
            stdout=log, stderr=subprocess.STDOUT, env=penv, cwd=str(REPO_ROOT), start_new_session=True,
        )
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise TrainingError(f"training timed out after {timeout_s / 60:.1f} min (training.timeout_minutes); "
                                f"process group killed; log: {log_path}") from None
        except BaseException:
            _kill_group(proc)
            raise
    if rc != 0:
        tail = " | ".join(line.strip() for line in log_path.read_text(errors="replace").splitlines()[-3:])
        raise TrainingError(f"training subprocess exited with code {rc}; log: {log_path}; last lines: {tail}")
    return json.loads((out / "result.json").read_text())


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------
def train(
    data_yaml: str | Path,
    settings: Settings,
    registry: Any,
    init_weights: str | Path | None,
    run_name: str,
    tags: dict[str, str] | None = None,
    dataset_version: str | None = None,
    parent_version: str | None = None,
    epochs: int | None = None,
    *,
    store: Any,
) -> TrainResult:
    """Train a challenger (bootstrap when ``init_weights`` is None) and track it in MLflow.

    Args:
        data_yaml: Ultralytics dataset YAML (already materialized, oversampled if wanted).
        settings: loaded settings (classes, ``training.*``, ``model.arch`` / ``input_size``, MLflow).
        init_weights: champion ``.pt`` to fine-tune from; None trains ``model.arch`` from scratch.
        run_name: MLflow run name and local directory name.
        tags: extra run tags (e.g. ``round_id``).
        dataset_version: dataset version id (logged as tag and param).
        parent_version: registry version of the champion fine-tuned from.
        epochs: override of ``bootstrap_epochs`` / ``finetune_epochs``.
        registry: the model registry (:class:`~detloop.clients.protocols.ModelRegistry`) runs are tracked in.
        store: the object store holding the training lease (one training per model name on any host).

    Returns:
        :class:`TrainResult`.

    Raises:
        DataError: classes differ / too little data. TrainingError: crash or timeout.
        LockBusy: another training holds the training lease (the message says who, since when).
        ServiceError: MLflow unreachable (the message names its URL).
    """
    from tasks.registry import training_lock

    counts = check_dataset(data_yaml, settings.classes, settings.training.min_train_frames)
    with training_lock(settings, store) as held:
        return _train_locked(data_yaml, settings, init_weights, run_name, tags, dataset_version, parent_version,
                             epochs, registry, counts, held)


def _train_locked(
    data_yaml: str | Path, settings: Settings, init_weights: str | Path | None, run_name: str,
    tags: dict[str, str] | None, dataset_version: str | None, parent_version: str | None, epochs: int | None,
    registry: Any, counts: dict[str, int], held: Any,
) -> TrainResult:
    from detloop.model_arch import arch_source
    from detloop.offline import ensure_ultralytics_fonts, yolo_config_dir

    tc = settings.training
    bootstrap = init_weights is None
    n_epochs = int(epochs or (tc.bootstrap_epochs if bootstrap else tc.finetune_epochs))
    if not bootstrap and not epochs:
        n_epochs = bounded_epochs(n_epochs, counts["train"], tc.finetune_max_images)
    threads = tc.threads or os.cpu_count() or 1
    params: dict[str, Any] = {  # hashed: a finished run with the same inputs is reused
        "mode": "bootstrap" if bootstrap else "finetune",
        "epochs": n_epochs, "imgsz": settings.model.input_size, "batch": tc.batch, "nbs": tc.nbs,
        "optimizer": tc.optimizer, "lr0": tc.lr0 if bootstrap else tc.finetune_lr0, "seed": tc.seed,
        "classes": ",".join(settings.classes), "device": tc.device,
        **cls_loss_params(tc.cls_loss),
        **({"warmup_bias_lr": tc.warmup_bias_lr} if tc.warmup_bias_lr is not None else {}),
    }
    if bootstrap:  # a bootstrap of another family is another model (a fine-tune's family is its checkpoint's)
        params["arch"] = settings.model.arch
    ihash = input_hash(data_yaml, init_weights, params)
    reg = registry
    base = settings.data_dir / "training"
    run_dir = base / run_name
    all_tags = {
        "detloop.kind": "train",
        "detloop.input_hash": ihash,
        "detloop.dataset_version": dataset_version or "",
        "detloop.parent_version": parent_version or "",
        "detloop.bootstrap": str(bootstrap).lower(),
        "detloop.git_commit": git_commit(),
        **(tags or {}),
    }
    all_tags.setdefault("mlflow.source.git.commit", all_tags["detloop.git_commit"])
    all_tags.setdefault("mlflow.source.type", "LOCAL")
    all_tags.setdefault("mlflow.source.name", "detloop train")
    # a fine-tune's architecture is the champion's: the worker reads it from the checkpoint (logged after training)
    arch = settings.model.arch if bootstrap else None
    all_tags["mlflow.note.content"] = run_description(bootstrap, arch, all_tags, parent_version)
    # ---- idempotency: reuse a finished run with the same inputs ------------------------------
    for run in reg.find_runs(f"tags.`detloop.input_hash` = '{ihash}' and attributes.status = 'FINISHED'"):
        try:
            local = reg.download_run_artifact(run.info.run_id, "weights/best.pt", run_dir / "reused")
        except NotFound:  # a finished run without its weights (deleted artifacts): train again
            continue  # (MLflow or its artifact store down is ServiceUnavailable: it propagates, nothing retrains)
        metrics = {k: float(v) for k, v in run.data.metrics.items()}
        return TrainResult(run.info.run_id, Path(local), run_dir, metrics, 0.0, True, ihash, n_epochs, bootstrap,
                           dict(run.data.tags))
    # ---- train --------------------------------------------------------------------------------
    # a RUNNING run with these inputs lost its trainer (killed pod or flow): this one holds the training lease
    for run in reg.find_runs(f"tags.`detloop.input_hash` = '{ihash}' and attributes.status = 'RUNNING'"):
        reg.end_run(run.info.run_id, "KILLED")
    held.check()
    run_id = reg.create_run(run_name, all_tags)
    try:
        reg.log_params(run_id, {**params, **({"arch": arch} if bootstrap else {}),
                                "dataset_version": dataset_version or "", "parent_version":
                                parent_version or "", "train_frames": counts["train"], "val_frames": counts["val"],
                                "train_boxes": counts["train_boxes"], "threads": threads,
                                **({"finetune_epochs": tc.finetune_epochs, "finetune_max_images":
                                    tc.finetune_max_images} if not bootstrap and tc.finetune_max_images else {}),
                                "init_weights": Path(init_weights).name if init_weights else ""})
        ensure_ultralytics_fonts(settings)
        spec = TrainSpec(
            data=str(Path(data_yaml).resolve()),
            model=str(Path(init_weights).resolve()) if init_weights else arch_source(settings.model.arch),
            pretrained=str(Path(init_weights).resolve()) if init_weights else False,
            epochs=n_epochs, imgsz=settings.model.input_size, batch=tc.batch, nbs=tc.nbs,
            optimizer=tc.optimizer, lr0=params["lr0"], workers=tc.workers, threads=threads, device=tc.device,
            seed=tc.seed, out_dir=str(run_dir / "ul"), yolo_config_dir=str(yolo_config_dir(settings)),
            **train_extra(tc),
        )
        with writing(run_dir):
            run_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        result = run_worker(spec, tc.timeout_minutes * 60, run_dir / "train.log")
        wall = time.time() - t0
    except BaseException:
        try:
            _log_clean_train_log(reg, run_id, run_dir / "train.log")
        finally:
            reg.end_run(run_id, "FAILED")
        raise
    if not bootstrap:
        arch = str(result.get("arch") or settings.model.arch)
        reg.log_params(run_id, {"arch": arch})
        reg.set_run_tags(run_id, {"mlflow.note.content": run_description(bootstrap, arch, all_tags, parent_version)})
    rows = read_results_csv(Path(result["results_csv"]))  # (the worker wrote result.json whole, last)
    metric_rows = [(k, v, int(r.get("epoch", i + 1))) for i, r in enumerate(rows) for k, v in r.items()
                   if k != "epoch"]
    final = {k: v for k, v in (rows[-1].items() if rows else []) if k != "epoch"}
    metric_rows += [("train_seconds", result["train_seconds"], 0), ("wall_seconds", wall, 0)]
    reg.log_metrics(run_id, metric_rows)
    png = plot_curves(rows, run_dir / "curves.png")
    reg.log_artifact(run_id, png, "plots")
    best = Path(result["best"])
    if not best.is_file():  # no best.pt (e.g. no val improvement recorded): use last.pt under the same name
        import shutil

        shutil.copyfile(result["last"], best)
    reg.log_artifact(run_id, best, "weights")  # as weights/best.pt
    if Path(result["results_csv"]).is_file():
        reg.log_artifact(run_id, Path(result["results_csv"]), "logs")
    _log_clean_train_log(reg, run_id, run_dir / "train.log")
    held.check()  # a trainer whose lease was taken over does not mark its run reusable
    reg.end_run(run_id, "FINISHED")
    return TrainResult(run_id, best, run_dir, final, float(result["train_seconds"]), False, ihash, n_epochs,
                       bootstrap, all_tags)
