"""Would tiling a camera help? Its champion scored whole and tiled on the camera's labelled frames it never trained on.

The drift report's shrink note (:func:`tasks.drift.shrink_advice`) names per-camera tiling
(``model.tiling.cameras.<camera>``) when a drifted camera's objects shrank, and asks for a measurement first:
tiling costs about one model pass per tile and lowers an unzoomed camera's mAP50-95. This is that measurement, on
what a team has: the labelled frames of the camera (the targeted round's labels, the golden set, the control arm)
that the champion never trained on, scored once per variant with the champion's own scoring artifact and the same
decode as production (:func:`tasks.evaluation.predict_items`).

Variants: ``whole`` (the frame scored whole), ``tN`` (tiles of N frame pixels, ``model.tiling.overlap`` apart, no
whole-frame pass), ``tNf`` (the same plus the whole frame, merged as production merges them). Seconds per frame are
measured in the same run, so a variant's cost is its ratio to ``whole``. The pure parts (variant spellings, the tiled
settings, which frames count, the advice) are separate from the scoring.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detloop.errors import ConfigError

_VARIANT = re.compile(r"^(whole|t(\d+)(f?))$")
DEFAULT_VARIANTS = ("whole", "t320", "t320f")
UNSEEN_SPLITS = ("golden", "val", "control")  # never trained on, by any model


def parse_variant(name: str) -> dict[str, Any] | None:
    """``whole`` -> None (no tiling); ``tN`` -> a tiling override with tile N and no whole-frame pass; ``tNf`` ->
    the same with the whole frame too.

    Raises:
        ConfigError: any other spelling, or a tile below the model stride (32).
    """
    m = _VARIANT.match(name)
    if m is None:
        raise ConfigError(f"variant {name!r}: expected whole, tN or tNf (N: tile side in frame pixels, f: also the "
                          "whole frame)")
    if m.group(1) == "whole":
        return None
    tile = int(m.group(2))
    if tile < 32:
        raise ConfigError(f"variant {name!r}: the tile must be >= 32 frame pixels (the model stride)")
    return {"enabled": True, "tile": tile, "full_frame": bool(m.group(3))}


def with_tiling(settings: Any, camera: str, override: dict[str, Any] | None) -> Any:
    """``settings`` with ``camera`` tiled by ``override`` (None: scored whole), validated as a config would be.

    Raises:
        pydantic.ValidationError: the override is invalid with the section's other values (an overlap not below
            the tile).
    """
    from detloop.settings import TilingSettings

    t = settings.model.tiling
    cams = {c: o for c, o in t.cameras.items() if c != camera}
    if override is not None:
        cams[camera] = override
    elif t.enabled:  # the section tiles every camera: this one is told not to
        cams[camera] = {"enabled": False}
    tiling = TilingSettings.model_validate({**t.model_dump(), "cameras": cams})
    return settings.model_copy(update={"model": settings.model.model_copy(update={"tiling": tiling})})


def unseen_entries(entries: Iterable[Any], trained: Collection[str], camera: str,
                   since: str | None = None) -> list[Any]:
    """The dataset entries (:class:`detloop.datasets.DatasetEntry`) of ``camera`` captured on or after ``since``
    that a model trained on the frames ``trained`` (their ``frame_sha``) never saw: golden, val and control frames,
    and train frames not in ``trained`` (labelled after it was trained: a targeted round's). Synthetic frames never
    count. One entry per frame (the first seen)."""
    out: dict[str, Any] = {}
    for e in entries:
        if e.camera != camera or e.synthetic or (since is not None and e.date < since) or e.frame_sha in out:
            continue
        if e.split in UNSEEN_SPLITS or (e.split == "train" and e.frame_sha not in trained):
            out[e.frame_sha] = e
    return list(out.values())


def camera_items(store: Any, settings: Any, camera: str, trained_version: str | None, since: str | None = None,
                 version: str | None = None) -> tuple[list[Any], dict[str, int]]:
    """The evaluation items (:class:`tasks.evaluation.EvalItem`) of :func:`unseen_entries` for a model trained on
    dataset version ``trained_version`` (None: it saw no labelled frame): from ``version`` (default the newest
    labelled version) and the newest golden version, each frame once. Returns the items and their count per split."""
    from detloop import datasets as ds
    from tasks.selection import labelled_version
    from tasks.slices import items_from_version

    trained = {e.frame_sha for e in ds.load_manifest(store, settings, trained_version).entries} \
        if trained_version else set()
    versions = [v for v in (labelled_version(store, settings, version), ds.latest_version(store, settings, "golden"))
                if v]
    items: list[Any] = []
    counts: dict[str, int] = {}
    seen: set[str] = set()
    for vid in dict.fromkeys(versions):
        m = ds.load_manifest(store, settings, vid)
        picked = [e for e in unseen_entries(m.entries, trained, camera, since) if e.frame_sha not in seen]
        for split in sorted({e.split for e in picked}):
            got = items_from_version(store, settings, vid, split, manifest=m,
                                     frames={e.frame_sha for e in picked if e.split == split})
            items += got
            counts[split] = counts.get(split, 0) + len(got)
        seen |= {e.frame_sha for e in picked}
    return items, counts


@dataclass(frozen=True)
class VariantScore:
    """One variant of a camera's scoring on its unseen labelled frames; ``gain``: the paired-bootstrap interval of its
    mAP50 minus whole frames' (:func:`gain_interval`), None for ``whole`` itself or without ground truth."""

    variant: str
    map50: float | None
    map: float | None
    small_map: float | None  # AP50-95 of the small objects (COCO: < 32 x 32 frame pixels); None without any
    seconds_per_frame: float
    gain: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "map50": self.map50, "map": self.map, "small_map": self.small_map,
                "seconds_per_frame": self.seconds_per_frame,
                "gain_interval": list(self.gain) if self.gain is not None else None}


LEVEL = 0.9  # the gain interval's coverage


def gain_interval(gts: Sequence[Any], base: Sequence[Any], other: Sequence[Any], classes: Sequence[str],
                  n_boot: int = 200, seed: int = 0, level: float = LEVEL) -> tuple[float, float] | None:
    """Paired bootstrap over frames of mAP50(``other``) - mAP50(``base``): frames resampled with replacement, both
    predictions scored on the same resample (the frames' difficulty cancels). ``level`` central interval; None when
    no resample had ground truth."""
    import numpy as np

    from tasks.evaluation import compute_metrics

    rng = np.random.default_rng(seed)
    n = len(gts)
    diffs = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        g = [gts[i] for i in idx]
        a = compute_metrics("base", g, [base[i] for i in idx], classes, None, 1).overall.map50
        b = compute_metrics("other", g, [other[i] for i in idx], classes, None, 1).overall.map50
        if a is not None and b is not None:
            diffs.append(b - a)
    if not diffs:
        return None
    q = (1.0 - level) / 2.0
    return float(np.quantile(diffs, q)), float(np.quantile(diffs, 1.0 - q))


def score_variants(artifact: Path, items: Sequence[Any], settings: Any, camera: str,
                   variants: Sequence[str] = DEFAULT_VARIANTS,
                   log: Callable[[str], None] | None = None) -> list[VariantScore]:
    """Each variant's mAP50, mAP50-95, small-object AP and seconds per frame of the scoring ``artifact`` on
    ``items`` (:class:`tasks.evaluation.EvalItem` of ``camera``), timed in this run.

    Raises:
        ConfigError: a variant is misspelt (before anything is scored).
    """
    from tasks.evaluation import compute_metrics, predict_items

    ordered = sorted(variants, key=lambda v: v != "whole")  # whole first: the others' gains are against it
    plan = [(v, with_tiling(settings, camera, parse_variant(v))) for v in ordered]  # all validated first
    gts = [it.gt for it in items]
    out = []
    preds_of: dict[str, list[Any]] = {}
    for name, s in plan:
        t0 = time.perf_counter()
        preds = preds_of[name] = predict_items(artifact, items, s, s.model.batch_size)
        dt = time.perf_counter() - t0
        m = compute_metrics(camera, gts, preds, s.classes, [camera] * len(items), s.evaluation.min_instances)
        small = m.per_size.get("small")
        gain = (gain_interval(gts, preds_of["whole"], preds, s.classes)
                if name != "whole" and "whole" in preds_of else None)
        out.append(VariantScore(name, m.overall.map50, m.overall.map,
                                small.map if small is not None and small.n_instances else None,
                                dt / max(1, len(items)), gain))
        if log is not None:
            log(f"{camera} {name}: mAP50 {_f(m.overall.map50)} mAP50-95 {_f(m.overall.map)} "
                f"({dt / max(1, len(items)) * 1000:.0f} ms/frame)")
    return out


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _ci(g: tuple[float, float] | None) -> str:
    return "" if g is None else f" [{g[0]:+.3f}, {g[1]:+.3f}]"


def advice(camera: str, scores: Sequence[VariantScore], n_frames: int, min_gain: float = 0.02) -> str:
    """One line: the tiled variant with the best mAP50 when it beats ``whole`` by at least ``min_gain`` and its gain
    interval (when known) lies above 0, with its cost ratio and the setting to use; else that whole frames stay, and
    why (too small, or within the noise of this many frames: label more and measure again). Pure."""
    whole = next((s for s in scores if s.variant == "whole"), None)
    tiled = [s for s in scores if s.variant != "whole" and s.map50 is not None]
    if whole is None or whole.map50 is None or not tiled:
        return f"{camera}: nothing to compare (whole and at least one tiled variant are needed, with ground truth)"
    best = max(tiled, key=lambda s: (s.map50, s.map or 0.0))
    gain = best.map50 - whole.map50  # type: ignore[operator]
    cost = best.seconds_per_frame / whole.seconds_per_frame if whole.seconds_per_frame > 0 else float("nan")
    where = f"on {n_frames} labelled frames the champion never trained on"
    ci = _ci(best.gain)
    if gain < min_gain:
        return (f"{camera}: keep whole frames: the best tiled variant ({best.variant}) is {gain:+.3f}{ci} mAP50 "
                f"{where} (below the {min_gain:.2f} asked) at {cost:.1f}x the scoring time")
    if best.gain is not None and best.gain[0] <= 0.0:
        return (f"{camera}: not yet: {best.variant} is {gain:+.3f}{ci} mAP50 {where}, and that interval "
                f"({LEVEL:.0%}, paired bootstrap over the frames) reaches zero: label more of the camera (a targeted "
                f"round) and measure again before paying {cost:.1f}x its scoring time")
    o = parse_variant(best.variant) or {}
    return (f"{camera}: {best.variant} is {gain:+.3f}{ci} mAP50 ({_f(best.map)} mAP50-95 against {_f(whole.map)}) "
            f"{where}, at {cost:.1f}x the scoring time: model.tiling.cameras.{camera}: "
            f"{{enabled: true, tile: {o.get('tile')}, full_frame: {str(o.get('full_frame')).lower()}}}")


def markdown(camera: str, scores: Sequence[VariantScore]) -> str:
    """A table: per variant mAP50, its gain interval over ``whole``, mAP50-95, small AP, ms per frame and cost."""
    base = next((s.seconds_per_frame for s in scores if s.variant == "whole"), None)
    lines = [f"| {camera} | mAP50 | mAP50 gain [{LEVEL:.0%} CI] | mAP50-95 | small AP | ms / frame | cost |",
             "|---|---|---|---|---|---|---|"]
    for s in scores:
        cost = f"{s.seconds_per_frame / base:.1f}x" if base else "-"
        gain = _ci(s.gain).strip() or "-"
        lines.append(f"| {s.variant} | {_f(s.map50)} | {gain} | {_f(s.map)} | {_f(s.small_map)} | "
                     f"{s.seconds_per_frame * 1000:.0f} | {cost} |")
    return "\n".join(lines) + "\n"
