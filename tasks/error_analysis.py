"""Error breakdown of a detector in the style of TIDE (Bolya et al., ECCV 2020): what each error type costs.

Every prediction that is not a true positive, and every ground-truth box nobody found, gets ONE type:

======== ============================================================================================
``cls``   right place, wrong class: IoU >= ``fg_iou`` with a box of another class
``loc``   right class, poor box: ``bg_iou <= IoU < fg_iou`` with a box of its class
``both``  wrong class and poor box: ``bg_iou <= IoU < fg_iou`` with a box of another class only
``dupe``  right class and place, but that box was already taken by a higher-scored prediction
``bkg``   on background: IoU < ``bg_iou`` with every ground-truth box
``missed`` a ground-truth box found by no prediction and not explained by a ``cls`` or ``loc`` error
======== ============================================================================================

(TIDE's order of tests: ``loc``, ``cls``, ``dupe``, ``bkg``, then ``both``; true positives are the greedy,
score-ordered, per-class matches at ``fg_iou``, as COCO matches at IoU 0.5.)

What an error type *costs* is measured as TIDE does: fix every error of that type (``cls``: give the prediction
the class of its box; ``loc``: give it the box; ``both``, ``dupe``, ``bkg``: remove it; ``missed``: remove the
missed boxes from the ground truth; a fixed prediction whose box is already taken is removed as a duplicate) and
re-measure AP50 with the evaluation's own COCO code (:func:`tasks.evaluation.compute_metrics`; there is no second
AP here). ``dap[type] = AP50(fixed) - AP50``, per group: overall, per class, per COCO size bucket and per camera;
the crowded slice is one of the slices evaluated. ``share`` is each type's part of the summed ``dap``.

Pure given the inputs; :func:`breakdown_for_slices` runs over the slices of a round's evaluation, :func:`markdown`
and :func:`plot` render one for the round report and MLflow, :func:`flat_metrics` names its numbers for MLflow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detloop.detections import Detections
from detloop.ops import box_iou
from tasks.evaluation import SIZE_BUCKETS, EvalSlice, Metric, compute_metrics, in_size_bucket

ERROR_TYPES: tuple[str, ...] = ("cls", "loc", "both", "dupe", "bkg", "missed")
PRED_TYPES: tuple[str, ...] = ("tp", "cls", "loc", "both", "dupe", "bkg")


@dataclass
class ImageErrors:
    """The error type of every prediction and ground-truth box of one image.

    Attributes:
        pred_type: ``(P,)`` str, one of :data:`PRED_TYPES` per prediction (input order).
        pred_gt: ``(P,)`` int, the ground-truth box the prediction is judged against (its match for ``tp``,
            the box to take the class / box of for ``cls`` / ``loc``, the taken box for ``dupe``); -1 if none.
        gt_missed: ``(G,)`` bool, ground-truth boxes of type ``missed``.
    """

    pred_type: np.ndarray
    pred_gt: np.ndarray
    gt_missed: np.ndarray


def classify_image(gt: Detections, pred: Detections, fg_iou: float = 0.5, bg_iou: float = 0.1) -> ImageErrors:
    """Assign a TIDE error type to every prediction and ground-truth box of one image.

    Args:
        gt: ground truth in frame pixels.
        pred: predictions in frame pixels (with confidence).
        fg_iou: IoU of a correct localisation (TIDE's foreground threshold, 0.5 as COCO AP50).
        bg_iou: IoU under which a prediction is on background (TIDE: 0.1).

    Returns:
        :class:`ImageErrors`.
    """
    n_p, n_g = len(pred), len(gt)
    ptype = np.full(n_p, "bkg", dtype=object)
    pgt = np.full(n_p, -1, np.int64)
    if n_g == 0:
        return ImageErrors(ptype.astype(str), pgt, np.zeros(0, bool))
    iou = box_iou(pred.xyxy, gt.xyxy) if n_p else np.zeros((0, n_g))
    same = pred.class_id[:, None] == gt.class_id[None, :]
    iou_cls = np.where(same, iou, -1.0)
    iou_other = np.where(same, -1.0, iou)
    order = np.argsort(-pred.confidence, kind="stable")
    used = np.zeros(n_g, bool)
    for p in order:  # true positives: greedy by score, best unused same-class box at >= fg_iou
        cand = np.where(~used & (iou_cls[p] >= fg_iou))[0]
        if cand.size:
            g = int(cand[np.argmax(iou_cls[p, cand])])
            used[g] = True
            ptype[p], pgt[p] = "tp", g
    explained = used.copy()
    for p in order:
        if ptype[p] == "tp":
            continue
        gc = int(np.argmax(iou_cls[p]))
        go = int(np.argmax(iou_other[p]))
        if bg_iou <= iou_cls[p, gc] < fg_iou:
            ptype[p], pgt[p] = "loc", gc
            explained[gc] = True
        elif iou_other[p, go] >= fg_iou:
            ptype[p], pgt[p] = "cls", go
            explained[go] = True
        elif iou_cls[p, gc] >= fg_iou:  # its box was taken by a higher-scored prediction
            ptype[p], pgt[p] = "dupe", gc
        elif iou[p].max() < bg_iou:
            ptype[p] = "bkg"
        else:
            ptype[p], pgt[p] = "both", go
    return ImageErrors(ptype.astype(str), pgt, ~explained)


def fix_errors(
    gts: Sequence[Detections], preds: Sequence[Detections], errors: Sequence[ImageErrors], error_type: str,
) -> tuple[list[Detections], list[Detections]]:
    """Ground truth and predictions with every error of ``error_type`` fixed the way TIDE fixes it.

    ``cls`` / ``loc``: the prediction takes its box's class / coordinates, unless that box is already taken by a
    true positive or by a higher-scored fixed prediction (then it is removed, as a duplicate); ``both``, ``dupe``,
    ``bkg``: removed; ``missed``: the missed ground-truth boxes are removed.

    Returns:
        ``(gts, preds)`` per image (new objects; the inputs are not modified).
    """
    if error_type not in ERROR_TYPES:
        raise ValueError(f"error_type must be one of {list(ERROR_TYPES)}, got {error_type!r}")
    out_g: list[Detections] = []
    out_p: list[Detections] = []
    for g, p, e in zip(gts, preds, errors, strict=True):
        if error_type == "missed":
            out_g.append(g[~e.gt_missed])
            out_p.append(p)
            continue
        out_g.append(g)
        hit = e.pred_type == error_type
        if error_type in ("both", "dupe", "bkg"):
            out_p.append(p[~hit])
            continue
        keep = ~hit
        xyxy, cid = p.xyxy.copy(), p.class_id.copy()
        taken = {int(k) for k in e.pred_gt[e.pred_type == "tp"]}
        for i in np.argsort(-p.confidence, kind="stable"):
            if not hit[i]:
                continue
            k = int(e.pred_gt[i])
            if k in taken:
                continue
            taken.add(k)
            keep[i] = True
            if error_type == "cls":
                cid[i] = g.class_id[k]
            else:
                xyxy[i] = g.xyxy[k]
        out_p.append(Detections(xyxy=xyxy[keep], confidence=p.confidence[keep], class_id=cid[keep]))
    return out_g, out_p


def _groups(sm: Any) -> dict[str, Metric]:
    out: dict[str, Metric] = {"all": sm.overall}
    out.update({f"class_{k}": v for k, v in sm.per_class.items()})
    out.update({f"size_{k}": v for k, v in sm.per_size.items()})
    out.update({f"camera_{k}": v for k, v in sm.per_camera.items()})
    return out


def _count(
    gts: Sequence[Detections], preds: Sequence[Detections], errors: Sequence[ImageErrors], cameras: Sequence[str],
    class_names: Sequence[str], min_confidence: float,
) -> dict[str, dict[str, int]]:
    """Errors per group: a prediction's by its class and box size (only at >= ``min_confidence``), a missed box's
    by its own."""
    counts: dict[str, dict[str, int]] = {}

    def add(group: str, t: str) -> None:
        counts.setdefault(group, dict.fromkeys(ERROR_TYPES, 0))[t] += 1

    for g, p, e, cam in zip(gts, preds, errors, cameras, strict=True):
        rows = [(t, int(p.class_id[i]), float(p.area[i])) for i, t in enumerate(e.pred_type)
                if t != "tp" and p.confidence[i] >= min_confidence]
        rows += [("missed", int(g.class_id[j]), float(g.area[j])) for j in np.where(e.gt_missed)[0]]
        for t, c, area in rows:
            add("all", t)
            add(f"class_{class_names[c]}", t)
            add(f"camera_{cam}", t)
            for bucket, (lo, hi) in SIZE_BUCKETS.items():
                if in_size_bucket(np.array([area]), lo, hi)[0]:
                    add(f"size_{bucket}", t)
    return counts


def breakdown(
    name: str,
    gts: Sequence[Detections],
    preds: Sequence[Detections],
    class_names: Sequence[str],
    cameras: Sequence[str] | None = None,
    min_instances: int = 50,
    fg_iou: float = 0.5,
    bg_iou: float = 0.1,
    count_min_confidence: float = 0.25,
) -> dict[str, Any]:
    """TIDE breakdown of one slice: per group, AP50, ``dap`` and ``share`` per error type, and error counts.

    Args:
        name: slice name.
        gts, preds: per image, ground truth and predictions in frame pixels.
        class_names: configured classes.
        cameras: per image camera id (default ``unknown``).
        min_instances: groups with fewer ground-truth boxes get ``dap`` None (insufficient data), as in evaluation.
        fg_iou, bg_iou: TIDE's thresholds.
        count_min_confidence: predictions under this confidence are left out of the counts (every prediction
            counts in ``dap``, as in AP).

    Returns:
        ``{"slice", "metric": "map50", "fg_iou", "bg_iou", "groups": {group: {"n_instances", "sufficient",
        "ap", "dap": {type: float|None}, "share": {type: float|None}, "counts": {type: int}}}}`` with groups
        ``all``, ``class_<name>``, ``size_<small|medium|large>``, ``camera_<id>``.
    """
    cams = list(cameras) if cameras is not None else ["unknown"] * len(gts)
    errors = [classify_image(g, p, fg_iou, bg_iou) for g, p in zip(gts, preds, strict=True)]
    base = _groups(compute_metrics(name, gts, preds, class_names, cams, min_instances))
    fixed = {t: _groups(compute_metrics(name, *fix_errors(gts, preds, errors, t), class_names, cams, min_instances))
             for t in ERROR_TYPES}
    counts = _count(gts, preds, errors, cams, class_names, count_min_confidence)
    groups: dict[str, Any] = {}
    for gname, m in base.items():
        dap: dict[str, float | None] = {}
        for t in ERROR_TYPES:
            f = fixed[t].get(gname)
            ok = m.sufficient and m.map50 is not None and f is not None and f.map50 is not None
            dap[t] = float(f.map50 - m.map50) if ok else None  # type: ignore[operator, union-attr]
        pos = sum(max(v, 0.0) for v in dap.values() if v is not None)
        share = {t: (max(v, 0.0) / pos if pos > 0 else 0.0) if v is not None else None for t, v in dap.items()}
        groups[gname] = {"n_instances": m.n_instances, "sufficient": m.sufficient, "ap": m.map50, "dap": dap,
                         "share": share, "counts": counts.get(gname, dict.fromkeys(ERROR_TYPES, 0))}
    return {"slice": name, "metric": "map50", "fg_iou": fg_iou, "bg_iou": bg_iou, "groups": groups}


def breakdown_for_slices(
    slices: Sequence[EvalSlice], predictions: dict[str, list[Detections]], settings: Any,
    names: Sequence[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """:func:`breakdown` of every slice in ``names`` (default ``error_analysis.slices``) that has predictions.

    Args:
        slices: the evaluation's slices.
        predictions: slice name -> per-image predictions of the model (``EvalReport.predictions``).
        settings: :class:`detloop.settings.Settings` (classes, ``evaluation.min_instances``, ``error_analysis``).
    """
    ea = settings.error_analysis
    want = list(names) if names is not None else list(ea.slices)
    out: dict[str, dict[str, Any]] = {}
    for sl in slices:
        if sl.name not in want or sl.name not in predictions:
            continue
        out[sl.name] = breakdown(sl.name, [it.gt for it in sl.items], predictions[sl.name], settings.classes,
                                 [it.camera for it in sl.items], settings.evaluation.min_instances, ea.fg_iou,
                                 ea.bg_iou, ea.count_min_confidence)
    return out


def flat_metrics(breakdowns: dict[str, dict[str, Any]], prefix: str = "errors") -> dict[str, float]:
    """``{prefix}.{slice}.{group}.dap_{type}`` and ``.ap50`` -> value (sufficient groups only), for MLflow."""
    out: dict[str, float] = {}
    for sname, b in breakdowns.items():
        for gname, g in b["groups"].items():
            if not g["sufficient"]:
                continue
            if g["ap"] is not None:
                out[f"{prefix}.{sname}.{gname}.ap50"] = float(g["ap"])
            for t, v in g["dap"].items():
                if v is not None:
                    out[f"{prefix}.{sname}.{gname}.dap_{t}"] = float(v)
    return out


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:+.3f}"


def markdown(breakdowns: dict[str, dict[str, Any]], title: str = "Champion errors (TIDE)") -> str:
    """One table per slice: rows are groups with enough instances, columns AP50 and the dAP50 of each error type
    (with the count of errors in brackets)."""
    lines = [f"## {title}\n", "dAP50: AP50 gained by fixing every error of that type (TIDE); (n): errors counted.\n"]
    for sname, b in breakdowns.items():
        lines += [f"\n### {sname}\n", "| group | n | AP50 | " + " | ".join(ERROR_TYPES) + " |",
                  "| --- | ---: | ---: | " + " | ".join("---:" for _ in ERROR_TYPES) + " |"]
        for gname, g in b["groups"].items():
            if not g["sufficient"]:
                continue
            ap = "-" if g["ap"] is None else f"{g['ap']:.3f}"
            cells = [f"{_fmt(g['dap'][t])} ({g['counts'][t]})" for t in ERROR_TYPES]
            lines.append(f"| {gname} | {g['n_instances']} | {ap} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(breakdowns: dict[str, dict[str, Any]], path: str | Path) -> Path:
    """Horizontal bars of dAP50 per error type, one panel per slice (the ``all`` group), saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(breakdowns))
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 2.8), dpi=100, squeeze=False)
    for ax, (sname, b) in zip(axes[0], breakdowns.items(), strict=False):
        g = b["groups"]["all"]
        vals = [g["dap"][t] or 0.0 for t in ERROR_TYPES]
        ax.barh(list(ERROR_TYPES), vals, color="tab:red")
        ax.invert_yaxis()
        ap = "-" if g["ap"] is None else f"{g['ap']:.3f}"
        ax.set_title(f"{sname}: AP50 {ap}", fontsize=9)
        ax.set_xlabel("dAP50 when fixed")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def slice_failure_weights(
    breakdowns: dict[str, dict[str, Any]], slice_name: str = "golden", strength: float = 1.0, cap: float = 3.0,
) -> dict[str, dict[str, float]]:
    """Selection multipliers toward the classes and cameras where the model fails most (the selection's
    ``selection.error_weighting``, through :func:`selection_weights`; off by default).

    A group's failure is ``1 - AP50``; its weight ``1 + strength * (failure / mean failure of its kind - 1)``,
    clipped to ``[1 / cap, cap]``. Groups without enough data weigh 1.

    Returns:
        ``{"class": {name: w}, "camera": {id: w}}``.
    """
    b = breakdowns.get(slice_name)
    out: dict[str, dict[str, float]] = {"class": {}, "camera": {}}
    if b is None:
        return out
    for kind in ("class", "camera"):
        fail = {k.split("_", 1)[1]: 1.0 - float(g["ap"]) for k, g in b["groups"].items()
                if k.startswith(f"{kind}_") and g["sufficient"] and g["ap"] is not None}
        if not fail:
            continue
        mean = float(np.mean(list(fail.values())))
        for k, f in fail.items():
            w = 1.0 + strength * (f / mean - 1.0) if mean > 0 else 1.0
            out[kind][k] = float(np.clip(w, 1.0 / cap, cap))
    return out


def selection_weights(breakdowns: dict[str, dict[str, Any]], ew: Any) -> dict[str, dict[str, float]]:
    """The weights ``selection.error_weighting`` selects with: :func:`slice_failure_weights` of ``ew.slice`` at
    ``ew.strength`` / ``ew.cap``, the kinds not in ``ew.kinds`` left empty.

    Args:
        breakdowns: slice name -> :func:`breakdown` (a round's evaluation of the model, or the benchmark's).
        ew: :class:`detloop.settings.ErrorWeightingSettings`.

    Returns:
        ``{"class": {name: w}, "camera": {id: w}}`` (empty dicts when the slice is missing).
    """
    w = slice_failure_weights(breakdowns, ew.slice, ew.strength, ew.cap)
    return {kind: (w[kind] if kind in ew.kinds else {}) for kind in ("class", "camera")}


def breakdown_key(model_name: str, version: str) -> str:
    """Where a model version's latest error breakdown is stored in the data bucket (one object per version)."""
    return f"errors/{model_name}/v{version}.json"


def store_breakdown(store: Any, bucket: str, model_name: str, version: str, breakdowns: dict[str, dict[str, Any]],
                    source: dict[str, Any]) -> str:
    """Store ``breakdowns`` of model ``version`` as its latest (``{"model_name", "version", "source",
    "breakdowns"}``; ``source``: round id, MLflow run, role); returns the key."""
    key = breakdown_key(model_name, version)
    store.put_json(bucket, key, {"model_name": model_name, "version": str(version), "source": source,
                                 "breakdowns": breakdowns})
    return key


def read_breakdown(store: Any, bucket: str, model_name: str, version: str) -> dict[str, Any] | None:
    """The stored record of :func:`store_breakdown` for ``version``, or None when that version has none."""
    import json

    raw = store.get_bytes_or_none(bucket, breakdown_key(model_name, version))
    return None if raw is None else json.loads(raw)


def write_pair_breakdowns(challenger: Any, champion: Any, slices: Sequence[EvalSlice], settings: Any,
                          out_dir: str | Path) -> None:
    """A round's breakdowns: the champion's on every configured slice (:func:`write_breakdown`, when
    ``error_analysis.enabled``) and, when the selection weighs by errors, the challenger's on the weighting slice
    (``challenger.error_breakdown``: what the selection uses once it is promoted)."""
    if champion is not None and settings.error_analysis.enabled:
        write_breakdown(champion, slices, settings, out_dir)
    ew = settings.selection.error_weighting
    if challenger is not None and ew.enabled:
        challenger.error_breakdown = breakdown_for_slices(slices, challenger.predictions, settings, [ew.slice])


def write_breakdown(report: Any, slices: Sequence[EvalSlice], settings: Any, out_dir: str | Path) -> dict[str, Any]:
    """Break down ``report``'s errors on its slices (``report.predictions``), store the result in
    ``report.error_breakdown`` and its table and plot as ``champion_errors.md`` / ``.png`` in ``report.plots``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report.error_breakdown = breakdown_for_slices(slices, report.predictions, settings)
    if report.error_breakdown:
        md = out / "champion_errors.md"
        md.write_text(markdown(report.error_breakdown))
        report.plots["champion_errors.md"] = str(md)
        report.plots["champion_errors.png"] = str(plot(report.error_breakdown, out / "champion_errors.png"))
    return report.error_breakdown


def log_breakdown(registry: Any, run_id: str, report: Any) -> None:
    """Log ``report.error_breakdown`` to an MLflow run: metrics ``champion_errors.<slice>.<group>.dap_<type>``,
    the table and the plot under ``errors/``."""
    if not report.error_breakdown:
        return
    registry.log_metrics(run_id, [(k, v, 0) for k, v in flat_metrics(report.error_breakdown,
                                                                       "champion_errors").items()])
    for name in ("champion_errors.md", "champion_errors.png"):
        if name in report.plots and Path(report.plots[name]).is_file():
            registry.log_artifact(run_id, Path(report.plots[name]), "errors")
