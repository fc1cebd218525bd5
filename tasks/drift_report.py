"""Pictures of a drift report (matplotlib, headless): overlaid histograms of a camera-day against the
reference, the time series of every camera, and live accuracy beside the golden mAP.

Plain data in, a PNG out; nothing here reads a store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tasks.drift import CameraDayStats, Episode, Features, Verdict


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_histograms(ref: Features, cur: Features, class_names: Sequence[str], title: str, path: Path) -> Path:
    """Reference vs window, overlaid: confidence, log box area, detections per frame, brightness, contrast
    (densities over shared bins) and the class mix (shares)."""
    plt = _plt()
    fig, axes = plt.subplots(2, 3, figsize=(11, 6), dpi=100)
    panels: list[tuple[str, np.ndarray, np.ndarray]] = [
        ("confidence (boxes)", ref.box_confidence, cur.box_confidence),
        ("ln box area (px², boxes)", ref.box_log_area, cur.box_log_area),
        ("detections per frame", ref.detections.astype(float), cur.detections.astype(float)),
        ("brightness (frames)", ref.brightness, cur.brightness),
        ("contrast (frames)", ref.contrast, cur.contrast),
    ]
    for ax, (name, r, c) in zip(axes.flat, panels, strict=False):
        both = np.concatenate([r, c]) if r.size + c.size else np.zeros(1)
        lo, hi = float(np.min(both)), float(np.max(both))
        if hi <= lo:
            hi = lo + 1.0
        bins: Any = np.arange(lo - 0.5, hi + 1.5) if name.startswith("detections") else np.linspace(lo, hi, 31)
        if r.size:
            ax.hist(r, bins=bins, density=True, alpha=0.45, color="tab:blue", label=f"reference ({r.size})")
        if c.size:
            ax.hist(c, bins=bins, density=True, alpha=0.45, color="tab:orange", label=f"window ({c.size})")
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    ax = axes.flat[5]
    k = len(class_names)
    rc = np.bincount(ref.box_class, minlength=k)[:k].astype(float)
    cc = np.bincount(cur.box_class, minlength=k)[:k].astype(float)
    x = np.arange(k)
    ax.bar(x - 0.2, rc / max(1.0, rc.sum()), 0.4, color="tab:blue", alpha=0.7, label="reference")
    ax.bar(x + 0.2, cc / max(1.0, cc.sum()), 0.4, color="tab:orange", alpha=0.7, label="window")
    ax.set_xticks(x, list(class_names), fontsize=7)
    ax.set_title("class mix (share of boxes)", fontsize=9)
    ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_timeseries(days: Sequence[str], cameras: Sequence[str], stats: Mapping[str, Mapping[str, CameraDayStats]],
                    verdicts: Mapping[str, Mapping[str, Verdict]], episodes: Sequence[Episode], min_signals: int,
                    path: Path) -> Path:
    """One row per camera: signals per day (bars: red = drift, grey = clean), days without enough data
    marked, the brightness and confidence PSI (line, right axis), episodes shaded."""
    plt = _plt()
    n = max(1, len(cameras))
    fig, axes = plt.subplots(n, 1, figsize=(11, 1.7 * n + 0.6), dpi=100, sharex=True, squeeze=False)
    x = np.arange(len(days))
    for ax, cam in zip(axes[:, 0], cameras, strict=True):
        sig, col, psi_b, psi_c = [], [], [], []
        for d in days:
            v = verdicts.get(d, {}).get(cam)
            s = stats.get(d, {}).get(cam)
            sig.append(len(v.signals) if v is not None else 0)
            col.append({"drift": "tab:red", "clean": "tab:gray"}.get(v.status if v else "", "white"))
            tb = s.test("brightness", "psi") if s is not None else None
            tc = s.test("confidence", "psi") if s is not None else None
            psi_b.append(tb.value if tb is not None else np.nan)
            psi_c.append(tc.value if tc is not None else np.nan)
            if v is None or v.status == "insufficient":
                ax.text(x[len(sig) - 1], 0.2, "n/a", ha="center", fontsize=6, color="tab:gray")
        for e in episodes:
            if cam in e.cameras:
                idx = [i for i, d in enumerate(days) if d >= e.days[0] and (e.closed_on is None or d <= e.closed_on)]
                if idx:
                    ax.axvspan(idx[0] - 0.5, idx[-1] + 0.5, color="tab:red", alpha=0.08)
        ax.bar(x, sig, color=col, edgecolor="black", linewidth=0.3)
        ax.axhline(min_signals - 0.5, color="tab:red", lw=0.6, ls=":")
        ax.set_ylabel(f"{cam}\nsignals", fontsize=8)
        ax.tick_params(labelsize=7)
        ax2 = ax.twinx()
        ax2.plot(x, psi_b, "-", color="tab:purple", lw=1, label="PSI brightness")
        ax2.plot(x, psi_c, "-", color="tab:green", lw=1, label="PSI confidence")
        ax2.set_ylim(bottom=0)
        ax2.tick_params(labelsize=7)
        if cam == cameras[0]:
            ax2.legend(fontsize=7, loc="upper left")
    axes[-1, 0].set_xticks(x, [d[5:] for d in days], fontsize=7, rotation=45)
    fig.suptitle("signals per camera-day (red: drift, grey: clean, n/a: not enough data); shaded: episodes",
                 fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_live(live: Any, path: Path) -> Path:
    """Live mAP50-95 (control arm, rolling over rounds, with its interval) beside the golden mAP, and the
    pooled live mAP per camera."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.6), dpi=100, gridspec_kw={"width_ratios": [3, 2]})
    pts = [p for p in live.series if p.map is not None]
    xs = np.arange(len(live.series))
    labels = [p.as_of or p.label for p in live.series]
    if pts:
        m = np.array([p.map if p.map is not None else np.nan for p in live.series], float)
        lo = np.array([p.low if p.low is not None else np.nan for p in live.series], float)
        hi = np.array([p.high if p.high is not None else np.nan for p in live.series], float)
        a1.errorbar(xs, m, yerr=[np.nan_to_num(m - lo), np.nan_to_num(hi - m)], fmt="o-", capsize=3,
                    label=f"live (control arm, {int(live.level * 100)}% interval)")
    g = np.array([p.golden_map if p.golden_map is not None else np.nan for p in live.series], float)
    if np.isfinite(g).any():
        a1.plot(xs, g, "s--", color="tab:gray", label="golden (champion after the round)")
    if live.golden_map is not None:
        a1.axhline(live.golden_map, color="black", lw=0.7, ls=":", label=f"golden of v{live.model_version}")
    a1.set_xticks(xs, labels, fontsize=7, rotation=30)
    a1.set_ylabel("mAP50-95")
    a1.set_title(f"v{live.model_version} on the control frames of recent rounds", fontsize=9)
    a1.legend(fontsize=7)
    a1.grid(alpha=0.3)
    cams = [p for p in live.pooled if p.map is not None]
    if cams:
        x2 = np.arange(len(cams))
        v = np.array([p.map for p in cams], float)
        lo = np.array([p.low if p.low is not None else p.map for p in cams], float)
        hi = np.array([p.high if p.high is not None else p.map for p in cams], float)
        a2.bar(x2, v, yerr=[v - lo, hi - v], capsize=3, color=["tab:blue"] + ["tab:cyan"] * (len(cams) - 1))
        a2.set_xticks(x2, [f"{p.camera}\n({p.n_frames})" for p in cams], fontsize=7)
    a2.set_title("pooled, overall and per camera (frames)", fontsize=9)
    a2.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
