"""Label-free accuracy over several champions: pool drift-benchmark results (issue 21).

``python -m benchmarks.label_free_pool RESULT.json ... --out pooled.json --plot scatter.png`` (also ``detloop bench
label-free``): each input is a ``benchmarks.drift`` result (one champion, its camera-days with the true mAP50 and
every estimator's estimate). Per champion and pooled: camera-days within 0.05 mAP50, overall, on the camera-days
whose true mAP50 moved >= 0.05 from the camera's reference days and on the others; the ATC weight the monitor's
cross-validation gave each champion; a scatter of estimate against truth for ATC and the monitor's default
estimator; and the **release rule** of carried cameras (:func:`release`) judged on each drift's camera-days.
Nothing is re-scored.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
COLUMNS = ("atc", "doc", "atc_doc", "weighted", "flip", "combined", "atc_per_camera")
RELEASE_COLUMNS = ("atc_doc", "weighted", "atc", "doc")
OUTCOMES = ("released_back", "held_down", "released_down", "held_back")


def within(rows: Sequence[Mapping[str, Any]], key: str, tolerance: float = 0.05) -> tuple[int, int]:
    """``(within, n)``: camera-days whose ``key`` estimate is within ``tolerance`` of the true mAP50
    (:func:`tasks.label_free.agreement`, as counts; NaN and missing estimates left out of ``n``)."""
    from tasks.label_free import agreement

    a = agreement([np.nan if r.get(key) is None else r[key] for r in rows],
                  [np.nan if r["true_map50"] is None else r["true_map50"] for r in rows], tolerance)
    return (round(a["within"] * a["n"]) if a["n"] else 0), a["n"]


def naive(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows with ``naive``: the camera's calibration mAP50 carried forward (no estimate at all)."""
    return [{**r, "naive": r["calibration_per_camera"]["map50"]} for r in rows]


def pool(results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Per champion and pooled: ``{column: {"all" | "moved" | "stationary": [within, n]}}`` (pure)."""
    cols = [*COLUMNS, "naive"]
    out: dict[str, Any] = {"champions": {}, "pooled": {}}
    every: list[dict[str, Any]] = []
    for name, res in results.items():
        rows = naive(res["label_free"]["rows"])
        every += rows
        out["champions"][name] = {
            "model": res["model"]["path"], "camera_days": len(rows),
            "atc_weight": rows[0]["calibration"].get("atc_weight") if rows else None,
            "true_map50_range": [min(r["true_map50"] for r in rows), max(r["true_map50"] for r in rows)] if rows
            else None,
            **{c: _parts(rows, c) for c in cols}}
    out["pooled"] = {c: _parts(every, c) for c in cols}
    out["camera_days"] = len(every)
    return out


def _parts(rows: Sequence[Mapping[str, Any]], col: str) -> dict[str, list[int]]:
    return {"all": list(within(rows, col)), "moved": list(within([r for r in rows if r["moved"]], col)),
            "stationary": list(within([r for r in rows if not r["moved"]], col))}


def release(results: Mapping[str, Mapping[str, Any]], columns: Sequence[str] = RELEASE_COLUMNS,
            tolerance: float = 0.05, clean_days: int = 3, check: bool = False) -> dict[str, Any]:
    """The release rule of a carried camera (:func:`tasks.drift.recovered_by_estimate`, used by
    ``flows.drift.release_carried``) replayed on each drift of each champion (pure).

    For a drift's camera, the camera-days before its onset stand for the carried pre-onset reference: their mean
    estimate is the reference estimate and their mean true mAP50 the reference truth. Each camera-day from the
    onset on is **released** when its estimate is within ``tolerance`` of the reference estimate, and its truth is
    **back** when its true mAP50 is within ``tolerance`` of the reference truth. ``released_back`` and
    ``held_down`` are right; ``released_down`` lets a camera that lost accuracy go (its episode closes as
    recovered); ``held_back`` keeps paying rounds for a camera that is fine. Split by the drift's kind
    (``inputs_only``: its true mAP50 did not drop; ``lowers_map``), per champion and pooled; results without
    drifts or camera-days are skipped.

    The monitor lets a camera go after ``clean_days`` clean days in a row (``drift.close_after_clean_days``):
    per drift, ``cameras`` counts the champions under which that happened (``released``), and of those, the
    ones where a day of that run had its truth down (``released_down``).

    ``check``: the labelled check of a release (:func:`tasks.drift.estimate_overreads`) as well. The camera-days
    from the onset up to the day before stand for its labelled control frames since the onset: when the estimate
    over-reads their mean true mAP50 by more than ``tolerance``, the day is held. Their truth is measured on ~200
    frames a day, so this is the check without the sampling noise of a few dozen control frames.

    Returns:
        ``{"tolerance", "clean_days", "pooled": {column: {kind: {outcome: n}}}, "champions": {name: same},
        "by_drift": {column: {drift name: {outcome: n}}}, "cameras": {column: {drift name: {"champions",
        "released", "released_down"}}}}`` (pooled over champions).
    """
    from tasks.drift import estimate_overreads, recovered_by_estimate

    def empty() -> dict[str, dict[str, dict[str, int]]]:
        return {c: {k: dict.fromkeys(OUTCOMES, 0) for k in ("inputs_only", "lowers_map")} for c in columns}

    def mean(rows: Sequence[Mapping[str, Any]], key: str) -> float | None:
        v = [float(r[key]) for r in rows if r.get(key) is not None and np.isfinite(r[key])]
        return float(np.mean(v)) if v else None

    pooled, champions = empty(), {}
    by_drift: dict[str, dict[str, dict[str, int]]] = {c: {} for c in columns}
    cameras: dict[str, dict[str, dict[str, int]]] = {c: {} for c in columns}
    for name, res in results.items():
        rows = (res.get("label_free") or {}).get("rows") or []
        mine = empty()
        for drift_name, drift in (res.get("drifts") or {}).items():
            kind = drift.get("kind")
            if kind not in ("inputs_only", "lowers_map"):
                continue
            cam_rows = [r for r in rows if r.get("camera") == drift["camera"] and r.get("day")]
            pre = [r for r in cam_rows if r["day"] < drift["onset"]]
            post = [r for r in cam_rows if r["day"] >= drift["onset"]]
            ref_true = mean(pre, "true_map50")
            if ref_true is None:
                continue
            for col in columns:
                ref_est = mean(pre, col)
                run: list[bool] = []  # truth back on each day of the current run of released days
                cam = cameras[col].setdefault(drift_name, {"champions": 0, "released": 0, "released_down": 0})
                cam["champions"] += 1
                let_go = let_go_down = False
                earlier: list[Mapping[str, Any]] = []
                for r in sorted(post, key=lambda r: r["day"]):
                    est = r.get(col)
                    labelled, earlier = list(earlier), [*earlier, r]
                    if ref_est is None or est is None or not np.isfinite(est):
                        run = []  # a day without an estimate is not clean
                        continue
                    released = recovered_by_estimate(ref_est, float(est), tolerance)
                    if check and released and labelled:
                        released = not estimate_overreads(mean(labelled, "true_map50"), mean(labelled, col), tolerance)
                    back = r["true_map50"] >= ref_true - tolerance
                    outcome = f"{'released' if released else 'held'}_{'back' if back else 'down'}"
                    mine[col][kind][outcome] += 1
                    pooled[col][kind][outcome] += 1
                    per = by_drift[col].setdefault(drift_name, dict.fromkeys(OUTCOMES, 0))
                    per[outcome] += 1
                    run = [*run, back] if released else []
                    if len(run) >= clean_days and not let_go:
                        let_go, let_go_down = True, not all(run[-clean_days:])
                cam["released"] += let_go
                cam["released_down"] += let_go_down
        champions[name] = mine
    return {"tolerance": tolerance, "clean_days": clean_days, "pooled": pooled, "champions": champions,
            "by_drift": by_drift, "cameras": cameras}


def plot(results: Mapping[str, Mapping[str, Any]], out: Path, columns: Sequence[str] = ("atc", "weighted")) -> None:
    """Estimate against true mAP50, one panel per column, one colour per champion, the +-0.05 band shaded;
    filled marks: camera-days whose true mAP50 moved >= 0.05."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(columns), figsize=(5.2 * len(columns), 5), sharex=True, sharey=True)
    axes = np.atleast_1d(axes)
    for ax, col in zip(axes, columns, strict=True):
        ax.fill_between([0, 1], [-0.05, 0.95], [0.05, 1.05], color="0.9", label="within 0.05")
        ax.plot([0, 1], [0, 1], color="0.5", lw=0.8)
        for k, (name, res) in enumerate(results.items()):
            rows = [r for r in res["label_free"]["rows"] if r.get(col) is not None and np.isfinite(r[col])]
            colour = f"C{k % 10}"
            for moved, mark in ((False, "o"), (True, "s")):
                sel = [r for r in rows if r["moved"] is moved]
                ax.scatter([r["true_map50"] for r in sel], [r[col] for r in sel], s=16, marker=mark,
                           facecolors=colour if moved else "none", edgecolors=colour,
                           label=name if not moved else None)
        w, n = within([r for res in results.values() for r in res["label_free"]["rows"]], col)
        ax.set_title(f"{col}: {w}/{n} = {w / max(n, 1):.0%} within 0.05")
        ax.set_xlabel("true mAP50 (200 frames)")
        ax.set_xlim(0.1, 0.9)
        ax.set_ylim(0.0, 0.95)
    axes[0].set_ylabel("label-free estimate")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle("Label-free mAP50 per camera-day (filled squares: true mAP50 moved >= 0.05)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", type=Path, help="benchmarks.drift result JSONs (one champion each)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/label_free_pooled.json")
    ap.add_argument("--plot", type=Path, default=None, help="scatter PNG (estimate against truth)")
    args = ap.parse_args(argv)
    results = {p.stem.removeprefix("drift_").removeprefix("lf_pooled_"): json.loads(p.read_text()) for p in args.results}
    res = {"bench": "label_free_pool", "inputs": [str(p) for p in args.results], **pool(results),
           "release": release(results), "release_checked": release(results, check=True)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    if args.plot:
        plot(results, args.plot)
    for c in [*COLUMNS, "naive"]:
        a, m = res["pooled"][c]["all"], res["pooled"][c]["moved"]
        print(f"{c:16s} {a[0]:4d}/{a[1]:4d} = {a[0] / max(a[1], 1):5.1%}   moved {m[0]:3d}/{m[1]:3d}")
    for key, what in (("release", "estimate alone"), ("release_checked", "with the labelled check")):
        print(f"release of a carried camera, {what} (drifted camera-days): right / released but down / held but back")
        for c, kinds in res[key]["pooled"].items():
            parts = [f"{k} {o['released_back'] + o['held_down']}/{sum(o.values())} right, {o['released_down']} "
                     f"released down, {o['held_back']} held back" for k, o in kinds.items()]
            print(f"{c:10s} " + "; ".join(parts))
            print(" " * 11 + "cameras let go (released / while down / champions): " + ", ".join(
                f"{d} {v['released']}/{v['released_down']}/{v['champions']}" for d, v in res[key]["cameras"][c].items()))
    res["headline"] = {c: res["pooled"][c]["all"] for c in ("atc", "weighted")}
    return res


if __name__ == "__main__":
    main()
