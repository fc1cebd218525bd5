"""Imbalance-aware loss and offline test-time augmentation (issue 19), each against its plain baseline.

``python -m benchmarks loss-tta`` (also ``detloop bench loss-tta``). One champion (the issue 17 benchmark's model:
YOLO11n trained 12 epochs at 320 on 200 world frames, or ``--weights``), the same held-out frames:

- **loss**: the champion fine-tuned on the same labelled frames for the same epochs with each classification loss
  (``training.cls_loss``: plain BCE, focal, varifocal, BCE + Ultralytics' ``cls_pw`` class weighting), through the
  project's training worker; rare-class AP, small-object AP and mAP50-95 on the eval frames, each arm's difference
  to BCE with a paired bootstrap 95 % interval over frames (arms averaged over their seeds in each replicate).
- **tta**: the champion exported with dynamic height and width, evaluated plain and with ``model.tta`` (flip +
  scales, merged by ``model.nms``) under hard NMS, linear soft-NMS and box voting (``weighted``); mAP and
  per-slice AP (small, crowded, rare class) with paired intervals, CPU time ratio (``time.process_time`` around
  :func:`tasks.evaluation.predict_items`, ONNX Runtime 1 thread, interleaved runs in this process), and the
  labeller's edits of the pre-annotation (boxes at ``label_studio.prediction_conf_threshold``): wrong class,
  IoU < 0.5 to the truth box (redraw), spurious, missing (:func:`annotation_edits`).

Predictions go through the real path (:func:`tasks.evaluation.predict_items`, settings from
:func:`detloop.settings.load_settings` with overrides). Fine-tunes, artifacts and predictions are cached under the
work dir, so a re-run resumes.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import machine_info, utc_now, write_result

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"

LOSS_ARMS: dict[str, dict[str, Any]] = {
    "bce": {},
    "focal": {"kind": "focal", "gamma": 2.0, "alpha": 0.25},
    "varifocal": {"kind": "varifocal", "gamma": 2.0, "alpha": 0.75},
    "cls_pw": {"cls_pw": 0.5},
}
TTA_CONFIGS: dict[str, dict[str, Any]] = {
    "plain-hard": {"nms": {"method": "hard"}, "tta": {"evaluation": False}},
    "tta-hard": {"nms": {"method": "hard"}, "tta": {"evaluation": True, "scales": [1.0, 0.83, 0.67], "flip": True}},
    "plain-linear": {"nms": {"method": "linear"}, "tta": {"evaluation": False}},
    "tta-linear": {"nms": {"method": "linear"}, "tta": {"evaluation": True, "scales": [1.0, 0.83, 0.67],
                                                        "flip": True}},
    "plain-weighted": {"nms": {"method": "weighted"}, "tta": {"evaluation": False}},
    "tta-weighted": {"nms": {"method": "weighted"}, "tta": {"evaluation": True, "scales": [1.0, 0.83, 0.67],
                                                            "flip": True}},
}


@dataclass
class Config:
    """What the benchmark runs (the champion and data come from :mod:`benchmarks.postprocessing`'s helpers)."""

    config: str = "configs/local.yaml"
    weights: str | None = None
    data: str | None = None
    eval_frames: int = 300
    work_dir: str = ".detloop-bench/loss_tta"
    parts: list[str] = field(default_factory=lambda: ["loss", "tta"])
    arms: list[str] = field(default_factory=lambda: list(LOSS_ARMS))
    seeds: list[int] = field(default_factory=lambda: [0])
    finetune_epochs: int = 1
    # the champion ended its training at lr ~0.0002; a fresh AdamW at detloop's 0.001 without warmup wrecked it in one
    # epoch here (val mAP50-95 0.42 -> 0.02), and Ultralytics' warmup (>= 100 iterations, bias lr 0.1) is longer
    # than a short fine-tune: continue at the champion's final rate, no warmup
    finetune_lr0: float = 0.0002
    threads: int = 1
    runs: int = 2
    bootstrap: int = 200
    bootstrap_seed: int = 0


# --------------------------------------------------------------------------------------------
# Pure parts
# --------------------------------------------------------------------------------------------
EDIT_KINDS = ("wrong_class", "redraw", "spurious", "missing")


def annotation_edits(truth: Any, pre: Any, iou_ok: float = 0.5, iou_touch: float = 0.1) -> dict[str, int]:
    """What a labeller has to fix in one frame's pre-annotation.

    Pre-annotation boxes, by descending confidence, take the free truth box they overlap most (class-agnostic):
    IoU >= ``iou_ok`` is right (same class) or ``wrong_class``; ``iou_touch`` <= IoU < ``iou_ok`` must be redrawn
    (``redraw``; the truth box counts as found); below ``iou_touch`` it is ``spurious`` (deleted). Truth boxes no
    pre-annotation box took are ``missing`` (drawn from scratch).

    Args:
        truth, pre: :class:`detloop.detections.Detections` in frame pixels.

    Returns:
        ``{"boxes": n_pre, "truth": n_truth, "ok", "wrong_class", "redraw", "spurious", "missing"}``.
    """
    from detloop.ops import box_iou

    out = {"boxes": len(pre), "truth": len(truth), "ok": 0, "wrong_class": 0, "redraw": 0, "spurious": 0}
    free = np.ones(len(truth), bool)
    ious = box_iou(pre.xyxy, truth.xyxy) if len(pre) and len(truth) else np.zeros((len(pre), len(truth)))
    for i in np.argsort(-np.asarray(pre.confidence), kind="stable"):
        cand = np.where(free, ious[i], -1.0) if len(truth) else np.zeros(0)
        j = int(np.argmax(cand)) if cand.size else -1
        best = float(cand[j]) if j >= 0 else 0.0
        if best >= iou_ok:
            out["ok" if int(pre.class_id[i]) == int(truth.class_id[j]) else "wrong_class"] += 1
            free[j] = False
        elif best >= iou_touch:
            out["redraw"] += 1
            free[j] = False
        else:
            out["spurious"] += 1
    out["missing"] = int(free.sum())
    return out


def edits_summary(edits: Sequence[dict[str, int]]) -> dict[str, float]:
    """Totals and shares: ``fix_share`` = share of pre-annotation boxes a labeller changes or deletes;
    ``missing_share`` = share of truth boxes drawn from scratch; ``edits_per_frame`` = all four kinds per frame."""
    tot = {k: int(sum(e[k] for e in edits)) for k in ("boxes", "truth", "ok", *EDIT_KINDS)}
    fix = tot["wrong_class"] + tot["redraw"] + tot["spurious"]
    return {**tot, "fix_share": fix / max(tot["boxes"], 1), "missing_share": tot["missing"] / max(tot["truth"], 1),
            "edits_per_frame": (fix + tot["missing"]) / max(len(edits), 1)}


def ap_stat(gts: Sequence[Any], arms: Sequence[Sequence[Sequence[Any]]], num_classes: int, rare: int,
            crowded: Sequence[int] | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """``stat(idx) -> (4 K,)``: per arm (its seeds' predictions averaged) mAP, small AP, rare-class AP and
    crowded-frame mAP on the resampled frames ``idx`` (NaN crowded AP when ``crowded`` is None)."""
    from benchmarks.postprocessing import AREA, coco_ap_ar, coco_matches

    per = [[(coco_matches(gts, p, num_classes, AREA["all"]), coco_matches(gts, p, num_classes, AREA["small"]))
            for p in seeds] for seeds in arms]
    cmask = None if crowded is None else np.isin(np.arange(len(gts)), np.asarray(crowded, np.int64))

    def stat(idx: np.ndarray) -> np.ndarray:
        w = np.bincount(np.asarray(idx, np.int64), minlength=len(gts)).astype(np.float64)
        out: list[float] = []
        for seeds in per:
            vals = []
            for m_all, m_small in seeds:
                crowd = coco_ap_ar(m_all, w * cmask)[0] if cmask is not None else float("nan")
                vals.append([coco_ap_ar(m_all, w)[0], coco_ap_ar(m_small, w)[0], coco_ap_ar([m_all[rare]], w)[0],
                             crowd])
            out += list(np.mean(np.asarray(vals, np.float64), axis=0))
        return np.asarray(out)

    return stat


METRICS = ("map", "small_ap", "rare_ap", "crowded_ap")


def deltas(names: Sequence[str], base: str, point: np.ndarray, reps: np.ndarray) -> dict[str, dict[str, Any]]:
    """Per arm and metric: value, and (not for ``base``) the difference to ``base`` with its 95 % interval."""
    from benchmarks.postprocessing import delta_ci, verdict

    k = len(METRICS)
    out: dict[str, dict[str, Any]] = {}
    b = names.index(base)
    for a, n in enumerate(names):
        row: dict[str, Any] = {}
        for m, metric in enumerate(METRICS):
            v = float(point[a * k + m])
            if not np.isfinite(v):
                continue
            row[metric] = {"value": round(v, 4)}
            if n != base:
                lo, hi = delta_ci(reps, a * k + m, b * k + m)
                row[metric] |= {"delta": round(v - float(point[b * k + m]), 4), "ci": [round(lo, 4), round(hi, 4)],
                                "verdict": verdict(lo, hi)}
        out[n] = row
    return out


def _fmt(d: dict[str, Any] | None) -> str:
    if not d:
        return "n/a"
    if "delta" not in d:
        return f"{d['value']:.3f}"
    return f"{d['value']:.3f} ({d['delta']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}])"


def markdown_tables(result: dict[str, Any]) -> str:
    """The tables of docs/benchmarks.md."""
    parts = []
    if "loss" in result:
        lines = ["| arm | mAP50-95 (Δ vs bce [95 % CI]) | small AP | rare-class AP |", "|---|---|---|---|"]
        for n, r in result["loss"]["arms"].items():
            lines.append(f"| {n} | {_fmt(r.get('map'))} | {_fmt(r.get('small_ap'))} | {_fmt(r.get('rare_ap'))} |")
        parts.append("\n".join(lines))
    if "tta" in result:
        lines = ["| config | mAP50-95 (Δ vs plain, same NMS [95 % CI]) | small AP | crowded AP | rare-class AP | "
                 "CPU ms/frame | cost | pre-annotation boxes to fix | truth boxes missing | edits/frame |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for n, r in result["tta"]["configs"].items():
            e = r["edits"]
            lines.append(f"| {n} | {_fmt(r.get('map'))} | {_fmt(r.get('small_ap'))} | {_fmt(r.get('crowded_ap'))} | "
                         f"{_fmt(r.get('rare_ap'))} | {r['ms_per_frame']:.1f} | {r['cost_ratio']:.2f}x | "
                         f"{e['fix_share']:.3f} | {e['missing_share']:.3f} | {e['edits_per_frame']:.2f}"
                         + (f" ({r['edits_delta']['delta']:+.2f} [{r['edits_delta']['ci'][0]:+.2f}, "
                            f"{r['edits_delta']['ci'][1]:+.2f}])" if r.get("edits_delta") else "") + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


# --------------------------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------------------------
def _cached_predict(cache: Path, artifact: Path, items: Sequence[Any], settings: Any) -> list[Any]:
    from detloop.detections import Detections
    from tasks.evaluation import predict_items

    if cache.is_file():
        return [Detections.from_dict(d) for d in json.loads(cache.read_text())]
    preds = predict_items(artifact, items, settings)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps([d.to_dict() for d in preds]))
    return preds


def run_loss(cfg: Config, prep: Any, champion: Path, cfg_path: Path, items: Sequence[Any], gts: Sequence[Any],
             rare: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Fine-tune the champion once per arm and seed (cached), evaluate, bootstrap."""
    from benchmarks.al import BenchConfig as AlConfig
    from benchmarks.al import train_once, write_data_yaml
    from benchmarks.postprocessing import ensure_artifacts, paired_bootstrap
    from detloop.settings import load_settings
    from tasks.training import cls_loss_spec

    root = prep.root / f"loss-{champion.stem}-{cfg.finetune_epochs}ep-lr{cfg.finetune_lr0:g}"
    y = write_data_yaml(root / "data" / "data.yaml", [f.image for f in prep.train], [f.image for f in prep.val],
                        prep.classes)
    al = AlConfig(threads=cfg.threads, timeout_minutes=60, finetune_lr0=cfg.finetune_lr0, finetune_warmup_epochs=0.0)
    eval_settings = load_settings(cfg_path, overrides={"training": {"threads": 1}})
    preds: dict[str, list[list[Any]]] = {}
    runs: dict[str, list[dict[str, Any]]] = {}
    for arm in cfg.arms:
        loss_cfg = load_settings(cfg_path, overrides={"training": {"cls_loss": LOSS_ARMS[arm]}}).training.cls_loss
        for seed in cfg.seeds:
            out = root / f"{arm}-s{seed}"
            done = out / "done.json"
            if done.is_file():
                info = json.loads(done.read_text())
            else:
                log(f"fine-tune {arm} seed {seed}: {cfg.finetune_epochs} epochs on {len(prep.train)} frames")
                w, secs = train_once(al, y, champion, cfg.finetune_epochs, seed, out, eval_settings.data_dir /
                                     "ultralytics", eval_settings.model.arch, cls_loss_spec(loss_cfg))
                info = {"weights": str(w), "train_seconds": round(secs, 1), "cls_loss": loss_cfg.model_dump()}
                done.write_text(json.dumps(info))
            art = ensure_artifacts(Path(info["weights"]), prep.classes, [320], out)[320]
            preds.setdefault(arm, []).append(_cached_predict(out / "preds.json", art, items, eval_settings))
            runs.setdefault(arm, []).append(info)
            log(f"{arm} seed {seed}: done ({info['train_seconds']} s training)")
    names = list(cfg.arms)
    stat = ap_stat(gts, [preds[n] for n in names], len(prep.classes), rare)
    point = stat(np.arange(len(gts)))
    reps = paired_bootstrap(len(gts), stat, cfg.bootstrap, cfg.bootstrap_seed)
    base = "bce" if "bce" in names else names[0]
    return {"arms": deltas(names, base, point, reps), "runs": runs, "baseline": base,
            "protocol": {"champion": str(champion), "finetune_frames": len(prep.train),
                         "finetune_epochs": cfg.finetune_epochs, "finetune_lr0": cfg.finetune_lr0,
                         "warmup_epochs": 0, "seeds": cfg.seeds,
                         "arm_settings": {a: LOSS_ARMS[a] for a in names}}}


def run_tta(cfg: Config, prep: Any, champion: Path, cfg_path: Path, items: Sequence[Any], gts: Sequence[Any],
            rare: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Plain vs TTA under hard NMS and linear soft-NMS: AP per slice, CPU cost, labeller edits."""
    from benchmarks.postprocessing import paired_bootstrap
    from detloop.settings import load_settings
    from tasks.evaluation import predict_items
    from tasks.export import export_scoring_artifact
    from tasks.slices import is_crowded

    art = prep.root / f"artifact-{champion.parent.parent.parent.name}-320-dynhw"
    if not (art / "meta.json").is_file():
        export_scoring_artifact(champion, art, prep.classes, 320, dynamic_hw=True)
    settings = {n: load_settings(cfg_path, overrides={"model": m, "training": {"threads": 1}})
                for n, m in TTA_CONFIGS.items()}
    names = list(TTA_CONFIGS)
    for n in names:  # warm-up
        predict_items(art, items[:4], settings[n])
    preds: dict[str, list[Any]] = {}
    ms: dict[str, list[float]] = {n: [] for n in names}
    for r in range(cfg.runs):
        for n in names if r % 2 == 0 else names[::-1]:
            t0 = time.process_time()
            p = predict_items(art, items, settings[n])
            ms[n].append((time.process_time() - t0) * 1000.0 / len(items))
            preds.setdefault(n, p)
        log(f"tta run {r + 1}/{cfg.runs}: " + ", ".join(f"{k} {v[-1]:.1f} ms" for k, v in ms.items()))
    crowded = [i for i, g in enumerate(gts) if is_crowded(g)]
    stat = ap_stat(gts, [[preds[n]] for n in names], len(prep.classes), rare, crowded)
    point = stat(np.arange(len(gts)))
    reps = paired_bootstrap(len(gts), stat, cfg.bootstrap, cfg.bootstrap_seed)
    thr = settings[names[0]].label_studio.prediction_conf_threshold
    edits = {n: [annotation_edits(g, _keep(p, thr)) for g, p in zip(gts, preds[n], strict=True)] for n in names}
    per_frame = {n: np.asarray([sum(e[k] for k in EDIT_KINDS) for e in edits[n]], np.float64) for n in names}
    configs: dict[str, Any] = {}
    configured = f"plain-{load_settings(cfg_path).model.nms.method}"  # what the config serves today
    for n in names:
        base = n.replace("tta-", "plain-")
        d = deltas(names, base, point, reps)[n]
        if configured in names and n != configured:  # every config also against the configured plain decode
            d["vs_configured"] = {"base": configured, **{k: v for k, v in deltas(names, configured, point, reps)[n]
                                                           .items() if "delta" in v}}
        med = float(np.median(ms[n]))
        d |= {"ms_per_frame": round(med, 2), "ms_runs": [round(x, 2) for x in ms[n]],
              "cost_ratio": round(med / float(np.median(ms[base])), 3), "edits": edits_summary(edits[n]),
              "model_overrides": TTA_CONFIGS[n]}
        if n != base:
            diff = per_frame[n] - per_frame[base]
            rng = np.random.default_rng(cfg.bootstrap_seed)
            boot = [diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(cfg.bootstrap)]
            lo, hi = np.quantile(boot, [0.025, 0.975])
            d["edits_delta"] = {"delta": round(float(diff.mean()), 3), "ci": [round(float(lo), 3), round(float(hi), 3)]}
        configs[n] = d
    return {"configs": configs, "crowded_frames": len(crowded), "pre_annotation_threshold": thr,
            "artifact": str(art), "timing": {"clock": "time.process_time around predict_items (read + decode + "
                                             "ONNX Runtime 1 thread + views + NMS)", "runs": cfg.runs,
                                             "interleaved": "order reversed every other run"}}


def _keep(d: Any, thr: float) -> Any:
    from detloop.detections import Detections

    k = np.asarray(d.confidence) >= thr
    return Detections(xyxy=d.xyxy[k], confidence=d.confidence[k], class_id=d.class_id[k],
                      class_scores=None if d.class_scores is None else d.class_scores[k])


def run(cfg: Config, out: Path, log: Callable[[str], None] = print, command: str | None = None) -> dict[str, Any]:
    from benchmarks.postprocessing import BenchConfig as PPConfig
    from benchmarks.postprocessing import ensure_model, load_data
    from detloop.settings import load_settings
    from tasks.evaluation import EvalItem

    t0 = time.time()
    cfg_path = Path(cfg.config) if Path(cfg.config).is_absolute() else REPO / cfg.config
    settings = load_settings(cfg_path)
    pp = PPConfig(config=cfg.config, weights=cfg.weights, data=cfg.data, eval_frames=cfg.eval_frames,
                  work_dir=cfg.work_dir)
    prep = load_data(pp, list(settings.classes), log)
    champion, model_info = ensure_model(pp, prep, settings, log)
    items = [EvalItem(f.image, f.truth, f.camera) for f in prep.eval]
    gts = [f.truth for f in prep.eval]
    counts = np.bincount(np.concatenate([g.class_id for g in gts]), minlength=len(prep.classes))
    rare = int(np.argmin(counts))
    log(f"{len(items)} eval frames; rare class {prep.classes[rare]!r}: {int(counts[rare])} instances")
    result: dict[str, Any] = {
        "benchmark": "loss_tta", "issue": 19, "date": utc_now(), "command": command or "python -m benchmarks loss-tta",
        "config": asdict(cfg), "model": model_info,
        "data": prep.source | {"eval_frames": len(items), "eval_boxes": int(counts.sum()),
                               "rare_class": prep.classes[rare], "rare_instances": int(counts[rare]),
                               "small_boxes": int(sum(int((g.area <= 32.0**2).sum()) for g in gts)),
                               "train_frames": len(prep.train)},
    }
    if "tta" in cfg.parts:
        t = time.time()
        result["tta"] = run_tta(cfg, prep, champion, cfg_path, items, gts, rare, log)
        result["tta"]["seconds"] = round(time.time() - t, 1)
    if "loss" in cfg.parts:
        t = time.time()
        result["loss"] = run_loss(cfg, prep, champion, cfg_path, items, gts, rare, log)
        result["loss"]["seconds"] = round(time.time() - t, 1)
    result["markdown"] = markdown_tables(result)
    result["seconds_total"] = round(time.time() - t0, 1)
    result["machine"] = machine_info()
    return write_result(out, result)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import shlex
    import sys

    cfg = Config()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", "-c", default=cfg.config)
    ap.add_argument("--weights", type=Path, help="champion .pt (default: the issue 17 benchmark's model, trained once)")
    ap.add_argument("--data", type=Path, help="YOLO data.yaml (train + eval/test/val splits) instead of the world")
    ap.add_argument("--parts", default=",".join(cfg.parts), help="loss,tta")
    ap.add_argument("--arms", default=",".join(cfg.arms), help=f"loss arms out of {list(LOSS_ARMS)}")
    ap.add_argument("--seeds", default=",".join(map(str, cfg.seeds)), help="fine-tune seeds per arm")
    ap.add_argument("--epochs", type=int, default=cfg.finetune_epochs, help="fine-tune epochs")
    ap.add_argument("--lr0", type=float, default=cfg.finetune_lr0, help="fine-tune AdamW learning rate (no warmup)")
    ap.add_argument("--eval-frames", type=int, default=cfg.eval_frames)
    ap.add_argument("--runs", type=int, default=cfg.runs, help="timed TTA runs per configuration (interleaved)")
    ap.add_argument("--bootstrap", type=int, default=cfg.bootstrap)
    ap.add_argument("--work-dir", default=cfg.work_dir)
    ap.add_argument("--out", type=Path, default=RESULTS / "loss_tta.json")
    a = ap.parse_args(argv)
    cfg.config, cfg.eval_frames, cfg.runs, cfg.bootstrap, cfg.work_dir = (a.config, a.eval_frames, a.runs,
                                                                           a.bootstrap, a.work_dir)
    cfg.weights = str(a.weights.resolve()) if a.weights else None
    cfg.data = str(a.data.resolve()) if a.data else None
    cfg.parts = [p.strip() for p in a.parts.split(",") if p.strip()]
    cfg.arms = [p.strip() for p in a.arms.split(",") if p.strip()]
    unknown = [x for x in cfg.arms if x not in LOSS_ARMS] + [x for x in cfg.parts if x not in ("loss", "tta")]
    if unknown:
        raise SystemExit(f"unknown arms/parts {unknown}; arms: {list(LOSS_ARMS)}, parts: loss, tta")
    cfg.seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    cfg.finetune_epochs, cfg.finetune_lr0 = a.epochs, a.lr0
    args = sys.argv[1:] if argv is None else argv
    return run(cfg, a.out, command=shlex.join(["python", "-m", "benchmarks.loss_tta", *args]))


if __name__ == "__main__":
    main()
