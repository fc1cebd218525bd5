"""Crowds and small objects (issue 17): soft-NMS and tiling against their plain baselines, with costs.

``python -m benchmarks.postprocessing`` (also ``detloop bench postprocessing``). One model, the same frames:

- **A (crowds)**: on the crowded slice (eval frames whose ground truth has two boxes with IoU >= 0.3,
  :func:`tasks.slices.is_crowded`), AP and AR of hard NMS vs Gaussian vs linear soft-NMS at input 320; and
  mAP on all eval frames, to show nothing else moved.
- **B (small objects)**: COCO small-object AP of the whole frame at 320, the whole frame at 640 (the 640
  export of the same weights), and tiling at 320 with and without the full-frame pass; each with CPU ms per
  frame (``time.process_time`` around :func:`tasks.evaluation.predict_items`, ONNX Runtime 1 thread, median
  of 3 runs interleaved across configurations on the same frames).

Every prediction goes through the real path: :func:`tasks.evaluation.predict_items` with settings loaded by
:func:`detloop.settings.load_settings` with ``model.nms`` / ``model.tiling`` overrides (the decode scoring and
the served model use). Every AP difference has a paired bootstrap 95 % interval over frames (the same
resampled frames for both configurations in each replicate).

Data: ``--data data.yaml`` (any YOLO dataset; ``train``/``seed`` trains the model unless ``--weights`` is
given, ``eval``/``test``/``val`` is evaluated) or, by default, frames rendered from the synthetic world.
The model: ``--weights best.pt`` or one YOLO model trained at 320 on the train split, cached by a content key.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import LEGACY_ARCH, arch_key_part, machine_info, utc_now, write_result
from benchmarks.al_data import BenchFrame

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
PLOT = REPO / "docs" / "img" / "postprocessing_small_ap_cost.png"


@dataclass
class BenchConfig:
    """What the benchmark runs on (the fields that change the model are in :meth:`model_key`)."""

    config: str = "configs/local.yaml"
    world_config: str = "configs/world.yaml"
    world_seed: int = 0
    data: str | None = None
    weights: str | None = None
    # world split sizes: the model trains on seed (pre-drift dates) + pool (production dates) frames, never on eval
    train_seed_frames: int = 100
    train_pool_frames: int = 100
    eval_frames: int = 300
    val_frames: int = 16
    epochs: int = 12
    imgsz: int = 320
    batch: int = 16
    lr0: float = 0.002
    train_threads: int = 1  # one torch thread: on a shared, loaded machine two threads spin at OMP barriers
    train_seed: int = 0
    tile: int = 320
    overlap: int = 64
    runs: int = 3
    bootstrap: int = 200
    bootstrap_seed: int = 0
    work_dir: str = ".detloop-bench/postprocessing"
    timeout_minutes: int = 60

    def world_sizes(self) -> dict[str, int]:
        return {"seed": self.train_seed_frames, "pool": self.train_pool_frames, "eval": self.eval_frames,
                "val": self.val_frames}


# --------------------------------------------------------------------------------------------
# Pure parts: the configurations, the paired bootstrap, the table
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PostConfig:
    """One post-processing configuration.

    Attributes:
        name: label in the table.
        input_size: model input of the artifact (the 320 or the 640 export of the same weights).
        model: the ``model`` settings overrides (``nms``, ``tiling``) given to ``load_settings``.
        bench: ``A`` (crowds) or ``B`` (small objects); the A baseline is also B's.
        baseline: name of the configuration its AP difference is measured against (None: it is a baseline).
    """

    name: str
    input_size: int
    model: dict[str, Any]
    bench: str
    baseline: str | None


def config_table(tile: int = 320, overlap: int = 64, small_size: int = 320, large_size: int = 640) -> list[PostConfig]:
    """The configurations of both benchmarks; ``hard@320`` is A's baseline and B's (``whole@320``)."""
    hard = {"nms": {"method": "hard"}, "tiling": {"enabled": False}}
    tiled = {"nms": {"method": "hard"}, "tiling": {"enabled": True, "tile": tile, "overlap": overlap}}
    base = f"hard@{small_size}"
    return [
        PostConfig(base, small_size, hard, "A", None),
        PostConfig(f"gaussian@{small_size}", small_size, {**hard, "nms": {"method": "gaussian"}}, "A", base),
        PostConfig(f"linear@{small_size}", small_size, {**hard, "nms": {"method": "linear"}}, "A", base),
        PostConfig(f"whole@{large_size}", large_size, hard, "B", base),
        PostConfig(f"tiles{tile}o{overlap}@{small_size}", small_size,
                   {**tiled, "tiling": {**tiled["tiling"], "full_frame": False}}, "B", base),
        PostConfig(f"tiles{tile}o{overlap}+full@{small_size}", small_size,
                   {**tiled, "tiling": {**tiled["tiling"], "full_frame": True}}, "B", base),
    ]


def paired_bootstrap(
    n: int, stat: Callable[[np.ndarray], np.ndarray], replicates: int, seed: int = 0
) -> np.ndarray:
    """Paired bootstrap over frames: ``(replicates, K)`` values of ``stat`` on resampled frame indices.

    Each replicate draws ``n`` frame indices with replacement once and evaluates every configuration on that
    same resample (``stat(idx) -> (K,)``), so differences between columns are paired.
    """
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(replicates):
        idx = rng.integers(0, n, size=n)
        out.append(np.asarray(stat(idx), np.float64))
    return np.asarray(out, np.float64).reshape(replicates, -1)


def delta_ci(reps: np.ndarray, col: int, base_col: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of ``reps[:, col] - reps[:, base_col]`` (replicates with an undefined AP skipped)."""
    d = reps[:, col] - reps[:, base_col]
    d = d[np.isfinite(d)]
    if d.size == 0:
        return float("nan"), float("nan")
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(d, [a, 1.0 - a])
    return float(lo), float(hi)


def _f(v: float | None, nd: int = 3) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.{nd}f}"


def _signed(v: float | None, nd: int = 3) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:+.{nd}f}"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The result rows as a Markdown table: config, slice, AP, AR, dAP [95 % CI], ms/frame, cost ratio.

    Each row has ``config``, ``slice``, ``ap``, ``ar``, ``delta`` (or None for a baseline), ``ci`` ([lo, hi] or
    None), ``ms_per_frame`` (or None) and ``cost_ratio`` (or None).
    """
    lines = ["| config | slice (frames) | AP50-95 | AR | ΔAP vs baseline [95 % CI] | CPU ms/frame | cost ratio |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if r.get("delta") is None:
            delta = "baseline"
        else:
            lo, hi = r["ci"]
            delta = f"{_signed(r['delta'])} [{_signed(lo)}, {_signed(hi)}]"
        ms = "" if r.get("ms_per_frame") is None else f"{r['ms_per_frame']:.1f}"
        ratio = "" if r.get("cost_ratio") is None else f"{r['cost_ratio']:.2f}x"
        lines.append(f"| {r['config']} | {r['slice']} | {_f(r['ap'])} | {_f(r['ar'])} | {delta} | {ms} | {ratio} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Data and model
# --------------------------------------------------------------------------------------------
def _file_key(paths: Sequence[str]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        st = Path(p).stat()
        h.update(f"{Path(p).name}|{st.st_size}\n".encode())
        lbl = Path(p).parent.parent.parent / "labels" / Path(p).parent.name / (Path(p).stem + ".txt")
        if lbl.is_file():
            h.update(lbl.read_bytes())
    return h.hexdigest()[:10]


@dataclass
class Prepared:
    """Train / eval frames, class names, and where the model and its artifacts are."""

    classes: list[str]
    train: list[BenchFrame]
    val: list[BenchFrame]
    eval: list[BenchFrame]
    root: Path
    source: dict[str, Any] = field(default_factory=dict)


def load_data(cfg: BenchConfig, classes: list[str], log: Callable[[str], None]) -> Prepared:
    """The world's splits (rendered under the work dir, reused by key) or a YOLO dataset's."""
    from benchmarks.al_data import frames_from_images, load_yolo_dataset, render_world
    from detloop.errors import DataError

    work = Path(cfg.work_dir)
    work = work if work.is_absolute() else REPO / work
    if cfg.data:
        import yaml

        y = Path(cfg.data)
        raw = yaml.safe_load(y.read_text()) or {}
        if "seed" in raw and "pool" in raw:  # the active-learning layout
            d = load_yolo_dataset(y)
            train, val, ev, classes_ = d.seed + d.pool, d.val, d.eval, d.classes
        else:  # plain Ultralytics layout: train / val (/ test)
            from tasks.training import _names_list, _split_images, read_data_yaml

            data, root = read_data_yaml(y)
            classes_ = _names_list(data.get("names"))
            ev_key = next((k for k in ("eval", "test", "val") if data.get(k)), None)
            if ev_key is None or not data.get("train"):
                raise DataError(f"{y}: needs a 'train' split and an 'eval', 'test' or 'val' split")
            ev = frames_from_images(_split_images(data, root, ev_key), len(classes_))
            train = frames_from_images(_split_images(data, root, "train"), len(classes_))
            val = (frames_from_images(_split_images(data, root, "val"), len(classes_)) if data.get("val")
                   and ev_key != "val" else train[: cfg.val_frames])
        if len(ev) > cfg.eval_frames:
            ev = ev[: cfg.eval_frames]
        key = _file_key([f.image for f in train] + [f.image for f in ev])
        return Prepared(classes_, train, val, ev, work / f"data-{key}", {"kind": "yolo", "data_yaml": str(y)})
    wc = Path(cfg.world_config)
    wc = wc if wc.is_absolute() else REPO / wc
    t0 = time.time()
    from benchmarks.al_data import world_key
    from detloop.world.config import load_world_config

    wkey = world_key(load_world_config(wc).model_dump(mode="json"), cfg.world_seed, cfg.world_sizes())
    root = work / f"world-{wkey}"
    d = render_world(root / "data", wc, classes, cfg.world_seed, cfg.world_sizes())
    log(f"world data ready in {time.time() - t0:.1f} s: {root / 'data'}")
    src = {k: v for k, v in d.source.items() if k != "world_params"}
    return Prepared(d.classes, d.seed + d.pool, d.val, d.eval, root, src)


def model_key(cfg: BenchConfig, prep: Prepared, arch: str = LEGACY_ARCH) -> str:
    """Content key of the trained model: training frames (files + labels), training parameters, model family."""
    params = {**{k: getattr(cfg, k) for k in ("epochs", "imgsz", "batch", "lr0", "train_seed")}, **arch_key_part(arch)}
    blob = json.dumps({"train": _file_key([f.image for f in prep.train]), "params": params}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def ensure_model(cfg: BenchConfig, prep: Prepared, settings: Any, log: Callable[[str], None]) -> tuple[Path, dict]:
    """The ``.pt`` weights: ``--weights``, or trained once (project's training worker, no MLflow) and cached."""
    from detloop.model_arch import arch_source
    from detloop.offline import apply_offline_env, ensure_ultralytics_fonts
    from tasks.training import TrainSpec, run_worker

    if cfg.weights:
        return Path(cfg.weights), {"weights": str(cfg.weights), "trained_here": False}
    key = model_key(cfg, prep, settings.model.arch)
    mdir = prep.root / f"model-{key}"
    done = mdir / "model.json"
    if done.is_file():
        info = json.loads(done.read_text())
        log(f"model reused: {info['weights']} (key {key})")
        return Path(info["weights"]), info
    apply_offline_env(settings)
    ensure_ultralytics_fonts(settings)
    from benchmarks.al import write_data_yaml

    y = write_data_yaml(mdir / "data.yaml", [f.image for f in prep.train], [f.image for f in prep.val], prep.classes)
    spec = TrainSpec(data=str(y), model=arch_source(settings.model.arch), pretrained=False, epochs=cfg.epochs, imgsz=cfg.imgsz,
                     batch=cfg.batch, nbs=cfg.batch, optimizer="AdamW", lr0=cfg.lr0, workers=2,
                     threads=cfg.train_threads, device="cpu", seed=cfg.train_seed, out_dir=str(mdir / "ul"),
                     yolo_config_dir=str(settings.data_dir / "ultralytics"))
    log(f"training {settings.model.arch} at {cfg.imgsz} on {len(prep.train)} frames, {cfg.epochs} epochs "
        f"(log {mdir / 'train.log'})")
    t0 = time.time()
    res = run_worker(spec, cfg.timeout_minutes * 60, mdir / "train.log")
    info = {"weights": str(res["last"]), "trained_here": True, "key": key, "arch": settings.model.arch,
            "train_frames": len(prep.train), "epochs": cfg.epochs, "imgsz": cfg.imgsz, "batch": cfg.batch,
            "lr0": cfg.lr0, "train_seconds": round(time.time() - t0, 1)}
    done.write_text(json.dumps(info, indent=1))
    log(f"trained in {info['train_seconds']:.0f} s")
    return Path(info["weights"]), info


def ensure_artifacts(weights: Path, classes: list[str], sizes: Sequence[int], root: Path) -> dict[int, Path]:
    """ONNX scoring artifacts of the same weights at each input size (exported once per weights file)."""
    from tasks.export import export_scoring_artifact

    st = weights.stat()
    wkey = hashlib.sha256(f"{weights.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:8]
    out = {}
    for s in sizes:
        d = root / f"artifact-{wkey}-{s}"
        if not (d / "meta.json").is_file():
            export_scoring_artifact(weights, d, classes, s)
        out[s] = d
    return out


# --------------------------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------------------------
# The bootstrap re-scores every configuration on 200 resamples; compute_metrics (faster-coco-eval, ~0.8 s per call
# on 300 frames x 100 boxes) would take half an hour here. COCO matching is per image, so it is done once per
# configuration (:func:`coco_matches`) and each resample only re-accumulates with frame weights
# (:func:`coco_ap_ar`); the run checks that this equals compute_metrics on the full set.
IOU_THRS = np.linspace(0.5, 0.95, 10)
REC_THRS = np.linspace(0.0, 1.0, 101)
AREA = {"all": (0.0, 1e10), "small": (0.0, 32.0**2)}


@dataclass
class ClassMatches:
    """COCO matches of one class and area range over all frames, in COCO's accumulation order.

    Attributes:
        img: ``(D,)`` frame index of each detection.
        score: ``(D,)`` confidence, sorted descending (stable over frame order).
        tp: ``(T, D)`` matched to a non-ignored ground-truth box at IoU threshold t.
        ig: ``(T, D)`` ignored (matched to an ignored box, or unmatched and outside the area range).
        npig: ``(F,)`` non-ignored ground-truth boxes per frame.
    """

    img: np.ndarray
    score: np.ndarray
    tp: np.ndarray
    ig: np.ndarray
    npig: np.ndarray


def _iou_xyxy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def coco_matches(gts: Sequence[Any], preds: Sequence[Any], num_classes: int, area: tuple[float, float],
                 max_det: int = 100) -> list[ClassMatches]:
    """Per class, COCO's per-image matching (``evaluateImg``: greedy by score, non-ignored boxes first, IoU >=
    each threshold, ``max_det`` detections per image and class) of ``preds`` against ``gts`` (frame pixels)."""
    lo, hi = area
    T = len(IOU_THRS)
    out = []
    for k in range(num_classes):
        imgs, scores, tps, igs = [], [], [], []
        npig = np.zeros(len(gts), np.int64)
        for i, (g, p) in enumerate(zip(gts, preds, strict=True)):
            gb = np.asarray(g.xyxy, np.float64)[g.class_id == k]
            g_area = (gb[:, 2] - gb[:, 0]) * (gb[:, 3] - gb[:, 1])
            g_ig = (g_area < lo) | (g_area > hi)
            order_g = np.argsort(g_ig, kind="mergesort")
            gb, g_ig = gb[order_g], g_ig[order_g]
            npig[i] = int((~g_ig).sum())
            sel = p.class_id == k
            db = np.asarray(p.xyxy, np.float64)[sel]
            ds = np.asarray(p.confidence, np.float64)[sel]
            order_d = np.argsort(-ds, kind="mergesort")[:max_det]
            db, ds = db[order_d], ds[order_d]
            nd = len(ds)
            if nd == 0:
                continue
            tp = np.zeros((T, nd), bool)
            ig = np.zeros((T, nd), bool)
            matched_any = np.zeros((T, nd), bool)
            if len(gb):
                ious = _iou_xyxy(db, gb)
                for t, thr in enumerate(IOU_THRS):
                    gtm = np.zeros(len(gb), bool)
                    for d in range(nd):
                        best, m = min(thr, 1 - 1e-10), -1
                        for j in range(len(gb)):
                            if gtm[j]:
                                continue
                            if m > -1 and not g_ig[m] and g_ig[j]:
                                break
                            if ious[d, j] < best:
                                continue
                            best, m = ious[d, j], j
                        if m == -1:
                            continue
                        gtm[m] = True
                        matched_any[t, d] = True
                        ig[t, d] = g_ig[m]
                        tp[t, d] = not g_ig[m]
            d_area = (db[:, 2] - db[:, 0]) * (db[:, 3] - db[:, 1])
            ig |= ~matched_any & ((d_area < lo) | (d_area > hi))[None, :]
            imgs.append(np.full(nd, i))
            scores.append(ds)
            tps.append(tp)
            igs.append(ig)
        if scores:
            img, score = np.concatenate(imgs), np.concatenate(scores)
            tp, ig = np.concatenate(tps, axis=1), np.concatenate(igs, axis=1)
            order = np.argsort(-score, kind="mergesort")
            out.append(ClassMatches(img[order], score[order], tp[:, order], ig[:, order], npig))
        else:
            out.append(ClassMatches(np.zeros(0, np.int64), np.zeros(0), np.zeros((T, 0), bool),
                                    np.zeros((T, 0), bool), npig))
    return out


def coco_ap_ar(matches: Sequence[ClassMatches], weight: np.ndarray | None = None) -> tuple[float, float]:
    """COCO AP50-95 and AR@100 (means over IoU thresholds and classes with ground truth; nan if none) of frames
    counted ``weight`` times each (``(F,)`` ints; None: once each). Equals COCO's ``accumulate`` on the frame
    list in which frame i appears ``weight[i]`` times."""
    precs, recs = [], []
    for m in matches:
        w = np.ones(len(m.npig), np.int64) if weight is None else np.asarray(weight, np.int64)
        npig = int((m.npig * w).sum())
        if npig == 0:
            continue
        dw = w[m.img]
        keep = dw > 0
        dw = dw[keep].astype(np.float64)
        tp_c = np.cumsum((m.tp[:, keep] & ~m.ig[:, keep]) * dw, axis=1)
        fp_c = np.cumsum((~m.tp[:, keep] & ~m.ig[:, keep]) * dw, axis=1)
        for t in range(len(IOU_THRS)):
            if tp_c.shape[1] == 0:
                precs.append(np.zeros(len(REC_THRS)))
                recs.append(0.0)
                continue
            rc = tp_c[t] / npig
            pr = tp_c[t] / (fp_c[t] + tp_c[t] + np.spacing(1))
            pr = np.maximum.accumulate(pr[::-1])[::-1]
            idx = np.searchsorted(rc, REC_THRS, side="left")
            q = np.zeros(len(REC_THRS))
            ok = idx < len(pr)
            q[ok] = pr[idx[ok]]
            precs.append(q)
            recs.append(float(rc[-1]))
    if not precs:
        return float("nan"), float("nan")
    return float(np.mean(precs)), float(np.mean(recs))


def metrics_stat(gts: Sequence[Any], preds: Sequence[Sequence[Any]], num_classes: int
                 ) -> Callable[[np.ndarray], np.ndarray]:
    """``stat(idx) -> (4 K,)``: mAP, AR, small AP, small AR of each of K configurations on frames ``idx``
    (indices with repeats: a bootstrap resample)."""
    per = [(coco_matches(gts, p, num_classes, AREA["all"]), coco_matches(gts, p, num_classes, AREA["small"]))
           for p in preds]

    def stat(idx: np.ndarray) -> np.ndarray:
        w = np.bincount(np.asarray(idx, np.int64), minlength=len(gts))
        out: list[float] = []
        for m_all, m_small in per:
            out += [*coco_ap_ar(m_all, w), *coco_ap_ar(m_small, w)]
        return np.asarray(out)

    return stat


def verdict(lo: float, hi: float) -> str:
    """``wins`` (CI above 0), ``loses`` (below 0) or ``noise`` (CI contains 0)."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "n/a"
    return "wins" if lo > 0 else "loses" if hi < 0 else "noise"


def plot_small(rows: Sequence[dict[str, Any]], png: Path, title: str) -> None:
    """Small-object AP (95 % bootstrap CI) against CPU ms per frame (min-max of the runs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, r in enumerate(rows):
        x, y = r["ms_per_frame"], r["small_ap"]
        lo, hi = r["small_ap_ci"]
        ax.errorbar([x], [y], yerr=[[y - lo], [hi - y]],
                    xerr=[[x - r["ms_runs"][0]], [r["ms_runs"][1] - x]], fmt="o", capsize=4, label=r["config"])
        ax.annotate(r["config"], (x, y), textcoords="offset points", xytext=(6, 6 if i % 2 == 0 else -14), fontsize=8)
    ax.set_xlabel("CPU ms per frame (1 ONNX Runtime thread; median of runs, bars min-max)")
    ax.set_ylabel("small-object AP50-95 (bars: 95 % bootstrap CI)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def run(cfg: BenchConfig, out: Path, png: Path, log: Callable[[str], None] = print, command: str | None = None
        ) -> dict[str, Any]:
    """Prepare data and model, predict with every configuration (timed, interleaved), bootstrap, write."""
    from detloop.settings import load_settings
    from detloop.tiling import tile_grid
    from tasks.evaluation import EvalItem, compute_metrics, predict_items
    from tasks.slices import is_crowded

    t_start = time.time()
    cfg_path = Path(cfg.config) if Path(cfg.config).is_absolute() else REPO / cfg.config
    base_settings = load_settings(cfg_path)
    prep = load_data(cfg, list(base_settings.classes), log)
    weights, model_info = ensure_model(cfg, prep, base_settings, log)
    table = config_table(cfg.tile, cfg.overlap, cfg.imgsz, 2 * cfg.imgsz)
    arts = ensure_artifacts(weights, prep.classes, sorted({c.input_size for c in table}), prep.root)
    items = [EvalItem(f.image, f.truth, f.camera) for f in prep.eval]
    gts = [f.truth for f in prep.eval]
    settings = {c.name: load_settings(cfg_path, overrides={"model": c.model, "training": {"threads": 1}})
                for c in table}
    log(f"{len(items)} eval frames; configurations: {', '.join(c.name for c in table)}")

    t_pred = time.time()
    for c in table:  # warm-up (sessions, page cache)
        predict_items(arts[c.input_size], items[:4], settings[c.name])
    preds: dict[str, list[Any]] = {}
    ms: dict[str, list[float]] = {c.name: [] for c in table}
    for r in range(cfg.runs):
        for c in table if r % 2 == 0 else table[::-1]:
            t0 = time.process_time()
            p = predict_items(arts[c.input_size], items, settings[c.name])
            ms[c.name].append((time.process_time() - t0) * 1000.0 / len(items))
            preds.setdefault(c.name, p)
        log(f"run {r + 1}/{cfg.runs}: " + ", ".join(f"{k} {v[-1]:.1f} ms" for k, v in ms.items()))
    pred_seconds = time.time() - t_pred

    crowded = [i for i, g in enumerate(gts) if is_crowded(g)]
    names = [c.name for c in table]
    a_names = [c.name for c in table if c.bench == "A"]
    full = {n: compute_metrics("eval", gts, preds[n], prep.classes, min_instances=1) for n in names}
    crowd = {n: compute_metrics("crowded", [gts[i] for i in crowded], [preds[n][i] for i in crowded], prep.classes,
                                min_instances=1) for n in a_names}

    t_boot = time.time()
    log(f"bootstrap: {cfg.bootstrap} replicates over {len(items)} frames and over {len(crowded)} crowded frames")
    stat_all = metrics_stat(gts, [preds[n] for n in names], len(prep.classes))
    once = stat_all(np.arange(len(gts)))  # every frame once: must equal compute_metrics
    check_diff = max(max(abs(once[4 * j] - (full[n].overall.map or 0.0)), abs(once[4 * j + 1] - (full[n].overall.ar or 0.0)),
                         abs(once[4 * j + 2] - (full[n].per_size["small"].map or 0.0)))
                     for j, n in enumerate(names))
    log(f"bootstrap AP vs compute_metrics on all frames: max |diff| {check_diff:.2e}")
    reps_all = paired_bootstrap(len(items), stat_all,
                                cfg.bootstrap, cfg.bootstrap_seed)
    cg = [gts[i] for i in crowded]
    reps_crowd = paired_bootstrap(len(crowded), metrics_stat(cg, [[preds[n][i] for i in crowded] for n in a_names],
                                                             len(prep.classes)), cfg.bootstrap, cfg.bootstrap_seed + 1)
    boot_seconds = time.time() - t_boot

    def col(names_: list[str], n: str, k: int) -> int:  # k: 0 mAP, 1 AR, 2 small AP, 3 small AR
        return 4 * names_.index(n) + k

    base = table[0].name
    med = {n: float(np.median(v)) for n, v in ms.items()}
    n_small = int(sum(int((g.area <= 32.0**2).sum()) for g in gts))
    tiles = [len(tile_grid(f.width, f.height, cfg.tile, cfg.overlap, False)) for f in prep.eval]
    configs: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for c in table:
        n = c.name
        d: dict[str, Any] = {"bench": c.bench, "input_size": c.input_size, "model_overrides": c.model,
                             "baseline": c.baseline, "ms_per_frame": round(med[n], 2),
                             "ms_runs": [round(x, 2) for x in ms[n]], "cost_ratio": round(med[n] / med[base], 3),
                             "eval": asdict(full[n].overall), "small": asdict(full[n].per_size["small"]),
                             "medium": asdict(full[n].per_size["medium"]), "large": asdict(full[n].per_size["large"])}
        for slice_name, reps, nm, k in (("eval", reps_all, names, 0), ("small", reps_all, names, 2),
                                        *((("crowded", reps_crowd, a_names, 0),) if n in a_names else ())):
            lo, hi = np.quantile(reps[:, col(nm, n, k)][np.isfinite(reps[:, col(nm, n, k)])], [0.025, 0.975])
            d.setdefault("ap_ci", {})[slice_name] = [round(float(lo), 4), round(float(hi), 4)]
            if c.baseline is not None:
                dlo, dhi = delta_ci(reps, col(nm, n, k), col(nm, c.baseline, k))
                point = {"eval": lambda m: m.overall.map, "small": lambda m: m.per_size["small"].map,
                         "crowded": lambda m: m.overall.map}[slice_name]
                src = crowd if slice_name == "crowded" else full
                delta = point(src[n]) - point(src[c.baseline])
                d.setdefault("delta_ap", {})[slice_name] = {"delta": round(delta, 4), "ci": [round(dlo, 4),
                                                            round(dhi, 4)], "verdict": verdict(dlo, dhi)}
                if slice_name == "crowded":
                    alo, ahi = delta_ci(reps, col(nm, n, 1), col(nm, c.baseline, 1))
                    d["delta_ar_crowded"] = {"delta": round(crowd[n].overall.ar - crowd[c.baseline].overall.ar, 4),
                                             "ci": [round(alo, 4), round(ahi, 4)], "verdict": verdict(alo, ahi)}
        if n in a_names:
            d["crowded"] = asdict(crowd[n].overall)
        configs[n] = d

    def row(n: str, slice_label: str, m: Any, key: str) -> dict[str, Any]:
        dd = configs[n].get("delta_ap", {}).get(key)
        return {"config": n, "slice": slice_label, "ap": m.map, "ar": m.ar, "delta": dd and dd["delta"],
                "ci": dd and dd["ci"], "ms_per_frame": med[n], "cost_ratio": med[n] / med[base]}

    for n in a_names:
        rows.append(row(n, f"A crowded ({len(crowded)})", crowd[n].overall, "crowded"))
    for n in a_names:
        rows.append(row(n, f"A all ({len(items)})", full[n].overall, "eval"))
    b_names = [base, *(c.name for c in table if c.bench == "B")]
    for n in b_names:
        rows.append(row(n, f"B small ({n_small} boxes)", full[n].per_size["small"], "small"))
    for n in b_names:
        rows.append(row(n, f"B all ({len(items)})", full[n].overall, "eval"))

    plot_rows = [{"config": n, "ms_per_frame": med[n], "ms_runs": [min(ms[n]), max(ms[n])],
                  "small_ap": full[n].per_size["small"].map, "small_ap_ci": configs[n]["ap_ci"]["small"]}
                 for n in b_names]
    plot_small(plot_rows, png, f"Small-object AP vs CPU cost ({len(items)} eval frames, {n_small} small boxes)")
    result = {
        "benchmark": "postprocessing", "issue": 17, "date": utc_now(),
        "command": command or "python -m benchmarks.postprocessing",
        "config": asdict(cfg), "data": prep.source | {"eval_frames": len(items), "crowded_frames": len(crowded),
                                                      "crowded_boxes": int(sum(len(gts[i]) for i in crowded)),
                                                      "eval_boxes": int(sum(len(g) for g in gts)),
                                                      "small_boxes": n_small, "train_frames": len(prep.train)},
        "model": model_info | {"artifacts": {str(k): str(v) for k, v in arts.items()}},
        "tiles_per_frame": {"mean": float(np.mean(tiles)), "min": int(min(tiles)), "max": int(max(tiles)),
                            "plus_full_frame": 1},
        "timing": {"clock": "time.process_time around predict_items (read + decode + ONNX Runtime 1 thread + NMS)",
                   "runs": cfg.runs, "interleaved": "order reversed every other run"},
        "verdicts": {n: d["delta_ap"]["crowded" if d["bench"] == "A" else "small"]["verdict"]
                     for n, d in configs.items() if d["baseline"] is not None},
        "configs": configs, "table": rows, "markdown": markdown_table(rows), "plot": str(png.relative_to(REPO))
        if png.is_relative_to(REPO) else str(png),
        "bootstrap_check_max_abs_diff_vs_compute_metrics": check_diff,
        "seconds": {"total": round(time.time() - t_start, 1), "predict_all_runs": round(pred_seconds, 1),
                    "bootstrap": round(boot_seconds, 1)},
        "machine": machine_info(),
    }
    return write_result(out, result)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = BenchConfig()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="YOLO data.yaml (train + eval/test/val splits) instead of the world")
    ap.add_argument("--weights", type=Path, help=".pt weights to evaluate (default: train one on the train split)")
    ap.add_argument("--config", "-c", default=cfg.config, help="detloop config (classes, model.arch)")
    ap.add_argument("--eval-frames", type=int, default=cfg.eval_frames, help="held-out evaluation frames")
    ap.add_argument("--train-frames", type=int, default=cfg.train_seed_frames + cfg.train_pool_frames,
                    help="world training frames (half pre-drift, half production dates)")
    ap.add_argument("--epochs", type=int, default=cfg.epochs)
    ap.add_argument("--world-seed", type=int, default=cfg.world_seed)
    ap.add_argument("--tile", type=int, default=cfg.tile, help="tile side (frame px)")
    ap.add_argument("--overlap", type=int, default=cfg.overlap, help="minimum tile overlap (frame px)")
    ap.add_argument("--runs", type=int, default=cfg.runs, help="timed runs per configuration (interleaved)")
    ap.add_argument("--bootstrap", type=int, default=cfg.bootstrap, help="bootstrap replicates")
    ap.add_argument("--work-dir", default=cfg.work_dir, help="cache of data, weights and artifacts")
    ap.add_argument("--out", type=Path, default=RESULTS / "postprocessing.json")
    ap.add_argument("--plot", type=Path, default=PLOT)
    a = ap.parse_args(argv)
    cfg.data = str(a.data.resolve()) if a.data else None
    cfg.weights = str(a.weights.resolve()) if a.weights else None
    cfg.config, cfg.eval_frames, cfg.epochs, cfg.world_seed = a.config, a.eval_frames, a.epochs, a.world_seed
    cfg.train_seed_frames = a.train_frames // 2
    cfg.train_pool_frames = a.train_frames - cfg.train_seed_frames
    cfg.tile, cfg.overlap, cfg.runs, cfg.bootstrap, cfg.work_dir = a.tile, a.overlap, a.runs, a.bootstrap, a.work_dir
    import shlex
    import sys

    args = sys.argv[1:] if argv is None else argv
    return run(cfg, a.out, a.plot, command=shlex.join(["python", "-m", "benchmarks.postprocessing", *args]))


if __name__ == "__main__":
    main()
