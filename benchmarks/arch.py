"""Model families (issue 20): YOLO11n vs YOLO26n (with NMS and NMS-free) vs a P2 variant, same world, same budget.

``python -m benchmarks.arch`` (also ``detloop bench arch``). Each family in ``--archs`` is trained from scratch
by the project's training worker on the same frames, with the same seed, epochs, image size, batch and learning
rate; a YOLO26 is then exported twice (its one-to-many head, decoded with the config's ``model.nms``, and its
one-to-one head, decoded by top-k: ``model.nms_free``). Every model is measured on the same held-out frames
through :func:`tasks.evaluation.predict_items` (the decode of scoring and serving):

- mAP50-95 and AR on all held-out frames, on the crowded slice (:func:`tasks.slices.is_crowded`), and COCO
  small-object AP, each difference against the first family with a paired bootstrap 95 % interval over frames
  (:func:`benchmarks.postprocessing.paired_bootstrap`: the same resampled frames for every model);
- CPU latency of the exported ONNX per frame (:func:`tasks.evaluation.measure_latency`: batch 1, one ONNX Runtime
  thread, the models timed in turn frame by frame, median of runs);
- training minutes per epoch (wall time of the training subprocess / epochs, one torch thread).

Data, the bootstrap, the COCO matching and the small-AP-against-cost plot are those of
:mod:`benchmarks.postprocessing` (issue 17), reused, not copied. Trained models and artifacts are cached by a
content key (training frames, parameters, arch): a re-run resumes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import machine_info, utc_now, write_result
from benchmarks.postprocessing import (
    BenchConfig,
    Prepared,
    _file_key,
    delta_ci,
    load_data,
    metrics_stat,
    paired_bootstrap,
    plot_small,
    verdict,
)

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
PLOT = REPO / "docs" / "img" / "arch_small_ap_cost.png"
DEFAULT_ARCHS = "yolo11n.yaml,yolo26n.yaml,yolo11n-p2.yaml"


@dataclass
class ArchBenchConfig(BenchConfig):
    """:class:`benchmarks.postprocessing.BenchConfig` (world, splits, training parameters) plus the families.

    The defaults fit the whole run (3 trainings from scratch, 4 exported models) in about 45 minutes on 2 shared
    cores: 120 training frames, 10 epochs at 320, 200 held-out frames.
    """

    archs: str = DEFAULT_ARCHS
    train_seed_frames: int = 60
    train_pool_frames: int = 60
    eval_frames: int = 200
    epochs: int = 10
    latency_frames: int = 40
    runs: int = 5
    work_dir: str = ".detloop-bench/arch"


@dataclass(frozen=True)
class Variant:
    """One measured model: a trained family exported with one head.

    Attributes:
        name: label in the table (``yolo26n NMS-free``).
        arch: ``model.arch``.
        head: ``one2many`` (decoded with ``model.nms``) or ``one2one`` (top-k, ``model.nms_free``).
    """

    name: str
    arch: str
    head: str


def variants(archs: Sequence[str]) -> list[Variant]:
    """The measured models: every family with its NMS head, and end-to-end families also NMS-free."""
    from detloop.model_arch import parse_arch

    out = []
    for a in archs:
        info = parse_arch(a)
        stem = a.removesuffix(".yaml")
        out.append(Variant(f"{stem} NMS" if info.end2end else stem, a, "one2many"))
        if info.end2end:
            out.append(Variant(f"{stem} NMS-free", a, "one2one"))
    return out


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """One row per model: AP of each slice with its paired difference to the baseline [95 % CI], latency, cost."""

    def cell(r: dict[str, Any], key: str) -> str:
        v = r[key]
        d = r.get(f"{key}_delta")
        if v is None or not np.isfinite(v):
            return "n/a"
        if d is None:
            return f"{v:.3f}"
        return f"{v:.3f} ({d['delta']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}])"

    lines = ["| model | mAP50-95 all | crowded AP | crowded AR | small AP | ONNX ms/frame | train min/epoch |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['model']} | {cell(r, 'map')} | {cell(r, 'crowded_ap')} | {cell(r, 'crowded_ar')} | "
                     f"{cell(r, 'small_ap')} | {r['ms_per_frame']:.1f} ({r['latency_ratio']:.2f}x) | "
                     f"{r['train_min_per_epoch']:.2f} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Training and export (cached)
# --------------------------------------------------------------------------------------------
def arch_model_key(cfg: ArchBenchConfig, prep: Prepared, arch: str) -> str:
    """Content key of a trained family: training frames, training parameters, arch."""
    params = {k: getattr(cfg, k) for k in ("epochs", "imgsz", "batch", "lr0", "train_seed", "train_threads")}
    blob = json.dumps({"train": _file_key([f.image for f in prep.train]), "params": params, "arch": arch},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def train_family(cfg: ArchBenchConfig, prep: Prepared, settings: Any, arch: str, log: Callable[[str], None]
                 ) -> dict[str, Any]:
    """Train ``arch`` from scratch with the project's training worker (no MLflow), or reuse the cached run."""
    from benchmarks.al import write_data_yaml
    from detloop.model_arch import arch_source
    from detloop.offline import apply_offline_env, ensure_ultralytics_fonts
    from tasks.training import TrainSpec, read_results_csv, run_worker

    key = arch_model_key(cfg, prep, arch)
    mdir = prep.root / f"model-{arch.removesuffix('.yaml')}-{key}"
    done = mdir / "model.json"
    if done.is_file():
        info = json.loads(done.read_text())
        log(f"{arch}: reused {info['weights']} ({info['train_seconds']:.0f} s of training)")
        return dict(info)
    apply_offline_env(settings)
    ensure_ultralytics_fonts(settings)
    y = write_data_yaml(mdir / "data.yaml", [f.image for f in prep.train], [f.image for f in prep.val], prep.classes)
    spec = TrainSpec(data=str(y), model=arch_source(arch), pretrained=False, epochs=cfg.epochs, imgsz=cfg.imgsz,
                     batch=cfg.batch, nbs=cfg.batch, optimizer="AdamW", lr0=cfg.lr0, workers=2,
                     threads=cfg.train_threads, device="cpu", seed=cfg.train_seed, out_dir=str(mdir / "ul"),
                     yolo_config_dir=str(settings.data_dir / "ultralytics"))
    log(f"training {arch} at {cfg.imgsz} on {len(prep.train)} frames, {cfg.epochs} epochs (log {mdir / 'train.log'})")
    t0 = time.time()
    res = run_worker(spec, cfg.timeout_minutes * 60, mdir / "train.log")
    rows = read_results_csv(Path(res["results_csv"]))
    info = {"arch": arch, "weights": str(res["last"]), "key": key, "train_frames": len(prep.train),
            "epochs": cfg.epochs, "imgsz": cfg.imgsz, "batch": cfg.batch, "lr0": cfg.lr0,
            "train_threads": cfg.train_threads, "train_seconds": round(float(res["train_seconds"]), 1),
            "wall_seconds": round(time.time() - t0, 1),
            "val_last_epoch": {k: v for k, v in (rows[-1].items() if rows else []) if k.startswith("metrics/")}}
    done.write_text(json.dumps(info, indent=1))
    log(f"{arch}: trained in {info['train_seconds']:.0f} s")
    return info


def export_variant(weights: Path, v: Variant, classes: list[str], size: int, root: Path) -> Path:
    """The scoring artifact of ``v`` (exported once per weights file and head)."""
    from tasks.export import export_scoring_artifact

    st = weights.stat()
    wkey = hashlib.sha256(f"{weights.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:8]
    d = root / f"artifact-{wkey}-{v.head}-{size}"
    if not (d / "meta.json").is_file():
        export_scoring_artifact(weights, d, classes, size, head=v.head)
    return d


# --------------------------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------------------------
def run(cfg: ArchBenchConfig, out: Path, png: Path, log: Callable[[str], None] = print, command: str | None = None
        ) -> dict[str, Any]:
    """Train every family, export, predict the held-out frames, time, bootstrap, write JSON + plot."""
    from detloop.settings import load_settings
    from tasks.evaluation import EvalItem, compute_metrics, measure_latency, predict_items
    from tasks.slices import is_crowded

    t_start = time.time()
    cfg_path = Path(cfg.config) if Path(cfg.config).is_absolute() else REPO / cfg.config
    base_settings = load_settings(cfg_path)
    prep = load_data(cfg, list(base_settings.classes), log)
    archs = [a.strip() for a in cfg.archs.split(",") if a.strip()]
    table = variants(archs)
    t_train = time.time()
    trained = {a: train_family(cfg, prep, base_settings, a, log) for a in archs}
    train_wall = time.time() - t_train
    arts = {v.name: export_variant(Path(trained[v.arch]["weights"]), v, prep.classes, cfg.imgsz, prep.root)
            for v in table}
    items = [EvalItem(f.image, f.truth, f.camera) for f in prep.eval]
    gts = [f.truth for f in prep.eval]
    settings = {v.name: load_settings(cfg_path, overrides={
        "model": {"arch": v.arch, "nms_free": v.head == "one2one", "input_size": cfg.imgsz,
                  "tiling": {"enabled": False, "cameras": {}}}, "training": {"threads": 1}}) for v in table}
    log(f"{len(items)} held-out frames; models: {', '.join(v.name for v in table)}")

    t_pred = time.time()
    preds = {v.name: predict_items(arts[v.name], items, settings[v.name]) for v in table}
    pred_seconds = time.time() - t_pred
    t_lat = time.time()
    frames = [f.image for f in prep.eval[: cfg.latency_frames]]
    ms: dict[str, list[float]] = {v.name: [] for v in table}
    for r in range(cfg.runs):  # interleaved: every model once per run, the order reversed every other run
        order = table if r % 2 == 0 else table[::-1]
        for v, t in zip(order, measure_latency([arts[v.name] for v in order], frames, rounds=1, threads=1),
                        strict=True):
            ms[v.name].append(t)
        log(f"latency run {r + 1}/{cfg.runs}: " + ", ".join(f"{k} {x[-1]:.1f} ms" for k, x in ms.items()))
    lat_seconds = time.time() - t_lat

    names = [v.name for v in table]
    crowded = [i for i, g in enumerate(gts) if is_crowded(g)]
    full = {n: compute_metrics("eval", gts, preds[n], prep.classes, min_instances=1) for n in names}
    crowd = {n: compute_metrics("crowded", [gts[i] for i in crowded], [preds[n][i] for i in crowded], prep.classes,
                                min_instances=1) for n in names}
    t_boot = time.time()
    stat_all = metrics_stat(gts, [preds[n] for n in names], len(prep.classes))
    once = stat_all(np.arange(len(gts)))
    check_diff = max(max(abs(once[4 * j] - (full[n].overall.map or 0.0)),
                         abs(once[4 * j + 2] - (full[n].per_size["small"].map or 0.0))) for j, n in enumerate(names))
    reps_all = paired_bootstrap(len(gts), stat_all, cfg.bootstrap, cfg.bootstrap_seed)
    reps_crowd = paired_bootstrap(len(crowded), metrics_stat([gts[i] for i in crowded],
                                                             [[preds[n][i] for i in crowded] for n in names],
                                                             len(prep.classes)), cfg.bootstrap, cfg.bootstrap_seed + 1)
    boot_seconds = time.time() - t_boot

    base = names[0]
    med = {n: float(np.median(v)) for n, v in ms.items()}
    metrics = {  # key -> (replicates, column offset, point value)
        "map": (reps_all, 0, lambda n: full[n].overall.map),
        "small_ap": (reps_all, 2, lambda n: full[n].per_size["small"].map),
        "crowded_ap": (reps_crowd, 0, lambda n: crowd[n].overall.map),
        "crowded_ar": (reps_crowd, 1, lambda n: crowd[n].overall.ar),
    }
    rows: list[dict[str, Any]] = []
    for j, v in enumerate(table):
        info = trained[v.arch]
        r: dict[str, Any] = {"model": v.name, "arch": v.arch, "head": v.head,
                             "decode": "top-k (no NMS)" if v.head == "one2one" else
                             f"{settings[v.name].model.nms.method} NMS",
                             "ms_per_frame": round(med[v.name], 2), "ms_runs": [round(x, 2) for x in ms[v.name]],
                             "latency_ratio": round(med[v.name] / med[base], 3),
                             "train_min_per_epoch": round(info["train_seconds"] / info["epochs"] / 60.0, 3),
                             "train_seconds": info["train_seconds"], "val_last_epoch": info.get("val_last_epoch"),
                             "small": asdict(full[v.name].per_size["small"]), "eval": asdict(full[v.name].overall),
                             "crowded": asdict(crowd[v.name].overall), "ap_ci": {}}
        for key, (reps, k, point) in metrics.items():
            r[key] = point(v.name)
            c = reps[:, 4 * j + k]
            c = c[np.isfinite(c)]
            r["ap_ci"][key] = [round(float(q), 4) for q in np.quantile(c, [0.025, 0.975])] if c.size else None
            if v.name != base:
                lo, hi = delta_ci(reps, 4 * j + k, 4 * names.index(base) + k)
                b = point(base)
                delta = (r[key] - b) if r[key] is not None and b is not None else float("nan")
                r[f"{key}_delta"] = {"delta": round(delta, 4), "ci": [round(lo, 4), round(hi, 4)],
                                     "verdict": verdict(lo, hi)}
        rows.append(r)

    plot_rows = [{"config": r["model"], "ms_per_frame": r["ms_per_frame"], "ms_runs": [min(r["ms_runs"]),
                  max(r["ms_runs"])], "small_ap": r["small_ap"], "small_ap_ci": r["ap_ci"]["small_ap"]} for r in rows]
    n_small = int(sum(int((g.area <= 32.0**2).sum()) for g in gts))
    plot_small(plot_rows, png, f"Model families: small-object AP vs ONNX CPU ms/frame\n({len(items)} held-out frames, "
                               f"{n_small} small boxes; {cfg.epochs} epochs from scratch, training seed {cfg.train_seed})")
    result = {
        "benchmark": "arch", "issue": 20, "date": utc_now(), "command": command or "python -m benchmarks.arch",
        "config": asdict(cfg),
        "budget": {"train_frames": len(prep.train), "epochs": cfg.epochs, "imgsz": cfg.imgsz, "batch": cfg.batch,
                   "lr0": cfg.lr0, "optimizer": "AdamW", "train_seed": cfg.train_seed,
                   "train_threads": cfg.train_threads, "same_for_every_family": True},
        "data": prep.source | {"eval_frames": len(items), "crowded_frames": len(crowded),
                               "eval_boxes": int(sum(len(g) for g in gts)), "small_boxes": n_small},
        "trained": trained, "artifacts": {k: str(v) for k, v in arts.items()},
        "rows": rows, "markdown": markdown_table(rows),
        "verdicts": {r["model"]: {k: r[f"{k}_delta"]["verdict"] for k in metrics} for r in rows if r["model"] != base},
        "timing": {"latency": f"tasks.evaluation.measure_latency: batch 1, 1 ONNX Runtime thread, {len(frames)} "
                              f"frames, {cfg.runs} runs, the models in turn frame by frame, median",
                   "training": "wall time of the training subprocess / epochs, 1 torch thread"},
        "plot": str(png.relative_to(REPO)) if png.is_relative_to(REPO) else str(png),
        "bootstrap_check_max_abs_diff_vs_compute_metrics": check_diff,
        "seconds": {"total": round(time.time() - t_start, 1), "training": round(train_wall, 1),
                    "predict": round(pred_seconds, 1), "latency": round(lat_seconds, 1),
                    "bootstrap": round(boot_seconds, 1)},
        "machine": machine_info(),
    }
    return write_result(out, result)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = ArchBenchConfig()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default=cfg.archs, help="comma-separated model.arch values; the first is the baseline")
    ap.add_argument("--data", type=Path, help="YOLO data.yaml (train + eval/test/val splits) instead of the world")
    ap.add_argument("--config", "-c", default=cfg.config, help="detloop config (classes, model.nms)")
    ap.add_argument("--eval-frames", type=int, default=cfg.eval_frames, help="held-out evaluation frames")
    ap.add_argument("--train-frames", type=int, default=cfg.train_seed_frames + cfg.train_pool_frames,
                    help="world training frames (half pre-drift, half production dates)")
    ap.add_argument("--epochs", type=int, default=cfg.epochs, help="epochs from scratch, the same for every family")
    ap.add_argument("--world-seed", type=int, default=cfg.world_seed)
    ap.add_argument("--train-seed", type=int, default=cfg.train_seed)
    ap.add_argument("--latency-frames", type=int, default=cfg.latency_frames)
    ap.add_argument("--runs", type=int, default=cfg.runs, help="interleaved latency runs")
    ap.add_argument("--bootstrap", type=int, default=cfg.bootstrap, help="bootstrap replicates")
    ap.add_argument("--work-dir", default=cfg.work_dir, help="cache of data, weights and artifacts")
    ap.add_argument("--out", type=Path, default=RESULTS / "arch.json")
    ap.add_argument("--plot", type=Path, default=PLOT)
    a = ap.parse_args(argv)
    cfg.archs, cfg.config, cfg.eval_frames, cfg.epochs = a.archs, a.config, a.eval_frames, a.epochs
    cfg.data = str(a.data.resolve()) if a.data else None
    cfg.world_seed, cfg.train_seed, cfg.latency_frames, cfg.runs = a.world_seed, a.train_seed, a.latency_frames, a.runs
    cfg.train_seed_frames = a.train_frames // 2
    cfg.train_pool_frames = a.train_frames - cfg.train_seed_frames
    cfg.bootstrap, cfg.work_dir = a.bootstrap, a.work_dir
    import shlex
    import sys

    args = sys.argv[1:] if argv is None else argv
    return run(cfg, a.out, a.plot, command=shlex.join(["python", "-m", "benchmarks.arch", *args]))


if __name__ == "__main__":
    main()
