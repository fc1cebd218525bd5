"""Active-learning benchmark (issue 7): strategies against random, on the same seed set and pool.

For each seed s (selection seed = training seed = s):

1. a bootstrap model is trained from the model YAML on the seed set (shared by every arm of seed s);
2. for each arm and round r = 1..R: the arm picks ``budget`` frames from its unlabelled pool with its
   current model, the simulated annotator labels them from the oracle truth (``degrade``: jitter,
   missed small boxes, class flips), the model is fine-tuned from the arm's previous weights for a fixed
   number of epochs on seed set + everything the arm labelled so far (``last.pt`` is kept: per-epoch
   validation never picks weights), and evaluated on the benchmark evaluation set (mAP50-95, mAP50,
   per class, per size);
3. the **no-new-labels control** gets the same fine-tunes on the seed set alone.

Every (arm, seed, round) result is a JSON file under ``<work_dir>/<run key>/`` (plus its weights), so
an interrupted run continues where it stopped. :func:`summarize` turns the cached results into the
learning curves (frames and boxes axes), label efficiency with a bootstrap CI over seeds, plots and the
result JSON.

Labels: by default the simulated annotator's labels (:func:`annotate`) are written directly. With
``--via-label-studio`` (``BenchConfig.via_label_studio``) every round's paid frames (new and control)
go through the real Label Studio server of the configured stack instead, and the arm trains on what the
loop's own reader (``tasks.ls_tasks.convert_round_tasks``) made of them; see
:mod:`benchmarks.al_labelstudio`. Same labels, so the run key is the same; each round record says which
way its labels came (``labels_via``).

Run: ``detloop bench al --quick`` (smoke) or ``detloop bench al`` (the full measurement); see
``docs/active_learning_benchmark.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import arch_key_part, configured_arch, settings_hash, write_result
from benchmarks.al_data import AnnotatorNoise, BenchData, BenchFrame, annotate, labelled_name
from benchmarks.al_metrics import Curve, efficiency_ci, final_summary, mean_curve
from detloop.detections import Detections
from detloop.errors import DataError
from detloop.label_cost import LabelActions, OutcomeRates, OutcomeTally, count_actions, fit_outcome_rates

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
CONTROL = "no_new_labels"
RANDOM = "random"
MAIN_ARMS = ("random", "entropy_sum", "entropy_kcenter", "default")
EXTRA_ARMS = ("least_confidence_max", "margin_max")
QUICK_ARMS = ("random", "entropy_sum", "default")
TRUTH_ERRORS = "truth_errors"
# Arms that read the pool's truth: ceilings of what ranking frames by hardness can buy, never strategies.
CEILING_ARMS = (TRUTH_ERRORS,)
AXES = ("frames", "boxes", "frames_paid", "boxes_paid", "seconds", "seconds_paid")
COUNT_AXES = AXES[:4]  # counted when a round runs; the seconds axes are priced from action counts on load
COLD_START_MAP50 = 0.3  # below this bootstrap mAP50 the comparison is flagged as cold start
NOT_IN_KEY = ("via_label_studio", "label_studio_project")  # how labels travel, not what they are


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------
@dataclass
class BenchConfig:
    """Everything that defines a benchmark run (recorded with the results; its hash names the run).

    Attributes:
        arms: strategies to run (``no_new_labels`` is always added).
        seeds: seeds; seed s is the selection seed, the training seed and the annotator-noise seed.
        rounds: selection rounds R.
        budget: frames labelled per round b (control-arm frames of ``default`` included).
        epochs: epochs of each fine-tune (fixed budget).
        bootstrap_epochs: epochs of the bootstrap model from the YAML.
        sizes: frames per split (world mode): ``seed`` (bootstrap), ``pool``, ``eval``, ``val``.
        imgsz, batch: training input size (pixels) and batch (= nominal batch: no gradient accumulation).
        lr0, finetune_lr0: AdamW learning rates of the bootstrap and of fine-tunes.
        finetune_warmup_epochs: Ultralytics warmup of fine-tunes (0: no warmup; its 100-iteration minimum
            and 0.1 bias lr would otherwise cover a whole short fine-tune).
        threads: torch threads (training and inference).
        config: detloop config (classes, the configured ``selection`` = the ``default`` arm; that arm's
            cache is keyed by the selection's content as well, see :meth:`Runner.arm_dir_name`).
        world_config, world_seed: the synthetic world (ignored with ``data``).
        data: a YOLO ``data.yaml`` with seed / pool / eval splits instead of the world.
        noise: annotator noise.
        metric: headline metric (``map`` = mAP50-95 or ``map50``).
        rare_class: class of the rare-class view (default: fewest eval instances).
        work_dir: cache of rendered data, weights and per-round JSON.
        timeout_minutes: per training subprocess.
        bootstrap_weights: start every seed from these Ultralytics ``.pt`` weights instead of training a
            bootstrap model (e.g. a team's current model on its own data; the bootstrap then does not vary
            with the training seed).
        via_label_studio: label the paid frames through the configured stack's Label Studio (and S3)
            instead of writing the annotator's labels directly; not part of the run key (same labels).
        label_studio_project: title of that Label Studio project (default ``detloop-bench-<run key>``).
        retire_control_after: the default arm's control frames of round k join its training set at round
            ``k + retire_control_after``, after serving the live estimate of their window (None: the configured
            ``selection.control_pool_rounds``, as the loop does; 0: never).
    """

    arms: list[str] = field(default_factory=lambda: list(MAIN_ARMS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    rounds: int = 4
    budget: int = 50
    epochs: int = 6
    bootstrap_epochs: int = 60
    sizes: dict[str, int] = field(default_factory=lambda: {"seed": 150, "pool": 1500, "eval": 300, "val": 16})
    imgsz: int = 320
    batch: int = 16
    lr0: float = 0.002
    finetune_lr0: float = 0.001
    finetune_warmup_epochs: float = 0.0
    threads: int = 2
    config: str = "configs/local.yaml"
    world_config: str = "configs/world.yaml"
    world_seed: int = 0
    data: str | None = None
    noise: AnnotatorNoise = field(default_factory=AnnotatorNoise)
    metric: str = "map"
    rare_class: str | None = None
    work_dir: str = ".detloop-bench/al"
    timeout_minutes: int = 240
    bootstrap_weights: str | None = None
    via_label_studio: bool = False
    label_studio_project: str | None = None
    retire_control_after: int | None = None

    def _key(self, drop: Sequence[str]) -> dict[str, Any]:
        """The config as a dict without ``drop`` (and what never changes results), the model named by its
        weights file or its family."""
        d = asdict(self)
        for k in ("arms", "seeds", "rounds", "work_dir", "timeout_minutes", "metric", "rare_class", "threads",
                  *drop, *NOT_IN_KEY):
            d.pop(k)
        if self.bootstrap_weights:
            p = Path(self.bootstrap_weights)
            d["bootstrap_weights"] = [p.name, p.stat().st_size if p.is_file() else None]
            d.pop("bootstrap_epochs")
        else:
            d.update(arch_key_part(configured_arch(self.config)))
        return d

    def run_key(self) -> str:
        """Hash of what changes results (not arms, seeds or rounds: those only add cached files).
        ``retire_control_after`` changes the ``default`` arm only: its cache directory carries it
        (:meth:`Runner.arm_dir_name`), so a variant reuses the random arm and pairs with the base in
        ``al-compare`` (held at None here so earlier run keys stay valid)."""
        d = self._key(())
        d["retire_control_after"] = None
        if self.data:
            d.pop("world_config")
            d.pop("world_seed")
            d.pop("sizes")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]

    def bootstrap_key(self) -> str:
        """Hash of what changes the bootstrap model and its evaluation (fine-tune settings excluded), so a
        run that only changes budget, fine-tune epochs/lr or annotator noise reuses the bootstrap models."""
        d = self._key(("budget", "epochs", "finetune_lr0", "finetune_warmup_epochs", "noise", "retire_control_after"))
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


def quick_config() -> BenchConfig:
    """The ``--quick`` smoke size: 3 strategies, 1 seed, 3 rounds, small pool and evaluation set."""
    return BenchConfig(arms=list(QUICK_ARMS), seeds=[0], rounds=3, budget=40, epochs=3, bootstrap_epochs=30,
                       sizes={"seed": 120, "pool": 400, "eval": 150, "val": 8})


def check_arms(arms: Sequence[str]) -> list[str]:
    """Known arm names (random first), ``no_new_labels`` excluded; raises DataError on an unknown name."""
    known = (*MAIN_ARMS, *EXTRA_ARMS, *CEILING_ARMS)
    bad = [a for a in arms if a not in known]
    if bad:
        raise DataError(f"unknown benchmark arm(s) {bad}; valid: {', '.join(known)}")
    if RANDOM not in arms:
        raise DataError("the benchmark needs the 'random' arm: label efficiency is measured against it")
    return [RANDOM] + [a for a in dict.fromkeys(arms) if a != RANDOM]


KEY_SCHEME = 2  # selection keys since 2026-12-05: nulls and secrets left out (benchmarks._common.settings_hash)


def selection_key(configured: Any) -> str:
    """Hash of the configured SelectionSettings minus what the benchmark replaces (budget, seed). Self-training
    when off changes nothing, so it is left out then; so are options at their null (off) default
    (:func:`benchmarks._common.settings_hash`): a selection option added later keeps every cached default arm."""
    d = configured.model_dump(mode="json")
    d.pop("budget", None)
    d.pop("seed", None)
    if not d.get("pseudo_labels", {}).get("enabled"):
        d.pop("pseudo_labels", None)
    return settings_hash(d, 8)


def default_arm_key(configured: Any, retire_control_after: int | None) -> str:
    """What the ``default`` arm's results depend on beyond the run key: the configured selection (its
    :func:`selection_key`) and a ``retire_control_after`` other than the configured window."""
    tail = "" if retire_control_after is None else f"-retire{retire_control_after}"
    return f"default-{selection_key(configured)}{tail}"


def selection_settings(arm: str, configured: Any, budget: int, seed: int) -> Any:
    """SelectionSettings of a strategy arm (``default`` = the configured selection, budget replaced).

    Non-default arms have no class balance, no control arm and a fixed aggregation/diversity:
    ``entropy_sum`` (entropy, sum), ``entropy_kcenter`` (entropy, sum, filter + k-center),
    ``least_confidence_max`` and ``margin_max`` (max over boxes).
    """
    from detloop.settings import SelectionSettings

    plain = {"class_balance": False, "control_share": 0.0, "control_min": 0, "budget": budget, "seed": seed}
    table = {
        "entropy_sum": {"strategy": "entropy", "aggregation": "sum", "diversity": "none"},
        "entropy_kcenter": {"strategy": "entropy", "aggregation": "sum", "diversity": "filter_kcenter"},
        "least_confidence_max": {"strategy": "least_confidence", "aggregation": "max", "diversity": "none"},
        "margin_max": {"strategy": "margin", "aggregation": "max", "diversity": "none"},
    }
    if arm == "default":
        return configured.model_copy(update={"budget": budget, "seed": seed})
    if arm not in table:
        raise DataError(f"arm {arm!r} has no selection settings")
    return SelectionSettings(**{**plain, **table[arm]})


# --------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------
def random_pick(n_unlabelled: int, budget: int, seed: int, round_index: int) -> np.ndarray:
    """Indices (into the unlabelled list) of the random arm's frames: uniform, seeded by (seed, round)."""
    rng = np.random.default_rng([seed, round_index, 7919])
    k = min(budget, n_unlabelled)
    return np.sort(rng.choice(n_unlabelled, size=k, replace=False)) if k else np.zeros(0, np.int64)


def truth_error_pick(pre: Sequence[Detections], truth: Sequence[Detections], cost: Any, budget: int, seed: int,
                     round_index: int) -> np.ndarray:
    """Indices of the ``budget`` frames on which the current model makes the most mistakes per labelling second,
    judged by the truth (the ``truth_errors`` ceiling arm; the loop never has the truth).

    A frame's mistakes are the labeller actions its pre-annotations ``pre`` need beyond verification (adjust,
    draw, delete: :func:`detloop.label_cost.count_actions` against ``truth``), divided by the frame's labelling
    seconds at ``cost``: value per second with a perfect estimate of the model's errors. Ties (e.g. frames
    with no mistake) are broken by a draw seeded by (seed, round).
    """
    acts = [count_actions(p, t, cost) for p, t in zip(pre, truth, strict=True)]
    errors = np.array([a.adjust + a.draw + a.delete for a in acts], float)
    seconds = np.array([a.seconds(cost) for a in acts], float)
    score = errors / np.maximum(seconds, 1e-9)
    tie = np.random.default_rng([seed, round_index, 104729]).random(len(score))
    order = np.lexsort((tie, -score))
    return np.sort(order[: min(budget, len(score))])


def curves_from_records(records: Sequence[dict[str, Any]], axis: str, metric: str) -> Curve:
    """One seed's curve of an arm from its round records (round 1..R, sorted), on ``axis``.

    ``metric`` is a key of the record's ``metrics`` (``map``, ``map50``, ``small_map``,
    ``class.<name>.map``).
    """
    recs = sorted((r for r in records if r["round"] >= 1), key=lambda r: r["round"])
    x = [r["cumulative"][axis] for r in recs]
    y = [metric_value(r["metrics"], metric) for r in recs]
    return Curve(np.array(x, float), np.array([np.nan if v is None else v for v in y], float))


def retiring_controls(control_rounds: dict[int, list[int]], r: int, after: int | None) -> list[int]:
    """Rounds whose control frames retire into training at round ``r``: those of round ``k <= r - after``
    (they served the live-accuracy estimate of rounds ``k .. k + after - 1``); none when ``after`` is None."""
    if after is None:
        return []
    return sorted(k for k in control_rounds if k <= r - after)


def price(rec: dict[str, Any], cost: Any) -> dict[str, Any]:
    """``rec`` with ``cumulative.seconds`` / ``seconds_paid``: its cumulative action counts (trained / paid)
    priced at ``cost`` (:class:`~detloop.settings.LabellingCostSettings`), so prices can change without a re-run."""
    acts = rec.get("cumulative_actions") or {}
    cum = dict(rec["cumulative"])
    for axis, part in (("seconds", "trained"), ("seconds_paid", "paid")):
        cum[axis] = round(LabelActions(**acts[part]).seconds(cost), 1) if part in acts else 0.0
    return {**rec, "cumulative": cum}


def metric_value(m: dict[str, Any], key: str) -> float | None:
    """``map`` / ``map50`` / ``small_map`` / ``class.<name>.<map|map50>`` from a metrics dict."""
    if key.startswith("class."):
        _, name, k = key.split(".", 2)
        return (m.get("per_class", {}).get(name) or {}).get(k)
    return m.get(key)


# --------------------------------------------------------------------------------------------
# Model I/O
# --------------------------------------------------------------------------------------------
class Frames:
    """Letterboxed uint8 inputs of a split, loaded once: ``(N, 3, S, S)`` RGB."""

    def __init__(self, frames: Sequence[BenchFrame], size: int):
        import cv2

        from detloop.ops import Letterbox

        self.size = size
        self.arr = np.full((len(frames), 3, size, size), 114, np.uint8)
        self.lbs = []
        for i, f in enumerate(frames):
            img = cv2.imread(f.image, cv2.IMREAD_COLOR)
            if img is None:
                raise DataError(f"cannot read image {f.image}")
            h, w = img.shape[:2]
            lb = Letterbox.compute(w, h, size)
            nw, nh = lb.resized
            img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)[:, :, ::-1]
            self.arr[i, :, lb.pad_y : lb.pad_y + nh, lb.pad_x : lb.pad_x + nw] = img.transpose(2, 0, 1)
            self.lbs.append(lb)


def infer(weights: Path, frames: Frames, idx: Sequence[int], conf: float, iou: float, max_det: int,
          max_candidates: int, threads: int, with_embedding: bool, batch: int = 32,
          ) -> tuple[list[Detections], np.ndarray | None]:
    """Run ``weights`` (torch) on frames ``idx``; detections in frame pixels with ``class_scores``.

    Returns:
        (detections per frame, ``(len(idx), D)`` float32 embeddings or None).
    """
    from detloop.postprocess import decode_raw
    from tasks.scoring import TorchScorer

    scorer = TorchScorer(weights, frames.size, threads=threads)
    dets: list[Detections] = []
    embs = []
    idx = list(idx)
    for s in range(0, len(idx), batch):
        part = idx[s : s + batch]
        x = frames.arr[part].astype(np.float32) / 255.0
        raw, emb = scorer.infer(x)
        for j, i in enumerate(part):
            dets.append(decode_raw(raw[j], frames.lbs[i], conf, iou, max_det, max_candidates))
        if with_embedding and emb is not None:
            embs.append(emb)
    return dets, (np.concatenate(embs).astype(np.float32) if embs else None)


def eval_predictions(weights: Path, data: BenchData, frames: Frames, settings: Any, threads: int) -> list[Detections]:
    """``weights``' detections on the evaluation set (what metrics are taken on), decoded like the pool: hard NMS
    at the config's IoU threshold, whatever ``model.nms.method`` says (docs/active_learning_benchmark.md)."""
    ms = settings.model
    preds, _ = infer(weights, frames, range(len(data.eval)), ms.conf_threshold, ms.nms.iou_threshold, ms.max_det,
                     ms.scoring_max_candidates, threads, False)
    return preds


def evaluate_weights(weights: Path, data: BenchData, frames: Frames, settings: Any, threads: int,
                     preds: Sequence[Detections] | None = None) -> dict[str, Any]:
    """mAP50-95, mAP50, AR, small-object AP and per-class AP on the evaluation set (``preds``: the
    :func:`eval_predictions` of ``weights`` when already made)."""
    from tasks.evaluation import compute_metrics

    if preds is None:
        preds = eval_predictions(weights, data, frames, settings, threads)
    sm = compute_metrics("bench-eval", [f.truth for f in data.eval], preds, data.classes,
                         [f.camera for f in data.eval], min_instances=1)
    return {
        "map": sm.overall.map, "map50": sm.overall.map50, "ar": sm.overall.ar,
        "small_map": sm.per_size["small"].map, "small_map50": sm.per_size["small"].map50,
        "small_instances": sm.per_size["small"].n_instances,
        "per_class": {c: {"map": m.map, "map50": m.map50, "instances": m.n_instances} for c, m in sm.per_class.items()},
        "per_camera": {c: {"map": m.map, "instances": m.n_instances} for c, m in sm.per_camera.items()},
    }


def _file_digest(path: Path) -> str:
    """Content hash of a weights file (a saved round model is a copy of the file it was evaluated as)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def eval_slice_weights(frames: Sequence[BenchFrame], preds: Sequence[Detections], classes: Sequence[str],
                       settings: Any) -> dict[str, Any]:
    """The error weights a model selects with (``selection.error_weighting``), from its TIDE breakdown on the
    benchmark's evaluation set ``frames`` (predictions ``preds``): the product breaks the champion down on its
    golden set in each round's evaluation and weighs by that; here the evaluation set stands in for it, under the
    configured slice name, with the product's ``evaluation.min_instances`` and ``error_analysis`` thresholds.

    Returns:
        ``{"class": {name: w}, "camera": {id: w}, "source": {...}}`` for ``select(..., slice_weights=)``.
    """
    from tasks.error_analysis import breakdown, selection_weights

    ew, ea = settings.selection.error_weighting, settings.error_analysis
    b = breakdown(ew.slice, [f.truth for f in frames], preds, classes, [f.camera for f in frames],
                  settings.evaluation.min_instances, ea.fg_iou, ea.bg_iou, ea.count_min_confidence)
    return {**selection_weights({ew.slice: b}, ew), "source": {"slice": ew.slice, "evaluated_on": "bench eval set",
                                                               "frames": len(frames)}}


def train_once(cfg: BenchConfig, data_yaml: Path, init: Path | None, epochs: int, seed: int, out_dir: Path,
               yolo_dir: Path, arch: str, loss: dict[str, Any] | None = None) -> tuple[Path, float]:
    """One Ultralytics training in the project's training worker (no MLflow). Returns (last.pt, seconds).

    ``loss``: :func:`tasks.training.cls_loss_spec` of a ``training.cls_loss`` (focal / varifocal / ``cls_pw``)."""
    from detloop.model_arch import arch_source
    from tasks.training import TrainSpec, run_worker

    extra: dict[str, Any] = {} if init is None else {"warmup_epochs": cfg.finetune_warmup_epochs}
    extra.update((loss or {}).get("extra", {}))
    spec = TrainSpec(
        data=str(data_yaml), model=str(init) if init else arch_source(arch), pretrained=str(init) if init else False,
        epochs=epochs, imgsz=cfg.imgsz, batch=cfg.batch, nbs=cfg.batch, optimizer="AdamW",
        lr0=cfg.finetune_lr0 if init else cfg.lr0, workers=2, threads=cfg.threads, device="cpu", seed=seed,
        out_dir=str(out_dir / "ul"), yolo_config_dir=str(yolo_dir), extra=extra,
        cls_loss=(loss or {}).get("cls_loss"),
    )
    done = finished_training(spec)
    if done is not None:  # a run that crashed after this training (the bootstrap is ~40 min on 2 cores)
        return Path(done["last"]), float(done.get("train_seconds") or 0.0)
    t0 = time.time()
    res = run_worker(spec, cfg.timeout_minutes * 60, out_dir / "train.log")
    return Path(res["last"]), time.time() - t0


def finished_training(spec: Any) -> dict[str, Any] | None:
    """The worker's ``result.json`` when a training with exactly ``spec`` already finished in its ``out_dir`` (the
    worker deletes it before starting and writes it last) and its weights are there; else None."""
    out = Path(spec.out_dir)
    try:
        same = json.loads((out / "spec.json").read_text()) == json.loads(json.dumps(asdict(spec)))
        res = json.loads((out / "result.json").read_text())
    except (OSError, ValueError):
        return None
    return res if same and res.get("last") and Path(res["last"]).is_file() else None


def write_data_yaml(path: Path, train: Sequence[str], val: Sequence[str], classes: Sequence[str]) -> Path:
    """An Ultralytics data.yaml over image lists (labels found via ``images`` -> ``labels``)."""
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / "train.txt").write_text("\n".join(train) + "\n")
    (path.parent / "val.txt").write_text("\n".join(val) + "\n")
    path.write_text(yaml.safe_dump({"path": str(path.parent), "train": str(path.parent / "train.txt"),
                                    "val": str(path.parent / "val.txt"), "names": dict(enumerate(classes))}))
    return path


# --------------------------------------------------------------------------------------------
# The runner
# --------------------------------------------------------------------------------------------
class Runner:
    """Runs (and resumes) one benchmark configuration.

    With ``cfg.via_label_studio`` and ``preflight`` the stack's Label Studio and S3 are checked first
    (before the data is rendered or anything trains): a service that is down fails in one line naming it.
    """

    def __init__(self, cfg: BenchConfig, log: Callable[[str], None] = print, preflight: bool = True):
        from detloop.offline import apply_offline_env, ensure_ultralytics_fonts
        from detloop.settings import load_settings

        self.cfg = cfg
        self.log = log
        self.settings = load_settings(REPO / cfg.config if not Path(cfg.config).is_absolute() else cfg.config)
        if cfg.via_label_studio and preflight:
            from benchmarks.al_labelstudio import check_services

            check_services(self.settings)
        apply_offline_env(self.settings)
        ensure_ultralytics_fonts(self.settings)
        self.yolo_dir = self.settings.data_dir / "ultralytics"
        work = Path(cfg.work_dir)
        self.root = (work if work.is_absolute() else REPO / work) / cfg.run_key()
        self.root.mkdir(parents=True, exist_ok=True)
        self.data = self._load_data()
        (self.root / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
        self._frames: dict[str, Frames] = {}
        self._scored: dict[str, tuple[list[Detections], np.ndarray | None]] = {}
        self._oracle: Any = None
        self._eval_preds: tuple[str, list[Detections]] | None = None  # (weights digest, evaluation predictions)

    def _load_data(self) -> BenchData:
        from benchmarks.al_data import load_yolo_dataset, render_world

        if self.cfg.data:
            return load_yolo_dataset(Path(self.cfg.data), self.cfg.sizes.get("val", 16))
        wc = Path(self.cfg.world_config)
        t0 = time.time()
        d = render_world(self.root / "data", wc if wc.is_absolute() else REPO / wc, list(self.settings.classes),
                         self.cfg.world_seed, self.cfg.sizes)
        self.log(f"world data ready in {time.time() - t0:.1f} s: {self.root / 'data'}")
        return d

    @property
    def retire_after(self) -> int | None:
        """Rounds a control frame serves the live estimate before it retires into training (None: never)."""
        after = self.cfg.retire_control_after
        if after is None:
            return self.settings.selection.control_pool_rounds
        return after or None

    def frames(self, split: str) -> Frames:
        if split not in self._frames:
            self._frames[split] = Frames(getattr(self.data, split), self.cfg.imgsz)
        return self._frames[split]

    # ---- paths ---------------------------------------------------------------------------------
    def arm_dir_name(self, arm: str) -> str:
        """Cache directory of an arm: ``default`` is keyed by the configured selection's content too, so
        editing the config's ``selection`` re-runs that arm instead of reusing stale rounds."""
        if arm != "default":
            return arm
        return default_arm_key(self.settings.selection, self.cfg.retire_control_after)

    def _dir(self, arm: str, seed: int) -> Path:
        if arm == "bootstrap":  # shared by runs that differ only in fine-tune settings
            return self.root.parent / "bootstrap" / self.cfg.bootstrap_key() / f"s{seed}"
        return self.root / "runs" / self.arm_dir_name(arm) / f"s{seed}"

    def rec_path(self, arm: str, seed: int, r: int) -> Path:
        return self._dir(arm, seed) / f"r{r}.json"

    def weights_path(self, arm: str, seed: int, r: int) -> Path:
        return self._dir(arm, seed) / f"r{r}.pt"

    def load_record(self, arm: str, seed: int, r: int) -> dict[str, Any] | None:
        p = self.rec_path(arm, seed, r)
        if p.is_file() and self.weights_path(arm, seed, r).is_file():
            return json.loads(p.read_text())
        return None

    def _save(self, rec: dict[str, Any], weights: Path) -> None:
        w = self.weights_path(rec["arm"], rec["seed"], rec["round"])
        w.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(weights, w)
        tmp = self.rec_path(rec["arm"], rec["seed"], rec["round"]).with_suffix(".tmp")
        tmp.write_text(json.dumps(rec, indent=1))
        tmp.replace(self.rec_path(rec["arm"], rec["seed"], rec["round"]))  # record last: it marks completion

    # ---- steps ---------------------------------------------------------------------------------
    def bootstrap(self, seed: int) -> dict[str, Any]:
        rec = self.load_record("bootstrap", seed, 0)
        if rec:
            return rec
        d = self.data
        work = self.root / "work" / "bootstrap" / f"s{seed}"
        if self.cfg.bootstrap_weights:
            last, secs = Path(self.cfg.bootstrap_weights), 0.0
            if not last.is_file():
                raise DataError(f"--bootstrap-weights: no such file {last}")
            self.log(f"seed {seed}: bootstrap model = {last} (not trained here)")
        else:
            y = write_data_yaml(work / "data.yaml", [f.image for f in d.seed], [f.image for f in d.val], d.classes)
            self.log(f"seed {seed}: bootstrap training ({len(d.seed)} frames, {self.cfg.bootstrap_epochs} epochs)")
            last, secs = train_once(self.cfg, y, None, self.cfg.bootstrap_epochs, seed, work, self.yolo_dir,
                                    self.settings.model.arch)
        t0 = time.time()
        metrics = self.evaluate(last)
        rec = {"arm": "bootstrap", "seed": seed, "round": 0, "metrics": metrics,
               "cumulative": dict.fromkeys(COUNT_AXES, 0), "train_seconds": round(secs, 1),
               "eval_seconds": round(time.time() - t0, 1), "load_avg": round(os.getloadavg()[0], 2)}
        self._save(rec, last)
        self.log(f"seed {seed}: bootstrap mAP50-95 {metrics['map']:.4f} mAP50 {metrics['map50']:.4f} ({secs:.0f} s)")
        return rec

    def _score_pool(self, weights: Path) -> tuple[list[Detections], np.ndarray | None]:
        key = str(weights)
        if key not in self._scored:
            ms = self.settings.model
            # keep the bootstrap models' scores (round 1 of every arm of a seed), drop other rounds'
            boot_dir = str(self._dir("bootstrap", 0).parent)
            self._scored = {k: v for k, v in self._scored.items() if k.startswith(boot_dir)}
            self._scored[key] = infer(weights, self.frames("pool"), range(len(self.data.pool)),
                                      ms.scoring_conf_threshold, ms.nms.iou_threshold, ms.max_det,
                                      ms.scoring_max_candidates, self.cfg.threads, True)
        return self._scored[key]

    def pre_annotations(self, weights: Path, idx: Sequence[int]) -> list[Detections]:
        """What the labeller is shown on pool frames ``idx``: ``weights``' boxes above the selection's
        ``conf_threshold`` (the product pre-annotates every task of a round, control frames too)."""
        return self.shown_and_candidates(weights, idx)[0]

    def shown_and_candidates(self, weights: Path, idx: Sequence[int]) -> tuple[list[Detections], list[Detections]]:
        """``weights``' boxes on pool frames ``idx`` split at the selection's ``conf_threshold``: shown (the
        pre-annotations) and the sub-threshold candidates (not shown; the outcome ledger records them)."""
        if not idx:
            return [], []
        ms, thr = self.settings.model, self.settings.selection.conf_threshold
        if str(weights) in self._scored:
            dets = [self._scored[str(weights)][0][i] for i in idx]
        else:
            dets, _ = infer(weights, self.frames("pool"), idx, ms.scoring_conf_threshold, ms.nms.iou_threshold,
                            ms.max_det, ms.scoring_max_candidates, self.cfg.threads, False)
        return [dt[dt.confidence >= thr] for dt in dets], [dt[dt.confidence < thr] for dt in dets]

    def champion_quality(self, arm: str, seed: int, r: int, weights: Path, control_seen: Sequence[int],
                         last: dict[str, Any]) -> float | None:
        """The current model's mAP50 on frames it never trained on, as the product knows it: on the control
        frames ``control_seen`` (labelled, not yet retired into training; when >= 20), else its evaluation-set
        mAP50 (the golden set's role)."""
        if arm != "default":
            return None
        from tasks.evaluation import compute_metrics

        ctl = list(control_seen)
        if len(ctl) >= 20:
            dets, _ = self._score_pool(weights)
            pool = self.data.pool
            sm = compute_metrics("bench-control", [pool[i].truth for i in ctl], [dets[i] for i in ctl],
                                 self.data.classes, [pool[i].camera for i in ctl], min_instances=1)
            return float(sm.overall.map50)
        return float(last["metrics"]["map50"])

    def exemplars(self, weights: Path, labelled: Sequence[int]) -> dict[int, np.ndarray]:
        """Class -> ``(n, D)`` embeddings (by ``weights``) of labelled frames (seed set + ``labelled`` pool
        frames) holding that class."""
        ms = self.settings.model
        _, emb_pool = self._score_pool(weights)
        key = f"seed-emb|{weights}"
        if key not in self._scored:
            self._scored[key] = infer(weights, self.frames("seed"), range(len(self.data.seed)),
                                      ms.scoring_conf_threshold, ms.nms.iou_threshold, ms.max_det,
                                      ms.scoring_max_candidates, self.cfg.threads, True)
        _, emb_seed = self._scored[key]
        if emb_pool is None or emb_seed is None:
            return {}
        rows = [(f.truth.class_id, emb_seed[j]) for j, f in enumerate(self.data.seed)]
        rows += [(self.data.pool[i].truth.class_id, emb_pool[i]) for i in labelled]
        out: dict[int, list[np.ndarray]] = {}
        for cls, e in rows:
            for c in set(int(c) for c in cls):
                out.setdefault(c, []).append(e)
        return {c: np.stack(v) for c, v in out.items()}

    def evaluate(self, weights: Path) -> dict[str, Any]:
        """:func:`evaluate_weights`, keeping the predictions for :meth:`error_weights` of the same model."""
        preds = eval_predictions(weights, self.data, self.frames("eval"), self.settings, self.cfg.threads)
        self._eval_preds = (_file_digest(weights), preds)  # the next selection's model is this one
        return evaluate_weights(weights, self.data, self.frames("eval"), self.settings, self.cfg.threads, preds)

    def error_weights(self, weights: Path) -> dict[str, Any]:
        """:func:`eval_slice_weights` of ``weights`` (the round's current model: the product weighs by its
        champion's breakdown), on the evaluation predictions :meth:`evaluate` made of it in this invocation, or
        inferred again (a resumed run evaluated it in an earlier one)."""
        kept = self._eval_preds
        preds = (kept[1] if kept is not None and kept[0] == _file_digest(weights) else
                 eval_predictions(weights, self.data, self.frames("eval"), self.settings, self.cfg.threads))
        return eval_slice_weights(self.data.eval, preds, self.data.classes, self.settings)

    def _choose(self, arm: str, seed: int, r: int, weights: Path, unlabelled: list[int],
                class_counts: np.ndarray, quality: float | None = None, labelled: Sequence[int] = (),
                ledgers: Sequence[dict[str, Any]] = (),
                ) -> tuple[list[int], list[int], dict[str, Any]]:
        """(pool indices to train on, control indices labelled but not trained on, info)."""
        from detloop.contracts import FrameRef, ScoredFrame
        from tasks.selection import select

        b = self.cfg.budget
        if arm == RANDOM:
            return [unlabelled[i] for i in random_pick(len(unlabelled), b, seed, r)], [], {}
        dets, emb = self._score_pool(weights)
        if arm == TRUTH_ERRORS:
            picks = truth_error_pick(self.pre_annotations(weights, unlabelled),
                                     [self.data.pool[i].truth for i in unlabelled], self.settings.labelling_cost,
                                     b, seed, r)
            return [unlabelled[i] for i in picks], [], {
                "strategy": "truth_errors: most model mistakes per labelling second, by the truth (a ceiling)"}
        sel = selection_settings(arm, self.settings.selection, b, seed)
        pool = self.data.pool
        frames = [ScoredFrame(FrameRef("bench", pool[i].name, "", pool[i].camera, ""), pool[i].width,
                              pool[i].height, dets[i], None if emb is None else emb[i]) for i in unlabelled]
        extra: dict[str, Any] = {}
        if arm == "default":  # the configured selection with everything the product gives it
            from tasks.selection import missing_classes

            ex = (self.exemplars(weights, labelled) if sel.rare_search.enabled
                  and missing_classes(frames, class_counts, sel, len(self.data.classes), quality) else None)
            extra = {"cost": self.settings.labelling_cost, "champion_quality": quality, "class_exemplars": ex,
                     "outcome_rates": fitted_rates(ledgers, sel.cost.calibration)}
            if sel.error_weighting.enabled:  # off by default; its own cache dir (selection_key) when on
                extra["slice_weights"] = self.error_weights(weights)
        res = select(frames, class_counts, sel, round_seed=r, class_names=self.data.classes,
                     num_classes=len(self.data.classes), **extra)
        by_name = {pool[i].name: i for i in unlabelled}
        chosen = [by_name[f.frame.key] for f in res.selected]
        control = [by_name[f.frame.key] for f in res.control]
        return chosen, control, {"strategy": res.report["strategy"], "notes": res.notes,
                                 "selection_settings": sel.model_dump(mode="json"),
                                 "regime": res.report.get("regime"), "rare_search": res.report.get("rare_search"),
                                 "cost": res.report.get("cost"),
                                 **({"error_weighting": res.report["error_weighting"]}
                                    if sel.error_weighting.enabled else {})}

    def pseudo_labels(self, arm: str, seed: int, r: int, weights: Path, candidates: Sequence[int],
                      quality: float | None) -> dict[str, Any] | None:
        """Self-training (``selection.pseudo_labels``, off by default): the champion's confident boxes on the
        round's unlabelled frames (:func:`tasks.pseudo_labels.pseudo_label`) written as this round's labels of
        those frames; they train this fine-tune only and count on no label axis. Returns the report (with the
        ``images`` to add to the train list and the actions a labeller would need to turn them into the truth:
        ``draw`` = objects learned as background) or None when off."""
        from tasks.pseudo_labels import pseudo_label

        sel = self.settings.selection
        if not sel.pseudo_labels.enabled:
            return None
        dets, _ = self._score_pool(weights)
        res = pseudo_label([dets[i] for i in candidates], sel.pseudo_labels, quality, sel.regime.weak_below,
                           self.cfg.budget, seed * 1000 + r)
        root = self._dir(arm, seed) / "pseudo" / f"r{r}"
        img_dir, lbl_dir = root / "images", root / "labels"
        img_dir.mkdir(parents=True, exist_ok=True)
        lbl_dir.mkdir(parents=True, exist_ok=True)
        images: list[str] = []
        fix = LabelActions()
        for k, lab in zip(res.indices, res.labels, strict=True):
            f = self.data.pool[candidates[k]]
            link = img_dir / labelled_name(f)
            if not link.exists():
                link.symlink_to(Path(f.image).resolve())
            (lbl_dir / f"{link.stem}.txt").write_text(lab.to_yolo_txt(f.width, f.height))
            images.append(str(link))
            fix = fix + count_actions(lab, f.truth, self.settings.labelling_cost)
        report = {**res.to_dict(), "images": images, "actions_to_truth": fix.to_dict()}
        self.log(f"{arm} seed {seed} round {r}: pseudo-labels on {report['frames']} of {report['qualifying']} "
                 f"qualifying frames ({report['boxes']} boxes; to reach the truth: {fix.to_dict()})"
                 + (f"; {res.stood_down}" if res.stood_down else ""))
        return report

    def oracle(self) -> Any:
        """The Label Studio oracle of ``--via-label-studio`` (built on first use)."""
        if self._oracle is None:
            from benchmarks.al_labelstudio import LabelStudioOracle, project_title

            title = self.cfg.label_studio_project or project_title(self.cfg.run_key())
            self._oracle = LabelStudioOracle(self.settings, title, self.data.classes, self.cfg.noise, log=self.log)
        return self._oracle

    def label(self, arm: str, seed: int, r: int, new: Sequence[int], control: Sequence[int],
              ) -> tuple[list[Detections], dict[str, Any]]:
        """The annotator's labels of a round's paid frames (``new`` then ``control``) and how they came."""
        frames = [self.data.pool[i] for i in (*new, *control)]
        nc = len(self.data.classes)
        t0 = time.perf_counter()
        if not frames:
            return [], {"labels_via": "none", "label_seconds": 0.0}
        if not self.cfg.via_label_studio:
            labels = [annotate(f, self.cfg.noise, seed, nc) for f in frames]
            return labels, {"labels_via": "direct", "label_seconds": round(time.perf_counter() - t0, 4)}
        oracle = self.oracle()
        labels = oracle.label(frames, seed, r, self.arm_dir_name(arm), control={self.data.pool[i].name for i in control})
        return labels, {"labels_via": "label-studio", "label_seconds": round(time.perf_counter() - t0, 4),
                        "label_studio": oracle.last_report}

    def run_arm(self, arm: str, seed: int) -> list[dict[str, Any]]:
        """Rounds 1..R of one arm and seed (cached rounds are reused)."""
        boot = self.bootstrap(seed)
        d, nc = self.data, len(self.data.classes)
        recs = [boot]
        trained: list[int] = []
        control_all: list[int] = []
        weights = self.weights_path("bootstrap", seed, 0)
        arm_dir = self._dir(arm, seed)
        seed_counts = np.bincount(np.concatenate([f.truth.class_id for f in d.seed] + [np.zeros(0, np.int64)]),
                                  minlength=nc)
        labelled_counts = seed_counts.copy()
        cum = dict.fromkeys(COUNT_AXES, 0)

        acts = {"trained": LabelActions(), "paid": LabelActions()}
        ctl_rounds: dict[int, list[int]] = {}  # round -> its control frames (retire into training later)
        ctl_actions: dict[int, LabelActions] = {}
        retired: list[int] = []
        for r in range(1, self.cfg.rounds + 1):
            rec = self.load_record(arm, seed, r)
            if rec is not None:
                trained += rec["new_frames_idx"]
                control_all += rec["control_idx"]
                retired += rec.get("retired_control_idx", [])
                for k in retiring_controls(ctl_rounds, r, self.retire_after):
                    ctl_rounds.pop(k)
                    ctl_actions.pop(k, None)
                ctl_rounds[r] = rec["control_idx"]
                ctl_actions[r] = LabelActions(**rec.get("actions_control", {}))
                labelled_counts = np.array(rec["labelled_class_counts"])
                cum = rec["cumulative"]
                acts = {k: LabelActions(**v) for k, v in rec.get("cumulative_actions", {}).items()} or acts
                weights = self.weights_path(arm, seed, r)
                recs.append(rec)
                continue
            t0 = time.time()
            done = set(trained) | set(control_all)
            unlabelled = [i for i in range(len(d.pool)) if i not in done]
            if arm == CONTROL:
                new, control, info = [], [], {}
            else:
                live = [i for k in sorted(ctl_rounds) for i in ctl_rounds[k]]  # labelled, not trained on yet
                quality = self.champion_quality(arm, seed, r, weights, live, recs[-1])
                new, control, info = self._choose(arm, seed, r, weights, unlabelled, labelled_counts, quality,
                                                  trained, [rc.get("label_outcomes") or {} for rc in recs[1:]])
            t_sel = time.time() - t0
            # the annotator labels every chosen frame (control too: it is paid for)
            lbl_dir = arm_dir / "labelled" / "labels"
            img_dir = arm_dir / "labelled" / "images"
            lbl_dir.mkdir(parents=True, exist_ok=True)
            img_dir.mkdir(parents=True, exist_ok=True)
            drawn = {"new": 0, "control": 0}
            labels, how = self.label(arm, seed, r, new, control)
            pre, cand = self.shown_and_candidates(weights, [*new, *control])
            act_new, act_ctl = LabelActions(), LabelActions()
            ledger = OutcomeTally()  # what the labeller did with the shown boxes, as the product records it
            for k, ann in enumerate(labels):
                kind = "new" if k < len(new) else "control"
                drawn[kind] += len(ann)
                i = (new[k] if kind == "new" else control[k - len(new)])
                a = count_actions(pre[k], ann, self.settings.labelling_cost)
                ledger.add_frame(pre[k], ann, self.settings.labelling_cost, cand[k])
                if kind == "new":
                    act_new = act_new + a
                else:
                    act_ctl = act_ctl + a
                f = d.pool[i]
                link = img_dir / labelled_name(f)
                if not link.exists():
                    link.symlink_to(Path(f.image).resolve())
                # control labels are written too: they join training when the frame retires (never before)
                (lbl_dir / f"{Path(labelled_name(f)).stem}.txt").write_text(ann.to_yolo_txt(f.width, f.height))
                if kind == "new":
                    labelled_counts = labelled_counts + np.bincount(ann.class_id, minlength=nc)
            # control frames retire into training once they served their window's live estimate
            retire_now = retiring_controls(ctl_rounds, r, self.retire_after)
            ret_act = LabelActions()
            for k in sorted(retire_now):
                ret_act = ret_act + ctl_actions.get(k, LabelActions())
            retire_idx = [i for k in sorted(retire_now) for i in ctl_rounds.pop(k)]
            for k in retire_now:
                ctl_actions.pop(k, None)
            retired += retire_idx
            ctl_rounds[r] = list(control)
            ctl_actions[r] = act_ctl
            trained += new
            control_all += control
            truth_new = int(sum(len(d.pool[i].truth) for i in new))
            truth_ctl = int(sum(len(d.pool[i].truth) for i in control))
            truth_ret = int(sum(len(d.pool[i].truth) for i in retire_idx))
            if retire_idx:
                labelled_counts = labelled_counts + np.bincount(
                    np.concatenate([d.pool[i].truth.class_id for i in retire_idx]), minlength=nc)
            cum = {"frames": cum["frames"] + len(new) + len(retire_idx), "boxes": cum["boxes"] + truth_new + truth_ret,
                   "frames_paid": cum["frames_paid"] + len(new) + len(control),
                   "boxes_paid": cum["boxes_paid"] + truth_new + truth_ctl}
            acts = {"trained": acts["trained"] + act_new + ret_act, "paid": acts["paid"] + act_new + act_ctl}
            train_imgs = [f.image for f in d.seed] + [str(img_dir / labelled_name(d.pool[i]))
                                                      for i in [*trained, *retired]]
            paid_now = {*new, *control}
            pseudo = (self.pseudo_labels(arm, seed, r, weights, [i for i in unlabelled if i not in paid_now],
                                         quality) if arm == "default" else None)
            if pseudo is not None:
                train_imgs += pseudo.pop("images")
            work = self.root / "work" / self.arm_dir_name(arm) / f"s{seed}" / f"r{r}"
            y = write_data_yaml(work / "data.yaml", train_imgs, [f.image for f in d.val], d.classes)
            last, secs = train_once(self.cfg, y, weights, self.cfg.epochs, seed, work, self.yolo_dir,
                                    self.settings.model.arch)
            t1 = time.time()
            metrics = self.evaluate(last)
            rare_new = np.bincount(np.concatenate([d.pool[i].truth.class_id for i in new] + [np.zeros(0, np.int64)]),
                                   minlength=nc)
            rec = {
                "arm": arm, "seed": seed, "round": r, "metrics": metrics, "cumulative": cum,
                "new_frames": len(new), "new_boxes_truth": truth_new, "new_boxes_drawn": drawn["new"],
                "control_frames": len(control), "control_boxes_truth": truth_ctl,
                "new_boxes_per_class": {c: int(rare_new[k]) for k, c in enumerate(d.classes)},
                "labelled_class_counts": labelled_counts.astype(int).tolist(),
                "new_frames_idx": [int(i) for i in new], "control_idx": [int(i) for i in control],
                "new_frame_names": [d.pool[i].name for i in new], "selection": info,
                "retired_control_idx": [int(i) for i in retire_idx],
                **({"pseudo_labels": pseudo} if pseudo is not None else {}),
                "actions_new": act_new.to_dict(), "actions_control": act_ctl.to_dict(),
                "cumulative_actions": {k: v.to_dict() for k, v in acts.items()},
                "label_outcomes": ledger.to_dict(),
                **how, "select_seconds": round(t_sel, 1), "train_seconds": round(secs, 1),
                "eval_seconds": round(time.time() - t1, 1), "load_avg": round(os.getloadavg()[0], 2),
            }
            self._save(rec, last)
            weights = self.weights_path(arm, seed, r)
            recs.append(rec)
            rec = price(rec, self.settings.labelling_cost)
            self.log(f"{arm} seed {seed} round {r}: +{len(new)} frames / +{truth_new} boxes "
                     f"(control {len(control)}), mAP50-95 {metrics['map']:.4f}, mAP50 {metrics['map50']:.4f} "
                     f"[select {t_sel:.0f} s, train {secs:.0f} s]")
        return recs

    def run(self) -> dict[str, Any]:
        """All arms (+ the no-new-labels control) for all seeds, seed-major; then :func:`summarize`."""
        arms = [*check_arms(self.cfg.arms), CONTROL]
        t0 = time.time()
        for seed in self.cfg.seeds:
            for arm in arms:
                self.run_arm(arm, seed)
        return summarize(self, arms, time.time() - t0)

    def records(self, arm: str, seed: int) -> list[dict[str, Any]] | None:
        """Cached records of an arm/seed (bootstrap first), or None when a round is missing."""
        boot = self.load_record("bootstrap", seed, 0)
        recs = [self.load_record(arm, seed, r) for r in range(1, self.cfg.rounds + 1)]
        if boot is None or any(r is None for r in recs):
            return None
        return [price(boot, self.settings.labelling_cost),
                *(price(r, self.settings.labelling_cost) for r in recs)]  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Summary, plots, JSON
# --------------------------------------------------------------------------------------------
def fitted_rates(ledgers: Sequence[dict[str, Any]], calibration: Any) -> OutcomeRates | None:
    """Outcome rates fitted on the last ``calibration.rounds`` rounds' ledgers (the round records'
    ``label_outcomes``, oldest first), as the selection flow fits them; None without calibration or ledgers."""
    if calibration is None:
        return None
    recent = [OutcomeTally.from_dict(g) for g in ledgers if g][-calibration.rounds:]
    if not recent:
        return None
    return fit_outcome_rates(sum(recent[1:], recent[0]), calibration.prior_boxes)


def rare_class_of(data: BenchData, wanted: str | None) -> str:
    if wanted:
        if wanted not in data.classes:
            raise DataError(f"rare class {wanted!r} is not one of {data.classes}")
        return wanted
    counts = np.bincount(np.concatenate([f.truth.class_id for f in data.eval]), minlength=len(data.classes))
    return data.classes[int(np.argmin(counts))]


def final_of(finals: Sequence[dict[str, Any]], rare: str) -> dict[str, Any]:
    """An arm's final metrics (mean, sd over seeds) and boxes from each seed's last round record."""
    out: dict[str, Any] = {k: final_summary([Curve(np.array([f["cumulative"]["frames"] + 1.0]),
                                                   np.array([_nan(metric_value(f["metrics"], k))])) for f in finals])
                           for k in ("map", "map50", "small_map", f"class.{rare}.map")}
    out["boxes_trained_mean"] = float(np.mean([f["cumulative"]["boxes"] for f in finals]))
    out["boxes_paid_mean"] = float(np.mean([f["cumulative"]["boxes_paid"] for f in finals]))
    return out


def efficiency_of(recs: dict[str, dict[int, list[dict[str, Any]]]], arms: Sequence[str], seeds: Sequence[int],
                  metric: str, rare: str) -> dict[str, Any]:
    """Label efficiency of each arm against random on every axis, headline metric and rare class, with the
    bootstrap interval over ``seeds`` (each seed's curves paired: same bootstrap model, same pool)."""
    eff: dict[str, Any] = {}
    if not seeds or RANDOM not in arms:
        return eff
    for a in arms:
        if a in (RANDOM, CONTROL):
            continue
        eff[a] = {}
        for axis in AXES:
            for met in (metric, f"class.{rare}.map"):
                try:
                    rc = [curves_from_records(recs[RANDOM][s], axis, met) for s in seeds]
                    sc = [curves_from_records(recs[a][s], axis, met) for s in seeds]
                    eff[a][f"{axis}:{met}"] = efficiency_ci(rc, sc).to_dict()
                except ValueError as err:
                    eff[a][f"{axis}:{met}"] = {"text": "n/a", "error": str(err)}
    return eff


def round_means(recs: dict[str, dict[int, list[dict[str, Any]]]], arms: Sequence[str], seeds: Sequence[int],
                rounds: int) -> dict[str, Any]:
    """Mean mAP50-95 per round of each arm over ``seeds`` (against the no-new-labels control)."""
    if not seeds or CONTROL not in arms:
        return {}
    return {a: {r: _r(float(np.nanmean([_nan(recs[a][s][r]["metrics"]["map"]) for s in seeds])))
                for r in range(0, rounds + 1)} for a in arms}


def records_from_rows(rows: Sequence[dict[str, Any]], rare: str) -> dict[int, list[dict[str, Any]]]:
    """Round records per seed rebuilt from a result JSON's ``rows`` (the fields the summary reads)."""
    out: dict[int, list[dict[str, Any]]] = {}
    for row in sorted(rows, key=lambda q: (q["seed"], q["round"])):
        out.setdefault(row["seed"], []).append({
            "round": row["round"], "cumulative": {k: row.get(k, 0) for k in AXES},
            "metrics": {"map": row["map"], "map50": row["map50"], "small_map": row["small_map"],
                        "per_class": {rare: {"map": row["rare_map"], "map50": row["rare_map50"]}}}})
    return out


def _default_key(summary: dict[str, Any]) -> str | None:
    """The default arm's cache key of a result (results written before ``default_key``: from its selection key
    and config)."""
    if summary.get("default_key"):
        return str(summary["default_key"])
    sel = summary.get("selection_key")
    if sel is None:
        return None
    after = (summary.get("config") or {}).get("retire_control_after")
    return f"default-{sel}" + ("" if after is None else f"-retire{after}")


def paid_frame_cost(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Labelling seconds per paid frame of one arm from its rows (cumulative ``frames_paid`` / ``seconds_paid``
    per seed and round): each round's new seconds over its new paid frames (selected and control), as a mean over
    seeds, and over all rounds (per seed, then the mean). What a selection saves or spends per frame it sends to
    labelling, next to random's; ``None`` where an arm paid no frames (no new labels)."""
    by_seed: dict[int, dict[int, dict[str, Any]]] = {}
    for q in rows:
        by_seed.setdefault(q["seed"], {})[q["round"]] = q
    per_round: dict[int, list[float]] = {}
    overall: list[float] = []
    for rounds in by_seed.values():
        prev_f = prev_s = 0.0
        for r in sorted(rounds):
            f, sec = float(rounds[r].get("frames_paid") or 0), float(rounds[r].get("seconds_paid") or 0)
            if r >= 1 and f > prev_f:
                per_round.setdefault(r, []).append((sec - prev_s) / (f - prev_f))
            prev_f, prev_s = f, sec
        if prev_f > 0:
            overall.append(prev_s / prev_f)
    return {"all_rounds": _r(float(np.mean(overall)), 1) if overall else None,
            "by_round": {r: _r(float(np.mean(v)), 1) for r, v in sorted(per_round.items())}}


def merge_summaries(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One summary from result JSONs of the same run (same run key) that hold different seeds: seeds run in
    separate invocations, on separate machines, or whose cache is gone. Rows are kept as they were measured;
    finals, efficiencies (intervals over all seeds) and round means are recomputed. Refuses a mix of runs or
    a seed of an arm present twice."""
    if not summaries:
        raise ValueError("nothing to merge")
    first = summaries[0]
    keys = {s["run_key"] for s in summaries}
    if len(keys) > 1:
        raise DataError(f"cannot merge results of different runs (run keys {sorted(keys)}): settings differ")
    schemes = {s.get("key_scheme", 1) for s in summaries if "default" in s["arms"]}
    if len(schemes) > 1:
        raise DataError("cannot tell whether these results' default arms are the same selection: some were keyed "
                        "before 2026-12-05 (every selection field hashed), some after (null options left out); "
                        "re-summarise the older ones with `bench al --summary-only` after renaming their cache's "
                        "runs/default-<old key> directory to the key this code gives, or pair them with `bench "
                        "al-compare`")
    variants = sorted({_default_key(s) for s in summaries if "default" in s["arms"]} - {None})
    if len(variants) > 1:  # e.g. seed 0 with value per second on, seed 1 without: same run key, other arm
        raise DataError(f"cannot merge results whose default arm differs (selection {', '.join(variants)}): "
                        "compare them with `bench al-compare` instead")
    rare, metric, rounds = first["rare_class"], first["config"]["metric"], first["config"]["rounds"]
    arms = list(dict.fromkeys(a for s in summaries for a in s["arms"]))
    recs: dict[str, dict[int, list[dict[str, Any]]]] = {a: {} for a in arms}
    rows: dict[str, list[dict[str, Any]]] = {a: [] for a in arms}
    for s in summaries:
        if s["config"]["rounds"] != rounds:
            raise DataError(f"cannot merge {s['config']['rounds']} rounds with {rounds}")
        for a, d in s["arms"].items():
            done = set(d["seeds_complete"])
            for seed, rs in records_from_rows([q for q in d["rows"] if q["seed"] in done], rare).items():
                if seed in recs[a]:
                    raise DataError(f"arm {a!r} seed {seed} is in more than one result")
                recs[a][seed] = rs
            rows[a] += [q for q in d["rows"] if q["seed"] in done]
    seeds_all = sorted(set.intersection(*(set(recs[a]) for a in arms)))
    boot = {k: {str(seed): v for s in summaries for seed, v in (s["bootstrap"].get(k) or {}).items()}
            for k in ("map50_by_seed", "map_by_seed")}
    per_arm = {a: {"seeds_complete": sorted(recs[a]), "rows": rows[a], "seconds_per_paid_frame": paid_frame_cost(rows[a]),
                   **({"final": final_of([recs[a][seed][-1] for seed in sorted(recs[a])], rare)} if recs[a] else {})}
               for a in arms}
    return {**first, "date": time.strftime("%Y-%m-%d"),
            "config": {**first["config"], "seeds": sorted({x for a in arms for x in recs[a]})},
            "bootstrap": {**first["bootstrap"], **boot,
                          "cold_start_warning": "; ".join(filter(None, (s["bootstrap"].get("cold_start_warning")
                                                                        for s in summaries))) or None},
            "seeds_complete_all_arms": seeds_all, "arms": per_arm,
            "efficiency_vs_random": efficiency_of(recs, arms, seeds_all, metric, rare),
            "map_by_round_mean": round_means(recs, arms, seeds_all, rounds),
            "merged_from": [{"date": s.get("date"), "seeds": s["seeds_complete_all_arms"],
                             "wall_seconds": s.get("wall_seconds_this_invocation")} for s in summaries],
            "train_seconds_total_cached": round(sum(q.get("train_seconds") or 0 for a in arms for q in rows[a]), 1)}


def summarize(runner: Runner, arms: Sequence[str], run_seconds: float) -> dict[str, Any]:
    """Curves, efficiency per axis, control comparison and plots from the cached records."""
    cfg, data = runner.cfg, runner.data
    rare = rare_class_of(data, cfg.rare_class)
    recs = {a: {s: runner.records(a, s) for s in cfg.seeds} for a in arms}
    complete = {a: [s for s in cfg.seeds if recs[a][s] is not None] for a in arms}
    seeds_all = [s for s in cfg.seeds if all(s in complete[a] for a in arms)]
    per_arm: dict[str, Any] = {}
    for a in arms:
        rows = []
        for s in complete[a]:
            for r in recs[a][s]:  # type: ignore[union-attr]
                m = r["metrics"]
                rows.append({"seed": s, "round": r["round"], **{k: r["cumulative"].get(k, 0) for k in AXES},
                             "map": _r(m["map"]), "map50": _r(m["map50"]), "small_map": _r(m["small_map"]),
                             "rare_map": _r(metric_value(m, f"class.{rare}.map")),
                             "rare_map50": _r(metric_value(m, f"class.{rare}.map50")),
                             "rare_boxes_added": (r.get("new_boxes_per_class") or {}).get(rare, 0),
                             "train_seconds": r.get("train_seconds")})
        per_arm[a] = {"seeds_complete": complete[a], "rows": rows, "seconds_per_paid_frame": paid_frame_cost(rows)}
        if complete[a]:
            per_arm[a]["final"] = final_of([recs[a][s][-1] for s in complete[a]], rare)  # type: ignore[index]
    eff = efficiency_of(recs, arms, seeds_all, cfg.metric, rare)  # type: ignore[arg-type]
    control = round_means(recs, arms, seeds_all, cfg.rounds)  # type: ignore[arg-type]
    # rounds cached before labels_via was recorded were all labelled directly
    via = Counter(r.get("labels_via", "direct") for a in arms for s in complete[a]
                  for r in recs[a][s][1:])  # type: ignore[index]
    boots = {s: runner.load_record("bootstrap", s, 0) for s in cfg.seeds}
    boot_map50 = {s: _r(b["metrics"]["map50"]) for s, b in boots.items() if b}
    cold = [s for s, v in boot_map50.items() if v is None or v < COLD_START_MAP50]
    bootstrap = {"map50_by_seed": boot_map50,
                 "map_by_seed": {s: _r(b["metrics"]["map"]) for s, b in boots.items() if b},
                 "cold_start_warning": (f"bootstrap mAP50 < {COLD_START_MAP50} for seeds {cold}: uncertainty scores "
                                        "of a near-untrained model are noise (cold start); raise --bootstrap-epochs "
                                        "or --seed-frames before trusting a comparison") if cold else None}
    out = {
        "benchmark": "active_learning",
        "bootstrap": bootstrap,
        "date": time.strftime("%Y-%m-%d"),
        "run_key": cfg.run_key(),
        "key_scheme": KEY_SCHEME,
        "selection_key": selection_key(runner.settings.selection) if hasattr(runner, "settings") else None,
        "default_key": (default_arm_key(runner.settings.selection, cfg.retire_control_after)
                        if hasattr(runner, "settings") else None),
        "config": asdict(cfg),
        "source": {k: v for k, v in data.source.items()},
        "data": data.stats(),
        "rare_class": rare,
        "labels_via": {"this_invocation": "label-studio" if cfg.via_label_studio else "direct",
                       "rounds": dict(sorted(via.items()))},
        "x_axes": "labels ADDED beyond the shared seed set (frames / oracle boxes); *_paid include the default "
                  "arm's control frames (labelled, never trained on)",
        "seeds_complete_all_arms": seeds_all,
        "arms": per_arm,
        "efficiency_vs_random": eff,
        "map_by_round_mean": control,
        "machine": {"cpus": os.cpu_count(), "threads": cfg.threads, "python": platform.python_version(),
                    "load_avg_at_end": [round(v, 2) for v in os.getloadavg()]},
        "run_seconds_this_invocation": round(run_seconds, 1),
        "train_seconds_total_cached": round(sum(r.get("train_seconds") or 0 for a in per_arm.values()
                                                for r in a["rows"]), 1),
    }
    return out


def _r(v: Any, nd: int = 4) -> float | None:
    return None if v is None or not np.isfinite(v) else round(float(v), nd)


def _nan(v: float | None) -> float:
    return float("nan") if v is None else float(v)


def plot(summary: dict[str, Any], curve_png: Path, rare_png: Path) -> None:
    """Learning curves (frames, boxes, rounds incl. the control) and the rare-class view, bands over seeds."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    arms = summary["arms"]
    seeds = summary["seeds_complete_all_arms"]
    rare = summary["rare_class"]

    def series(a: str, axis: str, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        rows = [r for r in arms[a]["rows"] if r["seed"] in seeds]
        if not rows:
            return None
        by_seed: dict[int, list[dict[str, Any]]] = {}
        for r in rows:
            by_seed.setdefault(r["seed"], []).append(r)
        curves = []
        for rs in by_seed.values():
            rs = sorted(rs, key=lambda r: r["round"])
            x = np.array([r["round"] if axis == "round" else r[axis] for r in rs], float)
            y = np.array([_nan(r[key]) for r in rs], float)
            if axis != "round" and np.any(np.diff(x) <= 0):  # control arm: x stays 0
                return None
            curves.append(Curve(x, y))
        mc, sd = mean_curve(curves)
        return mc.x, mc.y, sd

    def panel(ax: Any, axis: str, key: str, title: str) -> None:
        for a in arms:
            s = series(a, axis, key)
            if s is None:
                continue
            x, y, sd = s
            ls = "--" if a == CONTROL else "-"
            ax.plot(x, y, ls, marker="o", ms=3, label=a)
            ax.fill_between(x, y - sd, y + sd, alpha=0.15)
        ax.set_xlabel({"frames": "frames labelled (added)", "boxes": "boxes labelled (added)",
                       "seconds_paid": "labelling seconds paid (cost model)",
                       "round": "round (0 = bootstrap)"}[axis])
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)

    fig, axs = plt.subplots(1, 4, figsize=(18, 4), dpi=100)
    panel(axs[0], "frames", "map", "mAP50-95 vs frames")
    panel(axs[1], "boxes", "map", "mAP50-95 vs boxes")
    panel(axs[2], "seconds_paid", "map", "mAP50-95 vs labelling seconds paid")
    panel(axs[3], "round", "map", "mAP50-95 vs round (no-new-labels control dashed)")
    axs[0].set_ylabel("mAP50-95 (benchmark eval set)")
    axs[3].legend(fontsize=8)
    fig.suptitle(f"Active-learning benchmark: mean ± sd over seeds {seeds}", fontsize=10)
    fig.tight_layout()
    fig.savefig(curve_png)
    plt.close(fig)

    fig, axs = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    panel(axs[0], "frames", "rare_map", f"AP50-95 of rare class '{rare}' vs frames")
    for a in arms:
        rows = sorted((r for r in arms[a]["rows"] if r["seed"] in seeds and r["round"] >= 1),
                      key=lambda r: (r["round"], r["seed"]))
        if not rows or a == CONTROL:
            continue
        rounds = sorted({r["round"] for r in rows})
        cum = [np.mean([sum(q["rare_boxes_added"] for q in rows if q["seed"] == s and q["round"] <= k)
                        for s in seeds]) for k in rounds]
        xs = [np.mean([r["frames"] for r in rows if r["round"] == k]) for k in rounds]
        axs[1].plot(xs, cum, marker="o", ms=3, label=a)
    axs[1].set_xlabel("frames labelled (added)")
    axs[1].set_ylabel(f"'{rare}' boxes labelled")
    axs[1].grid(alpha=0.3)
    axs[1].legend(fontsize=8)
    axs[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(rare_png)
    plt.close(fig)


def run_benchmark(cfg: BenchConfig, out_json: Path, curve_png: Path, rare_png: Path,
                  summary_only: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the benchmark, write the JSON and the two PNGs; returns the summary."""
    t0 = time.time()
    runner = Runner(cfg, log, preflight=not summary_only)
    if summary_only:
        arms = [*check_arms(cfg.arms), CONTROL]
        summary = summarize(runner, arms, 0.0)
    else:
        summary = runner.run()
    summary["wall_seconds_this_invocation"] = round(time.time() - t0, 1)
    return write_summary(summary, out_json, curve_png, rare_png, work_dir=str(runner.root))


def write_summary(summary: dict[str, Any], out_json: Path, curve_png: Path, rare_png: Path,
                  **outputs: str) -> dict[str, Any]:
    """Record the outputs in ``summary``, write its JSON and (with a seed complete in every arm) the two PNGs."""
    summary["outputs"] = {"json": str(out_json), "curve_png": str(curve_png), "rare_png": str(rare_png), **outputs}
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(summary, indent=1, default=str))
    if summary["seeds_complete_all_arms"]:
        plot(summary, curve_png, rare_png)
    return summary


def merge_results(paths: Sequence[Path], out_json: Path) -> dict[str, Any]:
    """Merge result JSONs of one run holding different seeds (:func:`merge_summaries`); write the JSON and PNGs."""
    summary = merge_summaries([json.loads(Path(p).read_text()) for p in paths])
    summary["merged_from"] = [{**m, "json": str(p)} for m, p in zip(summary["merged_from"], paths, strict=True)]
    return write_summary(summary, out_json, out_json.with_name(out_json.stem + "_curve.png"),
                         out_json.with_name(out_json.stem + "_rare.png"))


COMPARED = ("map", "map50", "rare_map", "small_map")


def compare_summaries(base: dict[str, Any], variant: dict[str, Any], arm: str = "default", n_boot: int = 2000,
                      level: float = 0.95) -> dict[str, Any]:
    """The same arm in two results of one run (same run key: same data, bootstrap models and fine-tune
    settings), e.g. the default selection with and without an option. Per round, the variant minus the base
    on mAP50-95, mAP50, rare-class AP and small AP, per seed (paired: same bootstrap model and pool) with
    the mean and a bootstrap interval over seeds; and the variant's label efficiency against the base arm on
    every axis (how many of the base's labels the variant needs to reach the base's final mAP)."""
    if base["run_key"] != variant["run_key"]:
        raise DataError(f"cannot compare results of different runs (run keys {base['run_key']}, "
                        f"{variant['run_key']}): data, bootstrap or fine-tune settings differ")
    for name, s in (("base", base), ("variant", variant)):
        if arm not in s["arms"]:
            raise DataError(f"arm {arm!r} is not in the {name} result (arms: {sorted(s['arms'])})")
    rare, metric = base["rare_class"], base["config"]["metric"]
    b = records_from_rows(base["arms"][arm]["rows"], rare)
    v = records_from_rows(variant["arms"][arm]["rows"], rare)
    done = set(base["arms"][arm]["seeds_complete"]) & set(variant["arms"][arm]["seeds_complete"])
    seeds = sorted(s for s in done if len(b[s]) == len(v[s]))
    if not seeds:
        raise DataError(f"no seed of arm {arm!r} is complete in both results with the same rounds")
    rows = {(q["seed"], q["round"]): q for q in base["arms"][arm]["rows"]}
    vrows = {(q["seed"], q["round"]): q for q in variant["arms"][arm]["rows"]}
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(seeds), (n_boot, len(seeds)))
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    by_round = []
    for r in range(len(b[seeds[0]])):
        row: dict[str, Any] = {"round": r}
        for k in COMPARED:
            pairs = [(rows[(s, r)].get(k), vrows[(s, r)].get(k)) for s in seeds]
            d = np.array([np.nan if x is None or y is None else y - x for x, y in pairs], dtype=float)
            ok = not np.isnan(d).any()
            boot = d[idx].mean(axis=1) if ok and len(seeds) > 1 else None
            row[k] = {"base_mean": _mean_of([x for x, _ in pairs]), "variant_mean": _mean_of([y for _, y in pairs]),
                      "diff_mean": _r(float(d.mean())) if ok else None,
                      "diff_by_seed": {s: _r(float(x)) for s, x in zip(seeds, d, strict=True)} if ok else None,
                      "ci": ([_r(float(np.quantile(boot, lo_q))), _r(float(np.quantile(boot, hi_q)))]
                             if boot is not None else None)}
        by_round.append(row)
    eff = efficiency_of({RANDOM: {s: b[s] for s in seeds}, arm: {s: v[s] for s in seeds}}, [RANDOM, arm], seeds,
                        metric, rare)[arm]
    return {"benchmark": "active_learning_compare", "date": time.strftime("%Y-%m-%d"), "run_key": base["run_key"],
            "arm": arm, "rare_class": rare, "seeds": seeds, "level": level,
            "base": {"selection_key": base.get("selection_key"), "date": base.get("date")},
            "variant": {"selection_key": variant.get("selection_key"), "date": variant.get("date")},
            "by_round": by_round, "efficiency_vs_base": eff,
            "notes": ([f"{len(seeds)} seeds: a bootstrap over so few seeds understates the spread"]
                      if len(seeds) < 5 else [])}


def _mean_of(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return _r(float(np.mean(known))) if known else None


def compare_table(cmp: dict[str, Any]) -> str:
    """Markdown: per round, base and variant means and the difference with its interval (mAP50-95, rare AP)."""
    rare = cmp["rare_class"]
    lines = [f"| round | base mAP50-95 | variant | diff [{int(cmp['level'] * 100)} % CI] | per seed | "
             f"base AP {rare} | variant | diff [CI] |", "|---|---|---|---|---|---|---|---|"]

    def cell(x: dict[str, Any]) -> str:
        if x["diff_mean"] is None:
            return "n/a"
        return f"{x['diff_mean']:+.4f}" + (f" [{x['ci'][0]:+.4f}, {x['ci'][1]:+.4f}]" if x["ci"] else "")

    for row in cmp["by_round"]:
        m, q = row["map"], row["rare_map"]
        seeds = ", ".join(f"{d:+.3f}" for d in (m["diff_by_seed"] or {}).values())
        lines.append(f"| {row['round']} | {_f4(m['base_mean'])} | {_f4(m['variant_mean'])} | {cell(m)} | {seeds} | "
                     f"{_f4(q['base_mean'])} | {_f4(q['variant_mean'])} | {cell(q)} |")
    return "\n".join(lines)


def _f4(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def compare_results(base: Path, variant: Path, out_json: Path, arm: str = "default") -> dict[str, Any]:
    """:func:`compare_summaries` of two result JSONs, written to ``out_json``."""
    cmp = compare_summaries(json.loads(Path(base).read_text()), json.loads(Path(variant).read_text()), arm)
    cmp["base"]["json"], cmp["variant"]["json"] = str(base), str(variant)
    return write_result(out_json, cmp)


def markdown_table(summary: dict[str, Any]) -> str:
    """The docs/benchmarks.md table: final metrics and label efficiency per arm on all four label axes
    (frames / boxes trained on, and paid for: the default arm's control frames are paid, not trained on)."""
    m = summary["config"]["metric"]
    rare = summary["rare_class"]
    lines = [f"| arm | final mAP50-95 (mean ± sd) | final mAP50 | final AP {rare} | small AP | boxes added | "
             f"s / paid frame | efficiency frames | boxes | frames paid | boxes paid | seconds | seconds paid |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for a, d in summary["arms"].items():
        f = d.get("final")
        if not f:
            continue

        def ms(k: str, f: dict[str, Any] = f) -> str:
            v = f[k]
            return "n/a" if v["mean"] is None else (f"{v['mean']:.4f}" + (f" ± {v['std']:.4f}" if v["std"] else ""))

        e = summary["efficiency_vs_random"].get(a, {})

        def et(axis: str, e: dict[str, Any] = e, a: str = a) -> str:
            x = e.get(f"{axis}:{m}")
            if not x:
                return "(baseline)" if a == RANDOM else "-"
            ci = x.get("ci")
            return x["text"] + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")

        spf = paid_frame_cost(d.get("rows", []))["all_rounds"]  # from the rows: results written before it too
        lines.append(f"| {a} | {ms('map')} | {ms('map50')} | {ms(f'class.{rare}.map')} | {ms('small_map')} | "
                     f"{f['boxes_trained_mean']:.0f} | {'-' if spf is None else f'{spf:.1f}'} | "
                     + " | ".join(et(x) for x in AXES) + " |")
    return "\n".join(lines)
