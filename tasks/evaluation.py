"""Evaluation: COCO metrics per slice, per class, per size and per camera (faster-coco-eval), latency,
and per-class serving thresholds.

Plain data in, plain data out:

- an :class:`EvalSlice` is a name plus a list of :class:`EvalItem` (image path, ground truth
  :class:`~detloop.detections.Detections` in frame pixels, camera). Build one from a YOLO-format directory
  with :func:`slice_from_yolo_dir` or from a materialized dataset version with :func:`slice_from_data_yaml`;
- :func:`compute_metrics` is pure (ground truth + predictions -> :class:`SliceMetrics`);
- :func:`evaluate` runs one model (its ONNX scoring artifact, exported from the ``.pt`` when needed) on
  the slices; :func:`evaluate_pair` runs challenger and champion on the same slices in the same run and
  measures their CPU latency interleaved.

A slice, class or size bucket with fewer than ``min_instances`` ground-truth boxes is reported with
``sufficient=False`` ("insufficient data") and gates nothing (:func:`gate_scores` maps it to ``None``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detloop.detections import Detections
from detloop.errors import DataError
from detloop.postprocess import DecodeParams
from detloop.preprocess import FrameInput
from detloop.tiling import TileSpec

# COCO's area ranges (px^2). Closed at both ends, as the COCO evaluation applies them (a box is ignored
# when ``area < lo or area > hi``): a box of exactly 32 x 32 px belongs to both small and medium.
SIZE_BUCKETS = {"small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2), "large": (96.0**2, 1e10)}


def in_size_bucket(area: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``(N,)`` bool: boxes whose area lies in the closed range ``[lo, hi]`` (how COCO scores them)."""
    return (area >= lo) & (area <= hi)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
@dataclass
class EvalItem:
    """One labelled frame of a slice."""

    image: str
    gt: Detections
    camera: str = "unknown"


@dataclass
class EvalSlice:
    """A named evaluation slice (golden, newest round, control arm, crowded, ...)."""

    name: str
    items: list[EvalItem]

    @property
    def n_instances(self) -> int:
        return int(sum(len(it.gt) for it in self.items))


@dataclass
class Metric:
    """AP numbers of one group (a class, a size bucket, a camera, or the whole slice)."""

    n_instances: int
    sufficient: bool
    map: float | None = None  # AP50-95; None when no ground truth
    map50: float | None = None
    ar: float | None = None  # AR@100, IoU 0.5:0.95


@dataclass
class SliceMetrics:
    """Metrics of one model on one slice."""

    name: str
    n_images: int
    overall: Metric
    per_class: dict[str, Metric] = field(default_factory=dict)
    per_size: dict[str, Metric] = field(default_factory=dict)
    per_camera: dict[str, Metric] = field(default_factory=dict)


@dataclass
class EvalReport:
    """One model evaluated on every slice of a run.

    Attributes:
        model: label of the model (registry version, path).
        slices: slice name -> metrics.
        thresholds: class name -> confidence threshold with the best F1 (IoU 0.5) on ``threshold_slice``.
        threshold_slice: slice the thresholds come from (golden when present).
        latency_ms: mean CPU latency per frame in ms (batch 1, onnxruntime), None if not measured.
        artifact: the scoring artifact directory that was evaluated (what registration uploads).
        artifact_sha256: SHA-256 of its ``model.onnx``.
        plots: file name -> local path of the plots drawn for it (:mod:`tasks.eval_plots`).
        predictions: slice name -> per-image predictions (for the plots and the error breakdown; not serialised).
        error_breakdown: slice name -> TIDE error breakdown (:mod:`tasks.error_analysis`; the champion's, when
            the round's evaluation computes it).
    """

    model: str
    slices: dict[str, SliceMetrics]
    thresholds: dict[str, float] = field(default_factory=dict)
    threshold_slice: str | None = None
    latency_ms: float | None = None
    artifact: str | None = None
    artifact_sha256: str | None = None
    plots: dict[str, str] = field(default_factory=dict)
    predictions: dict[str, list[Detections]] = field(default_factory=dict, repr=False, compare=False)
    error_breakdown: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("predictions")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalReport:
        def metric(m: dict[str, Any]) -> Metric:
            return Metric(**m)

        slices = {
            k: SliceMetrics(
                name=v["name"],
                n_images=v["n_images"],
                overall=metric(v["overall"]),
                per_class={c: metric(m) for c, m in v.get("per_class", {}).items()},
                per_size={c: metric(m) for c, m in v.get("per_size", {}).items()},
                per_camera={c: metric(m) for c, m in v.get("per_camera", {}).items()},
            )
            for k, v in d["slices"].items()
        }
        return cls(d["model"], slices, d.get("thresholds", {}), d.get("threshold_slice"), d.get("latency_ms"),
                   d.get("artifact"), d.get("artifact_sha256"), d.get("plots", {}),
                   error_breakdown=d.get("error_breakdown", {}))

    def flat_metrics(self) -> dict[str, float]:
        """``{slice}.{group}.{metric}`` -> value, for MLflow metrics / version tags (sufficient groups only)."""
        out: dict[str, float] = {}
        for sname, sm in self.slices.items():
            groups: list[tuple[str, Metric]] = [("all", sm.overall)]
            groups += [(f"class_{k}", v) for k, v in sm.per_class.items()]
            groups += [(f"size_{k}", v) for k, v in sm.per_size.items()]
            groups += [(f"camera_{k}", v) for k, v in sm.per_camera.items()]
            for g, m in groups:
                if not m.sufficient:
                    continue
                for key in ("map", "map50", "ar"):
                    val = getattr(m, key)
                    if val is not None:
                        out[f"{sname}.{g}.{key}"] = float(val)
        if self.latency_ms is not None:
            out["latency_ms"] = float(self.latency_ms)
        return out


# --------------------------------------------------------------------------------------------
# Pure metrics
# --------------------------------------------------------------------------------------------
def _coco_dicts(
    gts: Sequence[Detections], preds: Sequence[Detections], num_classes: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    images, anns, dets = [], [], []
    aid = 1
    for i, (g, p) in enumerate(zip(gts, preds, strict=True)):
        images.append({"id": i + 1, "width": 1, "height": 1})
        for (x1, y1, x2, y2), c in zip(g.xyxy.astype(float), g.class_id, strict=True):
            w, h = x2 - x1, y2 - y1
            anns.append({"id": aid, "image_id": i + 1, "category_id": int(c) + 1, "bbox": [x1, y1, w, h],
                         "area": w * h, "iscrowd": 0})
            aid += 1
        for (x1, y1, x2, y2), c, s in zip(p.xyxy.astype(float), p.class_id, p.confidence.astype(float), strict=True):
            dets.append({"image_id": i + 1, "category_id": int(c) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                         "score": s, "area": (x2 - x1) * (y2 - y1)})
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": k + 1, "name": str(k)} for k in range(num_classes)]}
    return gt, dets


def _mean_valid(a: np.ndarray) -> float | None:
    v = a[a > -1]
    return float(v.mean()) if v.size else None


def _coco_eval(gts: Sequence[Detections], preds: Sequence[Detections], num_classes: int) -> dict[str, Any]:
    """Run COCO bbox evaluation; returns per-class / per-size AP arrays (-1 where undefined)."""
    from faster_coco_eval import COCO, COCOeval_faster

    gt_dict, dets = _coco_dicts(gts, preds, num_classes)
    T, K = 10, num_classes
    if not gt_dict["annotations"]:
        return {"empty": True}
    if not dets:  # nothing predicted: every AP with ground truth is 0
        zeros = np.zeros((T, 101, K, 4), dtype=np.float64)
        for k in range(K):
            for a, (lo, hi) in enumerate([(0, 1e10), *SIZE_BUCKETS.values()]):
                n = sum(int(((g.class_id == k) & in_size_bucket(g.area, lo, hi)).sum()) for g in gts)
                if n == 0:
                    zeros[:, :, k, a] = -1
        recall = zeros[:, 0, :, :]
        return {"precision": zeros, "recall": recall}
    coco_gt = COCO(gt_dict, print_function=lambda *a, **k: None)
    coco_dt = coco_gt.loadRes(dets)
    ev = COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=lambda *a, **k: None)
    ev.params.catIds = list(range(1, K + 1))
    ev.evaluate()
    ev.accumulate()
    prec = np.asarray(ev.eval["precision"])[..., -1]  # (T, R, K, A) at maxDets=100
    rec = np.asarray(ev.eval["recall"])[..., -1]  # (T, K, A)
    return {"precision": prec, "recall": rec}


def _metric_from(res: dict[str, Any], k: int | None, a: int, n: int, min_instances: int) -> Metric:
    """AP of class ``k`` (None: mean over classes) and area range ``a`` (0 all, 1 small, 2 medium, 3 large)."""
    if res.get("empty") or n == 0:
        return Metric(n_instances=n, sufficient=False)
    prec, rec = res["precision"], res["recall"]
    ks = slice(None) if k is None else slice(k, k + 1)
    p = prec[:, :, ks, a]
    r = rec[:, ks, a]
    return Metric(
        n_instances=n,
        sufficient=n >= min_instances,
        map=_mean_valid(p),
        map50=_mean_valid(p[0]),
        ar=_mean_valid(r),
    )


def compute_metrics(
    name: str,
    gts: Sequence[Detections],
    preds: Sequence[Detections],
    class_names: Sequence[str],
    cameras: Sequence[str] | None = None,
    min_instances: int = 50,
) -> SliceMetrics:
    """COCO mAP50-95 / mAP50 / AR overall, per class, per size (COCO areas) and per camera.

    Args:
        name: slice name.
        gts: per image, ground truth in frame pixels.
        preds: per image, predictions in frame pixels (with confidence).
        class_names: configured classes (class ids index into it).
        cameras: per image camera id (default all ``unknown``).
        min_instances: groups with fewer ground-truth boxes are ``sufficient=False``.

    Returns:
        :class:`SliceMetrics`.
    """
    if len(gts) != len(preds):
        raise DataError(f"slice {name}: {len(gts)} ground-truth frames but {len(preds)} prediction frames")
    cams = list(cameras) if cameras is not None else ["unknown"] * len(gts)
    nc = len(class_names)
    res = _coco_eval(gts, preds, nc)
    all_cls = np.concatenate([g.class_id for g in gts]) if gts else np.zeros(0, np.int64)
    all_area = np.concatenate([g.area for g in gts]) if gts else np.zeros(0)
    n_total = int(all_cls.size)
    out = SliceMetrics(name=name, n_images=len(gts), overall=_metric_from(res, None, 0, n_total, min_instances))
    for k, cname in enumerate(class_names):
        out.per_class[cname] = _metric_from(res, k, 0, int((all_cls == k).sum()), min_instances)
    for a, (bucket, (lo, hi)) in enumerate(SIZE_BUCKETS.items(), start=1):
        n = int(in_size_bucket(all_area, lo, hi).sum())
        out.per_size[bucket] = _metric_from(res, None, a, n, min_instances)
    groups = sorted(set(cams))
    for cam in groups:
        if len(groups) == 1:  # one camera (or none given): its metric is the slice's, no second COCO pass
            out.per_camera[cam] = _metric_from(res, None, 0, n_total, min_instances)
            continue
        idx = [i for i, c in enumerate(cams) if c == cam]
        sub_g = [gts[i] for i in idx]
        sub_p = [preds[i] for i in idx]
        n = int(sum(len(g) for g in sub_g))
        out.per_camera[cam] = _metric_from(_coco_eval(sub_g, sub_p, nc), None, 0, n, min_instances)
    if n_total < min_instances:
        out.overall.sufficient = False
    return out


def match_class(gts: Sequence[Detections], preds: Sequence[Detections], k: int, iou: float = 0.5,
                ) -> tuple[np.ndarray, np.ndarray, int]:
    """Greedy matching of class ``k``'s predictions to its ground truth, by descending confidence.

    Returns:
        ``(scores (P,), true_positive (P,) bool, n_gt)`` over every frame, sorted by descending score.
    """
    from detloop.ops import box_iou

    scores: list[float] = []
    tps: list[bool] = []
    n_gt = 0
    for g, p in zip(gts, preds, strict=True):
        gk = g.xyxy[g.class_id == k]
        pm = p.class_id == k
        pk, sk = p.xyxy[pm], p.confidence[pm]
        n_gt += len(gk)
        order = np.argsort(-sk)
        used = np.zeros(len(gk), bool)
        ious = box_iou(pk[order], gk) if len(gk) and len(pk) else np.zeros((len(pk), len(gk)))
        for row, j in enumerate(order):
            tp = False
            if len(gk):
                cand = np.where(~used & (ious[row] >= iou))[0]
                if cand.size:
                    used[cand[np.argmax(ious[row][cand])]] = True
                    tp = True
            scores.append(float(sk[j]))
            tps.append(tp)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    return np.asarray(scores, np.float64)[order], np.asarray(tps, bool)[order], n_gt


def pr_curve(gts: Sequence[Detections], preds: Sequence[Detections], k: int, iou: float = 0.5,
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision-recall curve of class ``k`` at IoU ``iou``: ``(recall, precision, confidence)``, each ``(P,)``."""
    s, tp, n_gt = match_class(gts, preds, k, iou)
    ctp = np.cumsum(tp)
    precision = ctp / np.arange(1, len(s) + 1) if len(s) else np.zeros(0)
    recall = ctp / n_gt if n_gt else np.zeros(len(s))
    return recall, precision, s


def best_f1_thresholds(
    gts: Sequence[Detections], preds: Sequence[Detections], class_names: Sequence[str], iou: float = 0.5,
    default: float = 0.25,
) -> dict[str, float]:
    """Per-class confidence threshold that maximises F1 (greedy matching at ``iou``), for serving.

    Classes without ground truth or predictions get ``default``.
    """
    out: dict[str, float] = {}
    for k, cname in enumerate(class_names):
        s, tps, n_gt = match_class(gts, preds, k, iou)
        if n_gt == 0 or not len(s):
            out[cname] = default
            continue
        tp = np.cumsum(tps)
        fp = np.arange(1, len(s) + 1) - tp
        f1 = 2 * tp / (tp + fp + n_gt)
        out[cname] = float(s[int(np.argmax(f1))])
    return out


def confusion_matrix(gts: Sequence[Detections], preds: Sequence[Detections], num_classes: int,
                     thresholds: Sequence[float], iou: float = 0.5) -> np.ndarray:
    """Detection confusion matrix ``(C + 1, C + 1)``: rows the predicted class, columns the true class, the
    last row/column ``background`` (a missed box / a false alarm).

    Predictions under their class's threshold are dropped; each ground-truth box takes the highest-IoU
    unmatched prediction (any class) with IoU >= ``iou``.
    """
    from detloop.ops import box_iou

    m = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    th = np.asarray(thresholds, np.float64)
    for g, p in zip(gts, preds, strict=True):
        p = p[p.confidence >= th[p.class_id]] if len(p) else p
        used = np.zeros(len(p), bool)
        ious = box_iou(g.xyxy, p.xyxy) if len(g) and len(p) else np.zeros((len(g), len(p)))
        for i in np.argsort(-(ious.max(axis=1) if ious.size else np.zeros(len(g)))):
            cand = np.where(~used & (ious[i] >= iou))[0] if ious.size else np.zeros(0, np.int64)
            if cand.size:
                j = cand[np.argmax(ious[i][cand])]
                used[j] = True
                m[int(p.class_id[j]), int(g.class_id[i])] += 1
            else:
                m[num_classes, int(g.class_id[i])] += 1
        for j in np.where(~used)[0]:
            m[int(p.class_id[j]), num_classes] += 1
    return m


# --------------------------------------------------------------------------------------------
# Slices from files
# --------------------------------------------------------------------------------------------
def _read_image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def _label_path(img: Path) -> Path:
    parts = list(img.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def slice_from_images(name: str, images: Sequence[str | Path], num_classes: int,
                      cameras: Sequence[str] | None = None) -> EvalSlice:
    """A slice from image files with YOLO labels beside them (``images/`` -> ``labels/``, ``.txt``)."""
    items = []
    for i, img in enumerate(images):
        img = Path(img)
        w, h = _read_image_size(img)
        lp = _label_path(img)
        text = lp.read_text() if lp.is_file() else ""
        gt = Detections.from_yolo_txt(text, w, h, num_classes=num_classes)
        cam = cameras[i] if cameras is not None else _camera_from_name(img.name)
        items.append(EvalItem(str(img), gt, cam))
    return EvalSlice(name, items)


def _camera_from_name(name: str) -> str:
    """Camera id encoded in a materialized file name ``<camera>__<rest>`` (else ``unknown``)."""
    return name.split("__", 1)[0] if "__" in name else "unknown"


IMG_EXT = (".jpg", ".jpeg", ".png", ".bmp")


def slice_from_yolo_dir(name: str, images_dir: str | Path, num_classes: int) -> EvalSlice:
    """A slice from a YOLO images directory (labels in the sibling ``labels/`` tree)."""
    files = sorted(p for p in Path(images_dir).rglob("*") if p.suffix.lower() in IMG_EXT)
    return slice_from_images(name, files, num_classes)


def slice_from_data_yaml(name: str, data_yaml: str | Path, split: str, num_classes: int) -> EvalSlice:
    """A slice from one split of an Ultralytics ``data.yaml`` (a directory or a ``.txt`` list of images)."""
    import yaml

    data = yaml.safe_load(Path(data_yaml).read_text())
    root = Path(data.get("path") or Path(data_yaml).parent)
    if split not in data:
        raise DataError(f"{data_yaml}: no split {split!r}; has {sorted(k for k in data if k not in ('path', 'names'))}")
    entries = data[split] if isinstance(data[split], list) else [data[split]]
    files: list[Path] = []
    for e in entries:
        p = Path(e) if Path(e).is_absolute() else root / e
        if p.suffix == ".txt":
            for line in p.read_text().splitlines():
                if line.strip():
                    q = Path(line.strip())
                    files.append(q if q.is_absolute() else root / q)
        else:
            files += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMG_EXT)
    return slice_from_images(name, files, num_classes)


# --------------------------------------------------------------------------------------------
# Running a model
# --------------------------------------------------------------------------------------------
def _load_rgb(path: str) -> np.ndarray:
    import cv2

    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"cannot read image {path}")
    return np.ascontiguousarray(img[:, :, ::-1])


def ensure_artifact(model: str | Path, class_names: Sequence[str], input_size: int, work_dir: Path,
                    dynamic_hw: bool = False, head: str = "one2many") -> Path:
    """A scoring-artifact directory for ``model`` (an artifact dir, a dir with ``model.onnx``, or a ``.pt``
    exported with ``head``, :func:`tasks.export.export_scoring_artifact`; ``dynamic_hw``: a ``.pt`` is exported
    with dynamic height and width, for TTA at other scales, and so is a registered model directory whose
    artifact has a fixed size but whose ``weights/best.pt`` is there)."""
    import json

    from tasks.export import META_NAME, ONNX_NAME, export_scoring_artifact

    p = Path(model)
    if p.is_dir() and (p / ONNX_NAME).is_file():
        return p
    if p.is_dir() and (p / "scoring" / ONNX_NAME).is_file():
        fixed = not json.loads((p / "scoring" / META_NAME).read_text()).get("dynamic_hw", False)
        if dynamic_hw and fixed and (p / "weights" / "best.pt").is_file():  # registered before TTA was on
            p = p / "weights" / "best.pt"
        else:
            return p / "scoring"
    if p.is_file() and p.suffix == ".pt":
        return export_scoring_artifact(
            p, work_dir / f"artifact-{p.stem}-{head}-{abs(hash(str(p))) % 10**8}{'-dynhw' if dynamic_hw else ''}",
            list(class_names), input_size, dynamic_hw=dynamic_hw, head=head)
    raise DataError(f"no scoring artifact or .pt weights at {model}")


def eval_decode(ms: Any) -> DecodeParams:
    """The decode of evaluation: ``model.conf_threshold`` (low, for AP), the scoring candidate cap raised;
    ``model.nms`` as in scoring and serving."""
    return ms.decode_params(ms.conf_threshold, max(ms.scoring_max_candidates, 30000))


def read_for_model(path: str, size: int, fast: bool, tiling: TileSpec | None = None) -> FrameInput:
    """An evaluation frame from disk, prepared exactly as scoring prepares a production frame of its camera
    (whole, or cut into ``tiling``'s tiles).

    Raises:
        DataError: the file is missing or not a usable image.
    """
    from detloop.preprocess import load_frame_for_model

    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise DataError(f"cannot read image {path}: {err}") from err
    got = load_frame_for_model(data, size, fast, tiling=tiling)
    if isinstance(got, str):
        raise DataError(f"cannot read image {path}: {got}")
    return got


def predict_items(artifact: Path, items: Sequence[EvalItem], settings: Any, batch: int = 16) -> list[Detections]:
    """Run the ONNX scoring artifact on the slice frames, with scoring's preprocessing and decode.

    Frames go through :func:`detloop.preprocess.load_frame_for_model` and
    :func:`detloop.postprocess.decode_inputs`, the code production scoring and the registered MLflow model use
    (``model.nms``, and ``model.tiling`` of each frame's camera); only the confidence floor differs:
    ``model.conf_threshold``, low enough for AP.
    """
    from detloop.postprocess import decode_inputs, for_head
    from detloop.preprocess import to_tensors
    from tasks.export import open_session, read_meta, run_onnx

    meta = read_meta(artifact)
    sess = open_session(artifact, settings.training.threads)
    ms = settings.model
    params = for_head(eval_decode(ms), meta.head)
    infer = lambda b: run_onnx(sess, b)  # noqa: E731
    if ms.tta.evaluation:  # offline TTA (model.tta): the views' boxes merged by model.nms in decode_inputs
        from detloop.tta import check_input_shape, tta_infer, views

        tv = views(ms.tta.scales, ms.tta.flip)
        check_input_shape(sess.get_inputs()[0].shape, tv, f"evaluation artifact {artifact}")
        infer = lambda b: tta_infer(lambda v: run_onnx(sess, v), b, tv, meta.stride)  # noqa: E731
    out: list[Detections] = []
    for i in range(0, len(items), batch):
        inputs = [read_for_model(it.image, meta.input_size, ms.fast_decode, ms.tile_spec(it.camera))
                  for it in items[i : i + batch]]
        raw, _ = infer(to_tensors([m.image for f in inputs for m in f.parts]))
        out += decode_inputs(raw, inputs, params)
    return out


def interleaved_times(n_models: int, n_items: int, rounds: int, run: Callable[[int, int], Any],
                      clock: Callable[[], float] = time.perf_counter) -> list[list[float]]:
    """Time ``run(model, item)`` for every model on every item, ``rounds`` times, the models taking turns item by
    item (their order reversed every other item and round). Returns per model its ``rounds * n_items`` times in ms.

    Models timed back to back on the same item see the same machine: a burst of load (a service restarting, another
    job) slows both, not one of them, as timing one model over all items and then the other would."""
    times: list[list[float]] = [[] for _ in range(n_models)]
    for r in range(rounds):
        for i in range(n_items):
            order = list(range(n_models))
            if (r + i) % 2:
                order.reverse()
            for j in order:
                t0 = clock()
                run(j, i)
                times[j].append((clock() - t0) * 1000)
    return times


def measure_latency(artifacts: Sequence[Path], frames: Sequence[str], rounds: int = 3,
                    threads: int | None = None) -> list[float]:
    """Median ms per frame (batch 1) of each artifact, the artifacts timed in turn frame by frame
    (:func:`interleaved_times`), so a change of the machine's speed affects all models alike; the median over
    ``rounds`` x frames timings ignores the bursts that remain. Returns one number per artifact."""
    from detloop.preprocess import to_tensors
    from tasks.export import open_session, read_meta, run_onnx

    if not frames:
        return [float("nan")] * len(artifacts)
    sessions = [open_session(a, threads) for a in artifacts]
    sizes = [read_meta(a).input_size for a in artifacts]
    inputs = [[to_tensors([read_for_model(f, s, True).parts[0].image]) for f in frames] for s in sizes]
    for sess, inp in zip(sessions, inputs, strict=True):  # warm-up
        run_onnx(sess, inp[0])
    times = interleaved_times(len(artifacts), len(frames), rounds, lambda j, i: run_onnx(sessions[j], inputs[j][i]))
    return [float(np.median(t)) for t in times]


def evaluate(
    model: str | Path,
    slices: Sequence[EvalSlice],
    settings: Any,
    work_dir: str | Path | None = None,
    label: str | None = None,
    threshold_slice: str = "golden",
) -> EvalReport:
    """Evaluate one model on every slice (no latency; see :func:`evaluate_pair`).

    Args:
        model: scoring-artifact directory or ``.pt`` weights (exported to ONNX in ``work_dir``).
        slices: evaluation slices.
        settings: :class:`detloop.settings.Settings` (classes, model NMS settings, min_instances).
        work_dir: scratch directory for an export.
        label: name recorded in the report.
        threshold_slice: slice the per-class F1 thresholds come from (the first slice if absent).
    """
    import tempfile

    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="detloop-eval-"))
    from detloop.datasets import file_sha256
    from tasks.export import ONNX_NAME

    art = ensure_artifact(model, settings.classes, settings.model.input_size, work,
                          settings.model.tta.needs_dynamic_hw, settings.model.export_head)
    report = EvalReport(model=label or str(model), slices={}, artifact=str(art),
                        artifact_sha256=file_sha256(Path(art) / ONNX_NAME))
    preds_by_slice: dict[str, list[Detections]] = {}
    for sl in slices:
        preds = predict_items(art, sl.items, settings, settings.model.batch_size)
        preds_by_slice[sl.name] = preds
        report.slices[sl.name] = compute_metrics(
            sl.name, [it.gt for it in sl.items], preds, settings.classes, [it.camera for it in sl.items],
            settings.evaluation.min_instances)
    th = next((s for s in slices if s.name == threshold_slice), slices[0] if slices else None)
    if th is not None:
        report.thresholds = best_f1_thresholds([it.gt for it in th.items], preds_by_slice[th.name], settings.classes)
        report.threshold_slice = th.name
        report.predictions = preds_by_slice
    return report


def evaluate_pair(
    challenger: str | Path,
    champion: str | Path | None,
    slices: Sequence[EvalSlice],
    settings: Any,
    work_dir: str | Path | None = None,
    labels: tuple[str, str] = ("challenger", "champion"),
) -> tuple[EvalReport, EvalReport | None]:
    """Evaluate challenger and champion on the same slices in the same run, plus interleaved latency.

    Latency uses up to ``settings.evaluation.latency_frames`` frames of the first slice.
    """
    import tempfile

    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="detloop-eval-"))
    ch_art = ensure_artifact(challenger, settings.classes, settings.model.input_size, work / "challenger",
                             settings.model.tta.needs_dynamic_hw, settings.model.export_head)
    ch = evaluate(ch_art, slices, settings, work, labels[0])
    cp = None
    arts = [ch_art]
    if champion is not None:
        cp_art = ensure_artifact(champion, settings.classes, settings.model.input_size, work / "champion",
                                 settings.model.tta.needs_dynamic_hw, settings.model.export_head)
        cp = evaluate(cp_art, slices, settings, work, labels[1])
        arts.append(cp_art)
    frames = [it.image for sl in slices[:1] for it in sl.items][: settings.evaluation.latency_frames]
    lat = measure_latency(arts, frames, threads=settings.training.threads)
    ch.latency_ms = lat[0]
    if cp is not None:
        cp.latency_ms = lat[1]
    return ch, cp


def gate_scores(report: EvalReport, slice_name: str = "golden", crowded_slice: str = "crowded",
                metric: str = "map", drifted_slice: str = "drifted") -> Any:
    """The gate's view of a report (:class:`tasks.promotion.ModelScores`); insufficient groups -> None.

    ``metric`` (``gate.metric``): ``map`` (mAP50-95) or ``map50``, for every AP the gate compares."""
    from tasks.promotion import ModelScores

    if metric not in ("map", "map50"):
        raise ValueError(f"gate metric must be one of map, map50; got {metric!r}")

    def val(m: Metric) -> float | None:
        return (m.map if metric == "map" else m.map50) if m.sufficient else None

    crowded = report.slices.get(crowded_slice)
    crowded_ap = val(crowded.overall) if crowded is not None else None
    drifted = report.slices.get(drifted_slice)  # drift rounds only (tasks.slices.build_slices)
    drifted_ap = val(drifted.overall) if drifted is not None else None
    sm = report.slices.get(slice_name)
    if sm is None:
        return ModelScores(golden_map=None, latency_ms=report.latency_ms, crowded_ap=crowded_ap,
                           drifted_ap=drifted_ap)
    return ModelScores(
        golden_map=val(sm.overall),
        class_ap={k: val(m) for k, m in sm.per_class.items()},
        small_ap=val(sm.per_size["small"]) if "small" in sm.per_size else None,
        latency_ms=report.latency_ms,
        crowded_ap=crowded_ap,
        drifted_ap=drifted_ap,
    )
