"""Hard data (issue 19, data side): copy-paste, hard-example mining and rare-class oversampling against a plain
fine-tune, judged on real held-out frames only.

``python -m benchmarks.hard_data`` (also ``detloop bench hard_data``). Protocol: the same champion (the issue 17
benchmark's model, :func:`benchmarks.postprocessing.ensure_model`: trained or reused from its cache) is fine-tuned
on the same labelled frames for the same epochs in each arm, with the same training seeds:

- ``plain``: the labelled frames once each;
- ``copy_paste``: plus synthetic frames with pasted rare-class objects (:mod:`tasks.copy_paste`, cut from and pasted
  onto the labelled frames only);
- ``mining``: frames the champion gets wrong repeated (:func:`tasks.sample_weights.frame_error_scores`, caps of
  ``training.sample_weights``);
- ``oversample``: frames with the rare class repeated (:func:`tasks.sample_weights.rare_extra`).

Every model is evaluated through :func:`tasks.evaluation.predict_items` (its ONNX scoring artifact) on frames of
the world's ``bench-eval`` stream that no arm trains on (never synthesised). AP50-95 overall and of the rare class,
as the mean over the seeds of an arm; differences against ``plain`` with a paired bootstrap 95 % interval over
evaluation frames (each replicate resamples the frames once for every model;
:func:`benchmarks.postprocessing.coco_ap_ar`). Fine-tunes are cached per (arm, seed): a re-run resumes.
``--max-minutes`` stops starting new fine-tunes (seed-major order: whole seeds first) when the budget is spent.
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

from benchmarks import postprocessing as pp
from benchmarks._common import machine_info, utc_now, write_result
from benchmarks.al_data import BenchFrame

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
ARMS = ("plain", "copy_paste", "mining", "oversample")


@dataclass
class HardDataConfig:
    """What the benchmark runs (the champion's fields match the issue 17 benchmark's, so its model is reused)."""

    config: str = "configs/local.yaml"
    world_config: str = "configs/world.yaml"
    world_seed: int = 0
    champion_work_dir: str = ".detloop-bench/postprocessing"
    champion_frames: int = 200  # half pre-drift (seed stream), half production dates (pool stream)
    champion_epochs: int = 12
    weights: str | None = None
    labelled_frames: int | None = None  # default: all of the champion's production-date frames
    eval_frames: int = 360
    epochs: int = 3
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    rare_class: str = "star"
    rare_share: float = 0.2
    finetune_lr0: float = 0.001
    threads: int = 1
    bootstrap: int = 200
    max_minutes: float = 40.0
    work_dir: str = ".detloop-bench/hard_data"


# --------------------------------------------------------------------------------------------
# Train lists of the arms
# --------------------------------------------------------------------------------------------
def _write_list(arm_dir: Path, frames: Sequence[BenchFrame], repeats: np.ndarray, extra: Sequence[Path] = ()) -> Path:
    """``train.txt``: each frame ``repeats[i]`` times (hard-linked copies: Ultralytics keys its label cache by
    path) plus ``extra`` images."""
    from detloop.localfs import link_or_copy
    from tasks.training import _label_for

    img_dir, lbl_dir = arm_dir / "images" / "train", arm_dir / "labels" / "train"
    img_dir.mkdir(parents=True, exist_ok=True)
    lbl_dir.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    for f, r in zip(frames, repeats, strict=True):
        src = Path(f.image)
        lines.append(str(src))
        for k in range(1, int(r)):
            dst = img_dir / f"{src.stem}__rep{k}{src.suffix}"
            for a, b in ((src, dst), (_label_for(src), lbl_dir / f"{src.stem}__rep{k}.txt")):
                if not b.exists():
                    link_or_copy(a, b)
            lines.append(str(dst))
    lines += [str(p) for p in extra]
    out = arm_dir / "train.txt"
    out.write_text("\n".join(lines) + "\n")
    return out


def _synthetic(arm_dir: Path, frames: Sequence[BenchFrame], settings: Any, rare: int) -> tuple[list[Path], dict]:
    """Copy-paste frames of the rare class (``training.copy_paste``), written beside the arm's list."""
    import cv2

    from tasks.copy_paste import cut_objects, paste_objects

    cp = settings.training.copy_paste
    img_dir, lbl_dir = arm_dir / "images" / "train", arm_dir / "labels" / "train"
    img_dir.mkdir(parents=True, exist_ok=True)
    lbl_dir.mkdir(parents=True, exist_ok=True)
    cuts = []
    for f in frames:
        if (f.truth.class_id == rare).any():
            cuts += cut_objects(cv2.imread(f.image, cv2.IMREAD_COLOR), f.truth, [rare])
    rng = np.random.default_rng(cp.seed)
    out: list[Path] = []
    pasted = 0
    for i in range(round(cp.synthetic_share * len(frames))):
        f = frames[int(rng.integers(len(frames)))]
        img = cv2.imread(f.image, cv2.IMREAD_COLOR)
        k = int(rng.integers(cp.objects_per_frame[0], cp.objects_per_frame[1] + 1))
        new, labels, n = paste_objects(img, f.truth, cuts, rng, k, cp.max_overlap, cp.scale_jitter, cp.blend_px)
        if n == 0:
            continue
        p = img_dir / f"syn{i:04d}.jpg"
        cv2.imwrite(str(p), new, [cv2.IMWRITE_JPEG_QUALITY, 90])
        (lbl_dir / f"syn{i:04d}.txt").write_text(labels.to_yolo_txt(new.shape[1], new.shape[0]))
        out.append(p)
        pasted += n
    return out, {"cutouts": len(cuts), "masks_estimated": int(sum(c.estimated for c in cuts)),
                 "synthetic_frames": len(out), "pasted_objects": pasted}


def build_arm(arm: str, arm_dir: Path, frames: Sequence[BenchFrame], settings: Any, rare: int,
              champion_preds: Sequence[Any] | None) -> tuple[Path, dict[str, Any]]:
    """The arm's ``train.txt`` and what went into it."""
    from tasks.sample_weights import frame_error_scores, rare_extra, repeat_counts

    sw = settings.training.sample_weights
    n = len(frames)
    ones = np.ones(n, np.int64)
    info: dict[str, Any] = {"frames": n}
    if arm == "plain":
        return _write_list(arm_dir, frames, ones), info
    if arm == "copy_paste":
        extra, info2 = _synthetic(arm_dir, frames, settings, rare)
        return _write_list(arm_dir, frames, ones, extra), {**info, **info2}
    if arm == "mining":
        if champion_preds is None:
            raise ValueError("the mining arm needs the champion's predictions on the labelled frames")
        ea = settings.error_analysis
        scores = frame_error_scores([f.truth for f in frames], champion_preds, ea.count_min_confidence, ea.fg_iou,
                                    ea.bg_iou)
        reps = repeat_counts(n, scores, None, sw.mining_strength, sw.max_repeats, sw.max_extra_share)
        info.update(mean_error_score=round(float(scores.mean()), 4))
    elif arm == "oversample":
        counts = np.stack([np.bincount(f.truth.class_id, minlength=len(settings.classes)) for f in frames])
        reps = repeat_counts(n, None, rare_extra(counts, sw.rare_share, sw.rare_power), 1.0, sw.max_repeats,
                             sw.max_extra_share)
    else:
        raise ValueError(f"unknown arm {arm!r}; arms are {list(ARMS)}")
    info.update(repeated_frames=int((reps > 1).sum()), extra_listings=int(reps.sum() - n))
    return _write_list(arm_dir, frames, reps), info


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
def _preds(art: Path, frames: Sequence[BenchFrame], settings: Any, cache: Path) -> list[Any]:
    from detloop.detections import Detections
    from tasks.evaluation import EvalItem, predict_items

    if cache.is_file():
        return [Detections.from_dict(d) for d in json.loads(cache.read_text())]
    items = [EvalItem(f.image, f.truth, f.camera) for f in frames]
    preds = predict_items(art, items, settings, settings.model.batch_size)
    cache.write_text(json.dumps([p.to_dict() for p in preds]))
    return preds


def run(cfg: HardDataConfig, out: Path, log: Callable[[str], None] = print, command: str | None = None,
        ) -> dict[str, Any]:
    import yaml

    from benchmarks.al import BenchConfig as AlConfig
    from benchmarks.al import train_once, write_data_yaml
    from benchmarks.al_data import render_world
    from detloop.offline import apply_offline_env, ensure_ultralytics_fonts
    from detloop.settings import load_settings
    from tasks.error_analysis import breakdown

    t_start = time.time()
    settings = load_settings(cfg.config, overrides={
        "training": {"threads": cfg.threads, "copy_paste": {"classes": [cfg.rare_class]},
                     "sample_weights": {"rare_share": cfg.rare_share}}})
    classes = list(settings.classes)
    rare = classes.index(cfg.rare_class)
    work = Path(cfg.work_dir) if Path(cfg.work_dir).is_absolute() else REPO / cfg.work_dir
    # the champion and its training frames (the issue 17 benchmark's world and model, cached)
    pcfg = pp.BenchConfig(config=cfg.config, world_config=cfg.world_config, world_seed=cfg.world_seed,
                          weights=cfg.weights, train_seed_frames=cfg.champion_frames // 2,
                          train_pool_frames=cfg.champion_frames - cfg.champion_frames // 2,
                          epochs=cfg.champion_epochs, train_threads=cfg.threads,
                          work_dir=str(REPO / cfg.champion_work_dir))
    prep = pp.load_data(pcfg, classes, log)
    champion, cinfo = pp.ensure_model(pcfg, prep, settings, log)
    labelled = prep.train[pcfg.train_seed_frames:]  # production dates: where the rare class is
    if cfg.labelled_frames:
        labelled = labelled[: cfg.labelled_frames]
    # held-out evaluation frames (the bench-eval stream; no arm trains on them)
    wc = Path(cfg.world_config) if Path(cfg.world_config).is_absolute() else REPO / cfg.world_config
    ev = render_world(work / f"eval-w{cfg.world_seed}-{cfg.eval_frames}" / "data", wc, classes, cfg.world_seed,
                      {"seed": 1, "pool": 1, "eval": cfg.eval_frames, "val": 1}).eval
    n_rare_eval = int(sum((f.truth.class_id == rare).sum() for f in ev))
    n_rare_train = int(sum((f.truth.class_id == rare).sum() for f in labelled))
    log(f"labelled frames {len(labelled)} ({n_rare_train} {cfg.rare_class}); eval frames {len(ev)} "
        f"({n_rare_eval} {cfg.rare_class})")
    apply_offline_env(settings)
    ensure_ultralytics_fonts(settings)
    key = hashlib.sha256(json.dumps({**asdict(cfg), "seeds": None, "arms": None, "max_minutes": None,
                                     "bootstrap": None, "champion": str(champion)}, sort_keys=True,
                                    default=str).encode()).hexdigest()[:10]
    root = work / f"run-{key}"
    croot = work / ("champion-" + hashlib.sha256(json.dumps(
        [str(champion), cfg.config, cfg.world_seed, cfg.eval_frames, cfg.labelled_frames]).encode()).hexdigest()[:10])
    croot.mkdir(parents=True, exist_ok=True)
    champ_art = pp.ensure_artifacts(champion, classes, [settings.model.input_size], croot)[settings.model.input_size]
    champ_train_preds = _preds(champ_art, labelled, settings, croot / "champion_train_preds.json")
    champ_eval_preds = _preds(champ_art, ev, settings, croot / "champion_eval_preds.json")
    tide = breakdown("eval", [f.truth for f in ev], champ_eval_preds, classes, [f.camera for f in ev], 50,
                     settings.error_analysis.fg_iou, settings.error_analysis.bg_iou)
    arms_info: dict[str, Any] = {}
    lists: dict[str, Path] = {}
    for arm in cfg.arms:
        lst, info = build_arm(arm, root / "arms" / arm, labelled, settings, rare, champ_train_preds)
        lists[arm], arms_info[arm] = lst, info
        log(f"arm {arm}: {info}")
    acfg = AlConfig(imgsz=pcfg.imgsz, batch=pcfg.batch, finetune_lr0=cfg.finetune_lr0, threads=cfg.threads,
                    timeout_minutes=120)
    models: dict[str, dict[int, list[Any]]] = {a: {} for a in cfg.arms}
    skipped: list[str] = []
    for seed in cfg.seeds:  # seed-major: whole seeds first, so a stopped run still compares every arm
        for arm in cfg.arms:
            mdir = root / "models" / f"{arm}-s{seed}"
            done = mdir / "done.json"
            if not done.is_file():
                if (time.time() - t_start) / 60 > cfg.max_minutes:
                    skipped.append(f"{arm}-s{seed}")
                    continue
                y = write_data_yaml(mdir / "data.yaml", [], [f.image for f in prep.val], classes)
                data = yaml.safe_load(y.read_text())
                data["train"] = str(lists[arm])  # the arm's list (repeats, synthetic frames) instead of none
                y.write_text(yaml.safe_dump(data))
                log(f"fine-tune {arm} seed {seed} ({sum(1 for _ in lists[arm].open())} listed frames, "
                    f"{cfg.epochs} epochs)")
                w, secs = train_once(acfg, y, champion, cfg.epochs, seed, mdir, settings.data_dir / "ultralytics",
                                     settings.model.arch)
                done.write_text(json.dumps({"weights": str(w), "seconds": round(secs, 1)}))
            info = json.loads(done.read_text())
            art = pp.ensure_artifacts(Path(info["weights"]), classes, [settings.model.input_size], mdir)
            models[arm][seed] = _preds(art[settings.model.input_size], ev, settings, mdir / "eval_preds.json")
            arms_info[arm].setdefault("train_seconds", {})[str(seed)] = info["seconds"]
    # paired bootstrap over eval frames: per arm the mean over its seeds, minus plain's
    gts = [f.truth for f in ev]
    seeds_done = [s for s in cfg.seeds if all(s in models[a] for a in cfg.arms)]
    cols: list[tuple[str, int | None]] = [("champion", None)] + [(a, s) for a in cfg.arms for s in seeds_done]
    matches = [pp.coco_matches(gts, champ_eval_preds if a == "champion" else models[a][s], len(classes),
                               pp.AREA["all"]) for a, s in cols]

    def stat(idx: np.ndarray) -> np.ndarray:
        w = np.bincount(np.asarray(idx, np.int64), minlength=len(gts))
        per = [(pp.coco_ap_ar(m, w)[0], pp.coco_ap_ar([m[rare]], w)[0]) for m in matches]
        row = [*per[0]]
        for a in cfg.arms:
            vals = [per[j] for j, (aa, _) in enumerate(cols) if aa == a]
            row += [float(np.mean([v[0] for v in vals])), float(np.mean([v[1] for v in vals]))]
        return np.asarray(row)

    full = stat(np.arange(len(gts)))
    reps = pp.paired_bootstrap(len(gts), stat, cfg.bootstrap, 0) if seeds_done else np.zeros((0, len(full)))
    rows = [{"arm": "champion (before fine-tune)", "seeds": 0, "map": full[0], "rare_ap": full[1]}]
    base = 2 + 2 * cfg.arms.index("plain") if "plain" in cfg.arms else None
    for i, a in enumerate(cfg.arms):
        c = 2 + 2 * i
        r: dict[str, Any] = {"arm": a, "seeds": len(seeds_done), "map": full[c], "rare_ap": full[c + 1],
                             "per_seed": {str(s): {"map": pp.coco_ap_ar(matches[cols.index((a, s))])[0],
                                                   "rare_ap": pp.coco_ap_ar([matches[cols.index((a, s))][rare]])[0]}
                                          for s in seeds_done}}
        if base is not None and a != "plain" and len(reps):
            for k, off in (("map", 0), ("rare_ap", 1)):
                lo, hi = pp.delta_ci(reps, c + off, base + off)
                r[f"d_{k}"], r[f"d_{k}_ci"], r[f"d_{k}_verdict"] = full[c + off] - full[base + off], [lo, hi], \
                    pp.verdict(lo, hi)
        rows.append(r)
    md = markdown_table(rows, cfg.rare_class)
    log(md)
    result = {
        "benchmark": "hard_data", "issue": 19, "date": utc_now(), "command": command, "config": asdict(cfg),
        "settings": {"copy_paste": settings.training.copy_paste.model_dump(mode="json"),
                     "sample_weights": settings.training.sample_weights.model_dump(mode="json")},
        "champion": {**cinfo, "weights": str(champion)}, "labelled_frames": len(labelled),
        "rare_instances": {"labelled": n_rare_train, "eval": n_rare_eval, "eval_reached_200": n_rare_eval >= 200},
        "eval_frames": len(ev), "seeds_done": seeds_done, "skipped_over_budget": skipped, "arms": arms_info,
        "rows": rows, "markdown": md,
        "champion_tide_eval": {g: tide["groups"][g] for g in ("all", f"class_{cfg.rare_class}", "size_small")
                               if g in tide["groups"]},
        "seconds": round(time.time() - t_start, 1), "machine": machine_info(),
    }
    return write_result(out, result)


def _f(v: Any) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.3f}"


def _d(r: dict[str, Any], k: str) -> str:
    if f"d_{k}" not in r:
        return "baseline" if r["arm"] == "plain" else ""
    lo, hi = r[f"d_{k}_ci"]
    return f"{r[f'd_{k}']:+.3f} [{lo:+.3f}, {hi:+.3f}] {r[f'd_{k}_verdict']}"


def markdown_table(rows: Sequence[dict[str, Any]], rare: str) -> str:
    """Rows: arm, seeds, mAP50-95, rare-class AP50-95, and the differences against ``plain`` [95 % CI]."""
    lines = [f"| arm | seeds | mAP50-95 | {rare} AP50-95 | ΔmAP vs plain [95 % CI] | Δ{rare} AP vs plain [95 % CI] |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['arm']} | {r['seeds']} | {_f(r['map'])} | {_f(r['rare_ap'])} | {_d(r, 'map')} | "
                     f"{_d(r, 'rare_ap')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = HardDataConfig()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", "-c", default=cfg.config)
    ap.add_argument("--weights", type=Path, help="champion .pt (default: the issue 17 benchmark's model, trained "
                                                  "or reused from its cache)")
    ap.add_argument("--epochs", type=int, default=cfg.epochs, help="epochs of every fine-tune")
    ap.add_argument("--seeds", default=",".join(map(str, cfg.seeds)), help="training seeds, comma-separated")
    ap.add_argument("--arms", default=",".join(cfg.arms), help=f"arms, comma-separated ({', '.join(ARMS)})")
    ap.add_argument("--eval-frames", type=int, default=cfg.eval_frames)
    ap.add_argument("--labelled-frames", type=int, help="fine-tune on only the first N labelled frames (smoke runs)")
    ap.add_argument("--rare-class", default=cfg.rare_class)
    ap.add_argument("--rare-share", type=float, default=cfg.rare_share,
                    help="training.sample_weights.rare_share of the oversampling arm")
    ap.add_argument("--finetune-lr0", type=float, default=cfg.finetune_lr0, help="AdamW learning rate of fine-tunes")
    ap.add_argument("--bootstrap", type=int, default=cfg.bootstrap)
    ap.add_argument("--max-minutes", type=float, default=cfg.max_minutes,
                    help="no fine-tune starts after this (cached ones are still evaluated)")
    ap.add_argument("--threads", type=int, default=cfg.threads)
    ap.add_argument("--work-dir", default=cfg.work_dir)
    ap.add_argument("--out", type=Path, default=RESULTS / "hard_data.json")
    a = ap.parse_args(argv)
    cfg.config, cfg.epochs, cfg.eval_frames, cfg.rare_class = a.config, a.epochs, a.eval_frames, a.rare_class
    cfg.labelled_frames, cfg.finetune_lr0 = a.labelled_frames, a.finetune_lr0
    cfg.weights = str(a.weights.resolve()) if a.weights else None
    cfg.seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    cfg.arms = [s.strip() for s in a.arms.split(",") if s.strip()]
    bad = [x for x in cfg.arms if x not in ARMS]
    if bad or "plain" not in cfg.arms:
        ap.error(f"--arms must include 'plain' and only {list(ARMS)}; got {cfg.arms}")
    cfg.rare_share, cfg.bootstrap, cfg.max_minutes, cfg.threads = a.rare_share, a.bootstrap, a.max_minutes, a.threads
    cfg.work_dir = a.work_dir
    import shlex
    import sys

    args = sys.argv[1:] if argv is None else argv
    return run(cfg, a.out, command=shlex.join(["python", "-m", "benchmarks.hard_data", *args]))


if __name__ == "__main__":
    main()
