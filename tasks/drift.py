"""Drift monitoring, the pure part: what is measured on scored frames, how a camera-day is compared with the
champion's reference, when a camera-day counts as drifted, and how drifted days open and close episodes.

Everything here is a plain function over plain data (no client, no Prefect), so the per-camera-day decision
can be replayed cheaply over stored statistics (:func:`verdict`, :func:`replay`): change the rule, replay,
compare alarms. The statistics themselves are in :mod:`tasks.drift_stats`; the records in S3 in
:mod:`tasks.drift_records`.

What is measured (:class:`Features`), per frame: brightness and contrast (grey mean / std of the frame, in
[0, 1]), the number of detections (boxes with confidence >= ``drift.min_confidence``), whether there is none,
and the scoring pass's embedding; per box: confidence, class, log of the box area (frame px^2).

Tests per camera-day (:func:`compare`), window = the camera's frames of that day, reference = the camera's
reference frames (all cameras' when the camera has too few, e.g. a new camera):

==============================  =========  =======================================================
feature                          unit       statistics
==============================  =========  =======================================================
brightness, contrast,            frame      PSI, KS (scipy), Wasserstein
detections (per frame)
empty (frames without boxes)     frame      chi-squared 2 x 2 (scipy)
confidence, log_area,            box        PSI, KS (p-value by permuting whole frames), Wasserstein
confidence[<class>]
class_mix                        box        PSI over classes, chi-squared (p by permuting whole frames)
embedding                        frame      MMD (RBF, permutation test)
==============================  =========  =======================================================
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import date, timedelta
from functools import partial
from typing import Any, Literal

import numpy as np

from detloop.settings import DriftSettings
from tasks import drift_stats as ds

FRAME_FEATURES = ("brightness", "contrast", "detections")
BOX_FEATURES = ("confidence", "log_area")
Status = Literal["drift", "clean", "insufficient"]
CLASS_SHARE_CHANGE = 0.05  # a class whose share moves this much is named in a class-mix alarm
STATS_VERSION = 3  # bump when a statistic's definition changes: stored statistics are then recomputed (3: log_area summary)


# --------------------------------------------------------------------------------------------
# What is measured
# --------------------------------------------------------------------------------------------
@dataclass
class Features:
    """Measurements of a set of scored frames: parallel arrays, one row per frame and one per box.

    Attributes:
        camera, day: ``(F,)`` str: where and when each frame was taken.
        brightness, contrast: ``(F,)`` float in [0, 1].
        detections: ``(F,)`` int: boxes with confidence >= the threshold.
        embedding: ``(F, D)`` float32, or None when the model gives none.
        box_frame: ``(M,)`` int: index of each box's frame.
        box_confidence: ``(M,)`` float; box_class: ``(M,)`` int; box_log_area: ``(M,)`` ln(px^2).
    """

    camera: np.ndarray
    day: np.ndarray
    brightness: np.ndarray
    contrast: np.ndarray
    detections: np.ndarray
    embedding: np.ndarray | None
    box_frame: np.ndarray
    box_confidence: np.ndarray
    box_class: np.ndarray
    box_log_area: np.ndarray

    @property
    def n_frames(self) -> int:
        return int(self.camera.size)

    @property
    def n_boxes(self) -> int:
        return int(self.box_frame.size)

    @classmethod
    def empty(cls) -> Features:
        z = np.zeros(0)
        return cls(np.zeros(0, "U1"), np.zeros(0, "U1"), z, z, np.zeros(0, np.int64), None,
                   np.zeros(0, np.int64), z, np.zeros(0, np.int64), z)

    @classmethod
    def from_scored(cls, frames: Sequence[Any], min_confidence: float) -> Features:
        """From :class:`~detloop.contracts.ScoredFrame` s (boxes below ``min_confidence`` are left out)."""
        if not frames:
            return cls.empty()
        cams, days, bri, con, nd, emb = [], [], [], [], [], []
        bf, bc, bk, ba = [], [], [], []
        for i, f in enumerate(frames):
            d = f.detections
            keep = d.confidence >= min_confidence
            cams.append(f.frame.camera)
            days.append(f.frame.date)
            bri.append(f.brightness)
            con.append(f.contrast)
            nd.append(int(keep.sum()))
            emb.append(f.embedding)
            bf.append(np.full(int(keep.sum()), i, np.int64))
            bc.append(d.confidence[keep].astype(np.float64))
            bk.append(d.class_id[keep].astype(np.int64))
            ba.append(np.log(np.maximum(d.area[keep].astype(np.float64), 1.0)))
        has_emb = all(e is not None for e in emb)
        return cls(np.asarray(cams, str), np.asarray(days, str), np.asarray(bri, np.float64),
                   np.asarray(con, np.float64), np.asarray(nd, np.int64),
                   np.stack(emb).astype(np.float32) if has_emb else None,
                   np.concatenate(bf), np.concatenate(bc), np.concatenate(bk), np.concatenate(ba))

    def select(self, mask: np.ndarray) -> Features:
        """The frames where ``mask (F,)`` is True, with their boxes (re-indexed)."""
        mask = np.asarray(mask, bool)
        new_index = np.cumsum(mask) - 1
        keep_box = mask[self.box_frame] if self.n_boxes else np.zeros(0, bool)
        return Features(self.camera[mask], self.day[mask], self.brightness[mask], self.contrast[mask],
                        self.detections[mask], None if self.embedding is None else self.embedding[mask],
                        new_index[self.box_frame[keep_box]] if self.n_boxes else self.box_frame,
                        self.box_confidence[keep_box], self.box_class[keep_box], self.box_log_area[keep_box])

    def of_camera(self, camera: str) -> Features:
        return self.select(self.camera == camera)

    def of_day(self, day: str) -> Features:
        return self.select(self.day == day)

    def frame_values(self, feature: str) -> np.ndarray:
        return {"brightness": self.brightness, "contrast": self.contrast,
                "detections": self.detections.astype(np.float64)}[feature]

    def box_values(self, feature: str) -> np.ndarray:
        return {"confidence": self.box_confidence, "log_area": self.box_log_area}[feature]

    @classmethod
    def concat(cls, parts: Sequence[Features]) -> Features:
        parts = [p for p in parts if p.n_frames]
        if not parts:
            return cls.empty()
        offsets = np.cumsum([0] + [p.n_frames for p in parts[:-1]])
        emb = None if any(p.embedding is None for p in parts) else np.concatenate([p.embedding for p in parts])  # type: ignore[misc]
        return cls(np.concatenate([p.camera for p in parts]), np.concatenate([p.day for p in parts]),
                   np.concatenate([p.brightness for p in parts]), np.concatenate([p.contrast for p in parts]),
                   np.concatenate([p.detections for p in parts]), emb,
                   np.concatenate([p.box_frame + o for p, o in zip(parts, offsets, strict=True)]),
                   np.concatenate([p.box_confidence for p in parts]), np.concatenate([p.box_class for p in parts]),
                   np.concatenate([p.box_log_area for p in parts]))

    def to_npz(self, embedding: bool = True) -> bytes:
        """Compressed ``.npz`` bytes (embeddings as float16; left out with ``embedding=False``)."""
        arrays = {k: v for k, v in asdict(self).items() if k != "embedding"}
        if embedding and self.embedding is not None:
            arrays["embedding"] = self.embedding.astype(np.float16)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_npz(cls, body: bytes) -> Features:
        z = np.load(io.BytesIO(body), allow_pickle=False)
        emb = z["embedding"].astype(np.float32) if "embedding" in z.files else None
        return cls(z["camera"], z["day"], z["brightness"], z["contrast"], z["detections"], emb, z["box_frame"],
                   z["box_confidence"], z["box_class"], z["box_log_area"])


# --------------------------------------------------------------------------------------------
# One camera-day against the reference
# --------------------------------------------------------------------------------------------
@dataclass
class Stat:
    """One statistic of one feature.

    Attributes:
        value: the statistic (PSI, KS D, W1 in feature units, chi-squared, MMD^2).
        p: its p-value (KS, chi-squared, MMD); None for PSI and Wasserstein (effect sizes).
        scaled: Wasserstein in reference standard deviations; the PSI noise floor for PSI.
        band: PSI band (stable / moderate / significant).
    """

    feature: str
    statistic: str
    value: float
    p: float | None = None
    scaled: float | None = None
    band: str | None = None

    @property
    def name(self) -> str:
        return f"{self.feature}:{self.statistic}"


@dataclass
class CameraDayStats:
    """Every statistic of one camera on one day against the reference (what is stored and replayed)."""

    camera: str
    day: str
    n_frames: int
    n_ref_frames: int
    n_boxes: int
    n_ref_boxes: int
    reference: str  # "camera" or "all cameras" (the camera had too few reference frames)
    sufficient: bool
    note: str = ""
    tests: list[Stat] = field(default_factory=list)
    summary: dict[str, list[float]] = field(default_factory=dict)  # feature -> [reference mean, window mean]
    class_shares: dict[str, list[float]] = field(default_factory=dict)  # class -> [reference, window]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CameraDayStats:
        d = dict(d)
        d["tests"] = [Stat(**t) for t in d.get("tests", [])]
        return cls(**d)

    def test(self, feature: str, statistic: str) -> Stat | None:
        return next((t for t in self.tests if t.feature == feature and t.statistic == statistic), None)


def rng_for(seed: int, camera: str, day: str) -> np.random.Generator:
    """A generator that depends only on (seed, camera, day): a re-run draws the same permutations."""
    h = int.from_bytes(hashlib.sha256(f"{seed}|{camera}|{day}".encode()).digest()[:8], "big")
    return np.random.default_rng(h)


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _continuous(feature: str, ref: np.ndarray, cur: np.ndarray, cfg: DriftSettings, ks: Any) -> list[Stat]:
    """PSI, KS (by ``ks(ref, cur) -> (D, p)``) and Wasserstein of one continuous feature, as configured."""
    out: list[Stat] = []
    if "psi" in cfg.statistics:
        bins = ds.psi_bins_for(cur.size, cfg.psi_bins)
        v = ds.psi(ref, cur, bins)
        out.append(Stat(feature, "psi", v, None, ds.psi_noise_floor(bins, ref.size, cur.size),
                        ds.psi_band(v, cfg.psi_moderate, cfg.psi_significant)))
    if "ks" in cfg.statistics:
        d, p = ks(ref, cur)
        out.append(Stat(feature, "ks", d, p))
    if "wasserstein" in cfg.statistics:
        w, scaled = ds.wasserstein(ref, cur)
        out.append(Stat(feature, "wasserstein", w, None, _finite(scaled)))
    return out


def compare(ref: Features, cur: Features, cfg: DriftSettings, class_names: Sequence[str], camera: str, day: str,
            reference_scope: str = "camera") -> CameraDayStats:
    """All configured statistics of one camera-day (``cur``) against its reference (``ref``).

    Frame-level tests use scipy directly (frames are the independent units); box-level tests take their
    p-values from permutations of whole frames; too few frames on either side gives ``sufficient=False``
    and no test; box-level tests need ``cfg.min_boxes`` boxes on both sides (else they are left out).
    """
    stats = CameraDayStats(camera, day, cur.n_frames, ref.n_frames, cur.n_boxes, ref.n_boxes, reference_scope, True)
    for f in FRAME_FEATURES:
        stats.summary[f] = [float(np.mean(ref.frame_values(f))) if ref.n_frames else float("nan"),
                            float(np.mean(cur.frame_values(f))) if cur.n_frames else float("nan")]
    stats.summary["empty"] = [float(np.mean(ref.detections == 0)) if ref.n_frames else float("nan"),
                              float(np.mean(cur.detections == 0)) if cur.n_frames else float("nan")]
    stats.summary["confidence"] = [float(np.mean(ref.box_confidence)) if ref.n_boxes else float("nan"),
                                   float(np.mean(cur.box_confidence)) if cur.n_boxes else float("nan")]
    stats.summary["log_area"] = [float(np.mean(ref.box_log_area)) if ref.n_boxes else float("nan"),
                                 float(np.mean(cur.box_log_area)) if cur.n_boxes else float("nan")]
    rc = np.bincount(ref.box_class, minlength=len(class_names))[: len(class_names)]
    cc = np.bincount(cur.box_class, minlength=len(class_names))[: len(class_names)]
    stats.class_shares = {c: [float(rc[k] / max(1, rc.sum())), float(cc[k] / max(1, cc.sum()))]
                          for k, c in enumerate(class_names)}
    if cur.n_frames < cfg.min_frames or ref.n_frames < cfg.min_frames:
        stats.sufficient = False
        stats.note = (f"not enough data: {cur.n_frames} frame(s) that day and {ref.n_frames} in the reference "
                      f"(drift.min_frames = {cfg.min_frames})")
        return stats
    rng = rng_for(cfg.seed, camera, day)

    # frame-level features: independent frames, scipy's tests as they are
    for f in FRAME_FEATURES:
        stats.tests += _continuous(f, ref.frame_values(f), cur.frame_values(f), cfg, ds.ks_frames)
    if "chi2" in cfg.statistics:
        re_, ce = int((ref.detections == 0).sum()), int((cur.detections == 0).sum())
        chi, p = ds.chi2_frames(np.array([re_, ref.n_frames - re_]), np.array([ce, cur.n_frames - ce]))
        stats.tests.append(Stat("empty", "chi2", chi, p))

    # box-level features: p-values by permuting whole frames
    def clustered(values_ref: np.ndarray, frame_ref: np.ndarray, values_cur: np.ndarray,
                  frame_cur: np.ndarray) -> ds.Clustered:
        return ds.Clustered.of(values_ref, frame_ref, ref.n_frames, values_cur, frame_cur, cur.n_frames)

    def box_ks(rmask: np.ndarray, cmask: np.ndarray, values_ref: np.ndarray, values_cur: np.ndarray) -> Any:
        def ks(_r: np.ndarray, _c: np.ndarray) -> tuple[float, float]:
            data = clustered(values_ref, ref.box_frame[rmask], values_cur, cur.box_frame[cmask])
            return ds.ks_clustered(data, cfg.permutations, rng, cfg.permutations_refine)

        return ks

    groups: list[tuple[str, np.ndarray, np.ndarray]] = []
    for f in BOX_FEATURES:
        groups.append((f, np.ones(ref.n_boxes, bool), np.ones(cur.n_boxes, bool)))
    for k, c in enumerate(class_names):
        groups.append((f"confidence[{c}]", ref.box_class == k, cur.box_class == k))
    for name, rmask, cmask in groups:
        if rmask.sum() < cfg.min_boxes or cmask.sum() < cfg.min_boxes:
            continue
        base = "log_area" if name == "log_area" else "confidence"
        vr, vc = ref.box_values(base)[rmask], cur.box_values(base)[cmask]
        stats.tests += _continuous(name, vr, vc, cfg, box_ks(rmask, cmask, vr, vc))
    if ref.n_boxes >= cfg.min_boxes and cur.n_boxes >= cfg.min_boxes:
        if "psi" in cfg.statistics:
            v = ds.psi_from_counts(rc, cc)
            stats.tests.append(Stat("class_mix", "psi", v, None, ds.psi_noise_floor(len(class_names), int(rc.sum()),
                                                                                   int(cc.sum())),
                                    ds.psi_band(v, cfg.psi_moderate, cfg.psi_significant)))
        if "chi2" in cfg.statistics:
            data = clustered(ref.box_class, ref.box_frame, cur.box_class, cur.box_frame)
            chi, p = ds.chi2_clustered(data, len(class_names), cfg.permutations, rng, cfg.permutations_refine)
            stats.tests.append(Stat("class_mix", "chi2", chi, p))

    # the embeddings: MMD with a permutation test over frames
    if "mmd" in cfg.statistics and ref.embedding is not None and cur.embedding is not None:
        m, p, _sigma = ds.mmd_test(ref.embedding, cur.embedding, cfg.permutations, rng, cfg.mmd_max_frames,
                                   cfg.permutations_refine)
        stats.tests.append(Stat("embedding", "mmd", m, p))
    return stats


def pool_window(day: str, pool_days: int) -> list[str]:
    """The days a camera-day is tested on under ``drift.pool_days``: ``day`` and the ``pool_days - 1`` before it.

    >>> pool_window("2026-02-02", 3)
    ['2026-01-31', '2026-02-01', '2026-02-02']
    """
    d = date.fromisoformat(day)
    return [(d - timedelta(days=k)).isoformat() for k in range(pool_days - 1, -1, -1)]


def pooled(features_by_day: Mapping[str, Features], day: str, pool_days: int) -> Features:
    """The frames ``day`` is tested on: those of the days of :func:`pool_window` that are in ``features_by_day``
    (a day never scored adds nothing)."""
    if pool_days <= 1:
        return features_by_day.get(day, Features.empty())
    return Features.concat([features_by_day[d] for d in pool_window(day, pool_days) if d in features_by_day])


def compare_day(reference: Features, day_features: Features, cfg: DriftSettings, class_names: Sequence[str],
                day: str, cameras: Iterable[str] | None = None) -> dict[str, CameraDayStats]:
    """:func:`compare` for each camera of one day (``cameras``: also those without frames that day).

    A camera with fewer than ``cfg.min_frames`` reference frames is compared with all cameras' reference
    (``reference = "all cameras"``): a new camera is measured against what the champion knew.
    """
    cams = sorted(set(cameras or []) | set(day_features.camera.tolist()))
    out = {}
    for cam in cams:
        ref = reference.of_camera(cam)
        scope = "camera"
        if ref.n_frames < cfg.min_frames:
            ref, scope = reference, "all cameras"
        out[cam] = compare(ref, day_features.of_camera(cam), cfg, class_names, cam, day, scope)
    return out


# --------------------------------------------------------------------------------------------
# The decision for one camera-day (pure, replayable)
# --------------------------------------------------------------------------------------------
@dataclass
class Verdict:
    """What one camera-day says under a rule: ``drift``, ``clean`` or ``insufficient`` (not enough data)."""

    camera: str
    day: str
    status: Status
    signals: list[str] = field(default_factory=list)  # "feature:statistic" that fired
    classes: list[str] = field(default_factory=list)
    adjusted: dict[str, float] = field(default_factory=dict)  # "feature:statistic" -> corrected p-value
    note: str = ""


def verdict(stats: CameraDayStats, cfg: DriftSettings, class_names: Sequence[str] | None = None) -> Verdict:
    """The rule applied to one camera-day's stored statistics.

    The p-valued tests (KS, chi-squared, MMD) of the statistics named in ``cfg.alarm_statistics`` form one
    family, corrected together (``cfg.correction``) and compared with ``cfg.alpha``; a PSI counts when it is
    in the significant band, a Wasserstein distance when it is at least ``cfg.wasserstein_threshold``
    reference standard deviations. At least ``cfg.alarm_min_signals`` signals -> ``drift``; so does one signal
    whose corrected p-value is below ``cfg.alarm_strong_alpha`` (when set).
    """
    if not stats.sufficient:
        return Verdict(stats.camera, stats.day, "insufficient", note=stats.note or "not enough data")
    wanted = set(cfg.alarm_statistics)
    tests = [t for t in stats.tests if t.statistic in wanted]
    tested = [t for t in tests if t.p is not None and math.isfinite(t.p)]
    adjusted = dict(zip([t.name for t in tested], ds.adjust_pvalues([t.p for t in tested], cfg.correction),  # type: ignore[misc]
                        strict=True))
    signals = [n for n, p in adjusted.items() if p < cfg.alpha]
    for t in tests:
        if t.statistic == "psi" and t.value >= cfg.psi_significant:
            signals.append(t.name)
        elif t.statistic == "wasserstein" and t.scaled is not None and t.scaled >= cfg.wasserstein_threshold:
            signals.append(t.name)
    classes: set[str] = set()
    for s in signals:
        feature = s.split(":", 1)[0]
        if feature.startswith("confidence["):
            classes.add(feature[len("confidence["):-1])
        elif feature == "class_mix":
            classes |= {c for c, (r, w) in stats.class_shares.items() if abs(w - r) >= CLASS_SHARE_CHANGE}
    strong = cfg.alarm_strong_alpha is not None and any(p < cfg.alarm_strong_alpha for p in adjusted.values())
    status: Status = "drift" if signals and (len(signals) >= cfg.alarm_min_signals or strong) else "clean"
    order = list(class_names) if class_names else sorted(classes)
    return Verdict(stats.camera, stats.day, status, sorted(signals), [c for c in order if c in classes],
                   {k: float(v) for k, v in adjusted.items()})


def area_ratio(stats: CameraDayStats) -> float | None:
    """The day's detected boxes' area over the reference's (ratio of geometric means), or None when either side
    had no box or the statistics predate it."""
    ref, cur = (stats.summary.get("log_area") or [math.nan, math.nan])[:2]
    if not (math.isfinite(ref) and math.isfinite(cur)):
        return None
    return math.exp(cur - ref)


def shrink_advice(stats: CameraDayStats, v: Verdict, cfg: DriftSettings, tile: int | None = None,
                  since: str | None = None) -> str | None:
    """A one-line note for a drifted camera whose objects shrank (``log_area`` among its signals and its boxes at
    most ``cfg.shrink_advice_ratio`` of their reference area): a zoom-out or a camera moved back, which more labels
    at the same input size may not undo (the soaks' zoom-out never came back within 0.02); per-camera tiling scores
    the camera at native resolution. None otherwise.

    ``tile``: the camera's tile side when it is already tiled (``ModelSettings.tile_spec``): the note then says so
    and points at measuring other tile sizes, instead of advising what is already on. ``since``: the camera's first
    drifted day, for the measuring command the note names (``detloop drift tiling``).

    The ratio is of *detected* boxes, so it understates a shrink when the champion misses the smallest objects.
    """
    if cfg.shrink_advice_ratio <= 0 or v.status != "drift" or not any(s.startswith("log_area:") for s in v.signals):
        return None
    r = area_ratio(stats)
    if r is None or r > cfg.shrink_advice_ratio:
        return None
    what = (f"{stats.camera}: its detected boxes are {r:.2f}x their reference area on {stats.day} (log_area drifted): "
            "its objects shrank (a zoom-out, a camera moved back)")
    check = f"detloop drift tiling {stats.camera}" + (f" --since {since}" if since else "")
    if tile is not None:
        return (f"{what}. It is already tiled ({tile}-px tiles, model.tiling.cameras.{stats.camera}): the targeted "
                f"round's labels teach the new look; whether smaller tiles help, measure once they are labelled: "
                f"`{check} --variant t{tile}f --variant t{max(32, tile // 2)}f`.")
    return (f"{what}, which labels at the same input size may not undo. "
            f"Per-camera tiling scores it at native resolution: model.tiling.cameras.{stats.camera}: "
            "{enabled: true, full_frame: false} (docs/crowds_and_small_objects.md); measure it first, once the "
            f"targeted round is labelled: `{check}` (the champion whole and tiled on the camera's labelled frames it "
            "never trained on).")


def permutation_floor_note(cfg: DriftSettings, n_tests: int) -> str | None:
    """Whether the permutation tests (box-level KS, chi-squared, MMD) can signal under the rule at all.

    Their smallest p-value is ``1 / (n + 1)``, ``n`` the larger of ``permutations`` and ``permutations_refine``
    (a p-value that small has been refined); corrected over a camera-day's ``n_tests`` p-values it
    stays below ``alpha`` only when enough tests are that small at once (Benjamini-Hochberg: ``floor * m / j``;
    Bonferroni: ``floor * m``). When ``alarm_min_signals`` of them at the floor cannot pass, the monitor is deaf
    to every drift that moves only boxes and embeddings (a repainted class, say) and sees only the frame-level
    tests. Returns a one-line note naming the setting and the value that fixes it, or None when all is well.
    """
    if n_tests <= 0:
        return None
    k = min(cfg.alarm_min_signals, n_tests)
    per = k if cfg.correction == "fdr" else 1
    floor = 1.0 / (max(cfg.permutations, cfg.permutations_refine or 0) + 1)
    if floor * n_tests / per < cfg.alpha:
        return None
    need = math.floor(n_tests / (per * cfg.alpha))  # the smallest count with floor * m / per < alpha
    at_once = math.floor(floor * n_tests / cfg.alpha) + 1 if cfg.correction == "fdr" else None
    when = (f"only when {at_once} of the {n_tests} tests are that small at once (the rule asks {k})"
            if at_once is not None and at_once <= n_tests else "never")
    return (f"drift.permutations = {cfg.permutations}: a permutation test's smallest p-value ({floor:.4f}) passes the "
            f"{cfg.correction} correction at drift.alpha = {cfg.alpha} over {n_tests} tests {when}, so box-level KS, "
            f"chi-squared and MMD can hardly signal; set drift.permutations >= {need}")


# --------------------------------------------------------------------------------------------
# Episodes (pure state machine over days)
# --------------------------------------------------------------------------------------------
@dataclass
class CameraTrack:
    """One camera's run of drifted days, of clean days, and the episode it is in."""

    streak: list[str] = field(default_factory=list)  # drifted days in a row (insufficient days skipped)
    clean: int = 0  # clean days in a row
    episode: str | None = None


@dataclass
class MonitorState:
    """Where the episode machine is for one reference (champion version): the last day it processed."""

    model_version: str
    last_day: str | None = None
    cameras: dict[str, CameraTrack] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MonitorState:
        return cls(d["model_version"], d.get("last_day"),
                   {c: CameraTrack(**t) for c, t in (d.get("cameras") or {}).items()})


@dataclass
class Episode:
    """A drift episode: cameras that drifted together, until each of them has been clean for K days.

    Attributes:
        episode_id: ``drift-v<version>-<first alarm day>`` (deterministic: a re-run finds it).
        cameras: cameras in the episode; ``recovered``: those that have left it (K clean days);
            ``handed_over``: those that left it still drifting, ``reopen_after_days`` after it opened with its
            targeted round answered, for the episode ``followed_by``.
        days: drifted days of its cameras; ``signals``, ``classes``: what fired on them.
        event_id: id of its latest ``detloop.drift.detected`` event, once emitted; ``round_id``: its targeted round;
            ``announcements``: events sent (more than one when its round was never created, :func:`unanswered`);
            ``announced_for``: the monitor day (``as_of``) of the latest.
        acked_by / acked_at / note: an operator's acknowledgement; ``silenced_until``: its cameras open no
            new episode (and it sends nothing more) before this day.
        companions: cameras that joined it without drifting on their own: the class whose share moved on the cameras
            of an episode opened on a class-mix change moved the same way on them (:func:`companions`), camera -> the
            evidence. ``shifted``: the classes an episode opened on a class-mix change moved (class -> +1 grew, -1
            shrank; :func:`shifted_classes`), asked of the other cameras for ``drift.companion_days`` days;
            ``joined_late``: cameras found after its opening day, camera -> the episode each opened
            (:func:`join_late`).
        round_days: re-asked cameras' days in its targeted round where more than ``days`` (:func:`reasked_days`),
            fixed at its first announcement.
    """

    episode_id: str
    model_version: str
    opened_on: str
    cameras: list[str]
    days: list[str]
    signals: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    status: Literal["open", "closed"] = "open"
    recovered: list[str] = field(default_factory=list)
    closed_on: str | None = None
    close_reason: str | None = None
    event_id: str | None = None
    emitted_at: str | None = None
    round_id: str | None = None
    acked_by: str | None = None
    acked_at: str | None = None
    note: str | None = None
    silenced_until: str | None = None
    handed_over: list[str] = field(default_factory=list)
    followed_by: str | None = None
    announcements: int = 0
    announced_for: str | None = None
    companions: dict[str, str] = field(default_factory=dict)  # camera -> why it joined (:func:`companions`)
    shifted: dict[str, int] = field(default_factory=dict)  # class -> direction its share moved (opening day)
    joined_late: dict[str, str] = field(default_factory=dict)  # camera -> the episode it opened as a late companion
    round_days: dict[str, list[str]] = field(default_factory=dict)  # re-asked camera -> its round's days (reasked_days)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Episode:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})


def episode_id_for(model_version: str, day: str) -> str:
    return f"drift-v{model_version}-{day}"


def silenced_cameras(episodes: Iterable[Episode], day: str) -> set[str]:
    """Cameras of episodes silenced through ``day``: they open no new episode."""
    return {c for e in episodes if e.silenced_until and day < e.silenced_until for c in e.cameras}


def advance(state: MonitorState, day: str, verdicts: Mapping[str, Verdict], cfg: DriftSettings,
            episodes: Mapping[str, Episode], unpromoted: Mapping[str, str] | None = None,
            held: Collection[str] = (),
            ) -> tuple[MonitorState, dict[str, Episode], list[str]]:
    """One day of the episode machine.

    Per camera: ``insufficient`` changes nothing; ``drift`` extends its streak (and its open episode);
    ``clean`` resets the streak and counts clean days, and after ``cfg.close_after_clean_days`` the camera
    leaves its episode. Cameras whose streak reaches ``cfg.alarm_consecutive_days`` that day and that are in
    no episode (nor silenced) open ONE new episode together. A camera still drifting ``cfg.reopen_after_days``
    after its episode opened, when that episode was answered (its targeted round is set), leaves it for a new
    one (:func:`stale`): the round's challenger did not become champion, or did not fix the camera, and an
    episode that stayed open would hide every later drift on it. Sooner when its round is known to have failed
    (:func:`answered_in_vain`): a camera of an episode whose round was trained without a promotion leaves it once
    it has drifted ``cfg.alarm_consecutive_days`` days in a row since that round's day. An episode whose cameras
    have all left closes. A ``held`` camera (a carried camera whose drift an earlier champion's round answered,
    :func:`hold_answered`) extends its streak but opens no episode that day.

    Args:
        state: the machine before ``day`` (not modified).
        verdicts: camera -> verdict of ``day``.
        episodes: known episodes by id (not modified).
        unpromoted: trained rounds whose challenger was not promoted, ``round id -> its as_of``
            (:func:`tasks.rounds.unpromoted_rounds`).
        held: cameras that open no episode that day.

    Returns:
        ``(new state, episodes changed or opened that day by id, ids of the episodes opened that day)``.
    """
    st = MonitorState.from_dict(state.to_dict())
    changed: dict[str, Episode] = {}

    def ep(eid: str) -> Episode:
        if eid not in changed:
            changed[eid] = Episode.from_dict(episodes[eid].to_dict())
        return changed[eid]

    silenced = silenced_cameras(episodes.values(), day)
    opening: list[str] = []
    handing_over: dict[str, list[str]] = {}  # stale episode -> its cameras that leave it for the new one today
    for cam in sorted(verdicts):
        v = verdicts[cam]
        tr = st.cameras.setdefault(cam, CameraTrack())
        if v.status == "insufficient":
            continue
        if v.status == "drift":
            tr.streak.append(day)
            tr.clean = 0
            current = episodes.get(tr.episode) if tr.episode is not None else None
            if current is not None and current.status == "open" and cam not in silenced \
                    and (stale(current, day, cfg.reopen_after_days)
                         or (cfg.reopen_after_days > 0
                             and answered_in_vain(current, tr.streak, unpromoted or {}, cfg.alarm_consecutive_days))):
                handing_over.setdefault(current.episode_id, []).append(cam)
                opening.append(cam)
            elif current is not None and current.status == "open":
                e = ep(tr.episode)
                e.days = sorted(set(e.days) | {day})
                e.signals = sorted(set(e.signals) | set(v.signals))
                e.classes = sorted(set(e.classes) | set(v.classes))
            elif len(tr.streak) >= cfg.alarm_consecutive_days and cam not in silenced and cam not in held:
                opening.append(cam)
            continue
        tr.streak = []
        tr.clean += 1
        if tr.episode is not None and tr.clean >= cfg.close_after_clean_days:
            if tr.episode in episodes:
                e = ep(tr.episode)
                e.recovered = sorted(set(e.recovered) | {cam})
                if e.status == "open" and set(e.recovered) | set(e.handed_over) >= set(e.cameras):
                    e.status, e.closed_on = "closed", day
                    e.close_reason = f"every camera clean for {cfg.close_after_clean_days} day(s)"
            tr.episode = None
    opened: list[str] = []
    if opening:
        eid = episode_id_for(st.model_version, day)
        days = sorted({d for c in opening for d in st.cameras[c].streak})
        signals = {s for c in opening for s in verdicts[c].signals}
        classes = {k for c in opening for k in verdicts[c].classes}
        if eid in episodes:  # a re-run after the episode was stored but not the state: keep what it recorded
            e = ep(eid)
            e.cameras = sorted(set(e.cameras) | set(opening))
            e.days, e.signals = sorted(set(e.days) | set(days)), sorted(set(e.signals) | signals)
            e.classes = sorted(set(e.classes) | classes)
        else:
            changed[eid] = Episode(eid, st.model_version, day, opening, days, sorted(signals), sorted(classes))
        for c in opening:
            st.cameras[c].episode = eid
        opened.append(eid)
        for old_id, cams in handing_over.items():
            e = ep(old_id)
            e.handed_over = sorted(set(e.handed_over) | set(cams))
            e.followed_by = eid
            if set(e.recovered) | set(e.handed_over) >= set(e.cameras):
                e.status, e.closed_on = "closed", day
                e.close_reason = (f"still drifting {(date.fromisoformat(day) - date.fromisoformat(e.opened_on)).days} "
                                  f"day(s) after it opened and was answered (round {e.round_id}"
                                  + (", trained without a promotion" if e.round_id in (unpromoted or {}) else "")
                                  + f"): followed by {eid}")
    st.last_day = day
    return st, changed, opened


# --------------------------------------------------------------------------------------------
# Companions: a class-mix change seen on some cameras, looked for on the others
# --------------------------------------------------------------------------------------------
COMPANION_Z = 2.58  # a class is named as moved when its share's two-proportion z reaches this (|z|, p ~ 0.01)


def shifted_classes(opening: Iterable[tuple[Verdict, CameraDayStats]], class_names: Sequence[str],
                    z_min: float = COMPANION_Z) -> dict[str, int]:
    """Classes whose share of the boxes moved on the cameras an episode opens with, and which way: ``class ->
    +1`` (grew) or ``-1`` (shrank).

    Only cameras whose class mix is among their signals count. Per class, the two-proportion z of its share
    (reference vs window, from the stored shares and box counts) is summed over those cameras
    (Stouffer: ``sum z / sqrt(n)``); a class is named when that reaches ``z_min`` in size. Naming is only what is
    then asked of the other cameras (:func:`companions`), not a decision: a camera joins on its own test.
    """
    zs: dict[str, list[float]] = {}
    for v, st in opening:
        if not any(s.startswith("class_mix:") for s in v.signals) or not st.n_boxes or not st.n_ref_boxes:
            continue
        for c in class_names:
            r, w = (st.class_shares.get(c) or [0.0, 0.0])[:2]
            pooled_share = (r * st.n_ref_boxes + w * st.n_boxes) / (st.n_ref_boxes + st.n_boxes)
            se = math.sqrt(pooled_share * (1 - pooled_share) * (1 / st.n_ref_boxes + 1 / st.n_boxes))
            zs.setdefault(c, []).append((w - r) / se if se > 0 else 0.0)
    out = {}
    for c in class_names:
        if c in zs:
            z = sum(zs[c]) / math.sqrt(len(zs[c]))
            if abs(z) >= z_min:
                out[c] = 1 if z > 0 else -1
    return out


@dataclass
class Companion:
    """A camera whose share of ``cls`` moved the way an episode's cameras' did (``direction``: +1 grew, -1
    shrank), from ``reference_share`` to ``share``; ``p``: its one-sided test corrected over every camera and
    class asked that day (Holm)."""

    camera: str
    cls: str
    direction: int
    reference_share: float
    share: float
    p: float

    def reason(self, episode_id: str) -> str:
        return (f"{self.cls} share {self.reference_share:.3f} -> {self.share:.3f} "
                f"({'grew' if self.direction > 0 else 'shrank'} as on the cameras of {episode_id}; "
                f"one-sided frame-permutation test, Holm-corrected p {self.p:.4f})")


def companion_candidates(state: MonitorState, episodes: Mapping[str, Episode], day: str,
                         cameras: Iterable[str]) -> list[str]:
    """Cameras that may join an episode opened on ``day``: in no open episode, and not silenced."""
    silenced = silenced_cameras(episodes.values(), day)
    out = []
    for c in sorted(set(cameras)):
        tr = state.cameras.get(c)
        current = episodes.get(tr.episode) if tr is not None and tr.episode is not None else None
        if c not in silenced and (current is None or current.status != "open"):
            out.append(c)
    return out


def companion_level(cfg: DriftSettings, late: bool = False) -> float:
    """The level of one ask. An episode asks on up to ``companion_days`` days: the opening day, when its classes were
    named and a change that reaches every camera shows on most, gets half of ``companion_alpha``, and each later ask
    an equal share of the other half (all of it when ``companion_days`` is 1). Bonferroni over the asks keeps a
    stationary camera's chance of joining an episode falsely at most ``companion_alpha``."""
    if cfg.companion_days <= 1:
        return 0.0 if late else cfg.companion_alpha
    return cfg.companion_alpha / 2 / ((cfg.companion_days - 1) if late else 1)


def companions(candidates: Mapping[str, tuple[Features, Features]], shifts: Mapping[str, int], cfg: DriftSettings,
               class_names: Sequence[str], day: str, late: bool = False) -> list[Companion]:
    """The ``candidates`` (camera -> ``(reference, that day's pooled window)``) whose share of a class in
    ``shifts`` (:func:`shifted_classes`) moved the same way, each tested alone (one-sided, whole frames
    permuted: :func:`tasks.drift_stats.share_shift_clustered`), Holm-corrected over every camera and class, at
    :func:`companion_level` (``late``: an ask after the episode's opening day). A camera needs ``cfg.min_frames``
    frames and ``cfg.min_boxes`` boxes on both sides.

    Why: a class-mix change that reaches many cameras (a season, a new product) moves each camera's share a
    little, and a camera publishing few frames a day cannot show it alone (the box-level family there has ~20
    tests). Once some cameras have shown it, the question on the others is one directed test, not twenty.
    """
    if not cfg.companion_alpha or not shifts:
        return []
    tested: list[tuple[str, str, int, float, float, float]] = []
    for cam in sorted(candidates):
        ref, cur = candidates[cam]
        if min(ref.n_frames, cur.n_frames) < cfg.min_frames or min(ref.n_boxes, cur.n_boxes) < cfg.min_boxes:
            continue
        rng = rng_for(cfg.seed, f"companion:{cam}", day)
        data = ds.Clustered.of(ref.box_class, ref.box_frame, ref.n_frames, cur.box_class, cur.box_frame,
                               cur.n_frames)
        for cls, direction in sorted(shifts.items()):
            k = list(class_names).index(cls)
            _, p = ds.share_shift_clustered(data, k, direction, cfg.permutations, rng, cfg.permutations_refine)
            tested.append((cam, cls, direction, float(np.mean(ref.box_class == k)), float(np.mean(cur.box_class == k)),
                           p))
    if not tested:
        return []
    adjusted = ds.adjust_pvalues([t[5] for t in tested], "holm")
    level = companion_level(cfg, late)
    best: dict[str, Companion] = {}
    for (cam, cls, direction, r, w, _), p in zip(tested, adjusted, strict=True):
        if p < level and (cam not in best or p < best[cam].p):
            best[cam] = Companion(cam, cls, direction, r, w, float(p))
    return [best[c] for c in sorted(best)]


def companion_window_days(episode: Episode, day: str, pool_days: int) -> list[str]:
    """The days whose frames ``episode``'s ask on ``day`` reads: the opening day's pool (its ``pool_days``) and
    every day since, through ``day`` (on the opening day: that day's pooled window, as its own tests read)."""
    first = date.fromisoformat(pool_window(episode.opened_on, pool_days)[0])
    n = (date.fromisoformat(day) - first).days
    return [(first + timedelta(days=i)).isoformat() for i in range(n + 1)]


def companion_window(features_by_day: Mapping[str, Features], episode: Episode, day: str, pool_days: int) -> Features:
    """The frames (all cameras) of :func:`companion_window_days` that ``features_by_day`` holds."""
    parts = [features_by_day[d] for d in companion_window_days(episode, day, pool_days) if d in features_by_day]
    return Features.concat(parts) if parts else Features.empty()


def episode_shifts(episode: Episode, day: str, stats: Mapping[str, CameraDayStats], verdicts: Mapping[str, Verdict],
                   class_names: Sequence[str]) -> dict[str, int]:
    """The classes ``episode`` asks about: on its opening day, those its cameras' class mix moved
    (:func:`shifted_classes` of that day's ``stats`` and ``verdicts``); later, those it recorded then."""
    if day != episode.opened_on:
        return dict(episode.shifted)
    return shifted_classes([(verdicts[c], stats[c]) for c in episode.cameras if c in stats and c in verdicts],
                           class_names)


def companions_for(day: str, episode: Episode, state: MonitorState, episodes: Mapping[str, Episode],
                   stats: Mapping[str, CameraDayStats], verdicts: Mapping[str, Verdict], window: Features,
                   reference: Features, carried: Mapping[str, Mapping[str, Any]], recent: Features | None,
                   cfg: DriftSettings, class_names: Sequence[str]) -> tuple[dict[str, int], list[Companion]]:
    """``(classes asked, companions)`` of ``episode`` on ``day``: the classes of :func:`episode_shifts`, asked of
    the cameras of ``stats`` outside it (and not found by it before) in no open episode
    (:func:`companion_candidates`), each with ``window`` (:func:`companion_window`, all cameras) against its
    reference: its rows of ``reference`` (all of it when too few, as :func:`compare_day` does), or, for a camera
    ``carried`` from before its drift, its ``recent`` rows since that drift began (:func:`since_onset`: what its
    release is judged against; a camera carried across a lighting change would otherwise differ in everything)."""
    shifts = episode_shifts(episode, day, stats, verdicts, class_names)
    if not shifts:
        return shifts, []
    candidates = {}
    outside = [c for c in stats if c not in episode.cameras and c not in episode.joined_late]
    for cam in companion_candidates(state, episodes, day, outside):
        if cam in carried and recent is not None:
            ref = carried_recent(recent, cam, carried[cam], cfg.min_frames)
        else:
            ref = reference.of_camera(cam)
            ref = ref if ref.n_frames >= cfg.min_frames else reference
        candidates[cam] = (ref, window.of_camera(cam))
    return shifts, companions(candidates, shifts, cfg, class_names, day, late=day != episode.opened_on)


def asking(episodes: Iterable[Episode], model_version: str, day: str, cfg: DriftSettings) -> list[Episode]:
    """Open episodes of ``model_version`` opened on a class-mix change before ``day`` that still ask the other
    cameras on ``day``: within ``drift.companion_days`` days of opening."""
    return [e for e in sorted(episodes, key=lambda e: e.episode_id)
            if e.status == "open" and e.model_version == model_version and e.shifted and cfg.companion_alpha
            and 0 < (date.fromisoformat(day) - date.fromisoformat(e.opened_on)).days < cfg.companion_days]


def join_companions(state: MonitorState, episode: Episode, found: Sequence[Companion], source: str | None = None
                    ) -> tuple[MonitorState, Episode]:
    """``episode`` with the cameras of ``found`` among its cameras (their evidence in ``companions``), and each
    of them in it in ``state`` (new objects; neither argument is modified). A companion then leaves the episode
    like any camera: after ``close_after_clean_days`` clean days from the day it joined. ``source``: the episode
    whose class-mix change it shares, when not this one (:func:`join_late`)."""
    st = MonitorState.from_dict(state.to_dict())
    e = Episode.from_dict(episode.to_dict())
    for c in found:
        track = st.cameras.setdefault(c.camera, CameraTrack())
        if c.camera in e.cameras:  # a re-run of the day (the episode stored, the state not): only the state
            track.episode = e.episode_id
            continue
        e.cameras = sorted(set(e.cameras) | {c.camera})
        e.companions = {**e.companions, c.camera: c.reason(source or e.episode_id)}
        track.episode, track.clean = e.episode_id, 0  # its clean days count from the day it joined
    return st, e


def join_late(state: MonitorState, day: str, parent: Episode, found: Sequence[Companion],
              episodes: Mapping[str, Episode], pool_days: int) -> tuple[MonitorState, Episode, Episode]:
    """Cameras ``found`` by ``parent`` after its opening day: its targeted round was chosen then, so they open an
    episode of their own on ``day`` (``drift-v<version>-<day>``: the episode that opened that day, when one did,
    which they join), announced and answered like any. Its days are those the ask read
    (:func:`companion_window_days`). ``(state, the episode they are in, parent with joined_late)``."""
    eid = episode_id_for(state.model_version, day)
    if eid in episodes:
        base = episodes[eid]
    else:
        base = Episode(eid, state.model_version, day, [], companion_window_days(parent, day, pool_days),
                       sorted({f"companion:{c.cls}" for c in found}), sorted({c.cls for c in found}))
    st, e = join_companions(state, base, found, source=parent.episode_id)
    p = Episode.from_dict(parent.to_dict())
    p.joined_late = {**p.joined_late, **{c.camera: eid for c in found}}
    return st, e, p


def companion_day(state: MonitorState, day: str, opened: Sequence[str], episodes: Mapping[str, Episode],
                  cfg: DriftSettings, ask: Callable[[Episode, MonitorState, Mapping[str, Episode]],
                                                    tuple[dict[str, int], list[Companion]]]
                  ) -> tuple[MonitorState, dict[str, Episode], list[str]]:
    """The companions' part of ``day`` (after :func:`advance`): each episode ``opened`` that day records the classes
    it asks about and is joined by what ``ask(episode, state, episodes)`` finds; then each older episode still
    :func:`asking` asks again and its finds open an episode of their own (:func:`join_late`).
    ``(state, episodes changed by id, ids of episodes opened by late companions)``."""
    if not cfg.companion_alpha:
        return state, {}, []
    changed: dict[str, Episode] = {}
    known = dict(episodes)
    for eid in opened:
        shifts, found = ask(known[eid], state, known)
        state, e = join_companions(state, replace(known[eid], shifted=shifts), found)
        changed[eid] = known[eid] = e
    new: list[str] = []
    for parent in asking(known.values(), state.model_version, day, cfg):
        _, found = ask(parent, state, known)
        if found:
            state, e, p = join_late(state, day, parent, found, known, cfg.pool_days)
            changed[e.episode_id] = known[e.episode_id] = e
            changed[p.episode_id] = known[p.episode_id] = p
            if e.episode_id not in opened and e.episode_id not in new:
                new.append(e.episode_id)
    return state, changed, new


def unanswered(episodes: Iterable[Episode], model_version: str, rounds: Iterable[str], as_of: str) -> list[Episode]:
    """Open episodes of ``model_version`` announced on a monitor day before ``as_of`` whose targeted round does not
    exist (not in ``rounds``, the round ids on record): the run their event started failed (a service down for
    longer than its retries) or never ran, so nothing answers them unless they are announced again."""
    have = set(rounds)
    return [e for e in episodes if e.model_version == model_version and e.status == "open" and e.event_id
            and e.round_id and e.round_id not in have and (e.announced_for or "") < as_of]


def round_budget(cfg: DriftSettings, selection_budget: int, n_cameras: int) -> int:
    """Frames of an episode's targeted round: ``round_frames_per_camera`` x its cameras when set, else
    ``round_budget``, else the weekly ``selection_budget``."""
    if cfg.round_frames_per_camera is not None:
        return cfg.round_frames_per_camera * max(n_cameras, 1)
    return cfg.round_budget or selection_budget


def round_camera_weights(episode: Episode, cfg: DriftSettings) -> dict[str, float]:
    """Each camera's weight in ``episode``'s targeted round (``selection.camera_weights``): 1 for a camera that
    drifted on its own, ``cfg.companion_round_weight`` for a companion (it joined on one class's share alone, the
    rest of its traffic unmoved). Only the cameras below 1 are listed; empty when every camera counts alike.

    >>> e = Episode("drift-v7-2026-02-03", "7", "2026-02-03", ["cam3", "cam0", "cam4"], ["2026-02-03"],
    ...             companions={"cam0": "star share ...", "cam4": "star share ..."})
    >>> round_camera_weights(e, DriftSettings())
    {'cam0': 0.5, 'cam4': 0.5}
    """
    w = cfg.companion_round_weight
    return {} if w >= 1.0 else {c: w for c in episode.cameras if c in episode.companions}


def reasked_days(episode: Episode, earlier: Iterable[Episode], drifted: Mapping[str, Iterable[str]], start: str,
                 end: str) -> dict[str, list[str]]:
    """The days each re-asked camera of ``episode``'s targeted round samples, where more than the episode's own.

    A camera is re-asked when an earlier episode of it was answered (its ``round_id`` set). That round sampled the
    days before the day after that episode opened; the camera's drifted days since (``drifted``: camera -> days its
    verdict was drift, held days included; :meth:`flows.drift.DriftRun.drifted_days`) were offered to no round.
    They join the episode's days, inside ``[start, end)`` (the round's sampling window, ISO days). Only cameras that
    gain a day are listed (pure).

    >>> old = Episode("drift-v6-2026-01-27", "6", "2026-01-27", ["cam3"], ["2026-01-26", "2026-01-27"],
    ...               round_id="r1")
    >>> new = Episode("drift-v9-2026-02-03", "9", "2026-02-03", ["cam3", "cam0"], ["2026-02-02", "2026-02-03"])
    >>> drifted = {"cam3": ["2026-01-27", "2026-01-28", "2026-01-30", "2026-02-02"], "cam0": ["2026-01-30"]}
    >>> reasked_days(new, [old], drifted, "2026-01-28", "2026-02-04")
    {'cam3': ['2026-01-28', '2026-01-30', '2026-02-02', '2026-02-03']}
    """
    own = {d for d in episode.days if start <= d < end}
    out: dict[str, list[str]] = {}
    for cam in episode.cameras:
        last = max((e.opened_on for e in earlier if e.round_id and cam in e.cameras
                    and e.episode_id != episode.episode_id and e.opened_on < episode.opened_on), default=None)
        if last is None:
            continue
        since = max(start, (date.fromisoformat(last) + timedelta(days=1)).isoformat())
        extra = {d for d in drifted.get(cam, ()) if since <= d < end} - own
        if extra:
            out[cam] = sorted(own | extra)
    return out


def stale(episode: Episode, day: str, reopen_after_days: int) -> bool:
    """Whether ``episode`` has been answered (a targeted round was started for it) and opened at least
    ``reopen_after_days`` days before ``day`` (0: never stale)."""
    if reopen_after_days <= 0 or not episode.round_id:
        return False
    return (date.fromisoformat(day) - date.fromisoformat(episode.opened_on)).days >= reopen_after_days


def answered_in_vain(episode: Episode, streak: Sequence[str], unpromoted: Mapping[str, str], need: int) -> bool:
    """Whether ``episode``'s targeted round was trained and its challenger not promoted (in ``unpromoted``,
    round id -> the round's day) and the camera whose drifted days in a row are ``streak`` has drifted on at
    least ``need`` of them since the round's day: the round is over and did not fix the camera, so waiting
    ``reopen_after_days`` for it would only leave the camera unattended. (Not applied when
    ``reopen_after_days`` is 0: then no episode ever starts a second round.)"""
    since = unpromoted.get(episode.round_id or "")
    return since is not None and need > 0 and sum(d >= since for d in streak) >= need


def replay(verdicts_by_day: Mapping[str, Mapping[str, Verdict]], cfg: DriftSettings, model_version: str,
           start: MonitorState | None = None, episodes: Mapping[str, Episode] | None = None,
           answer: bool = False,
           companions_of: Callable[[str, Episode, MonitorState, Mapping[str, Episode]],
                                   tuple[dict[str, int], list[Companion]]] | None = None
           ) -> tuple[MonitorState, dict[str, Episode]]:
    """Run the episode machine over days in order (days at or before ``start.last_day`` are skipped).

    ``answer``: mark each new episode answered the day it opens (``round_id`` ``"replayed"``), as the monitor does
    when it announces it, so ``drift.reopen_after_days`` plays out as in the live loop.
    ``companions_of(day, episode, state, episodes)``: ``(classes asked, cameras found)`` of an episode's ask that
    day (:func:`companions_for`; they need the day's features, which verdicts do not hold), played out by
    :func:`companion_day`.

    With stored per-camera-day statistics and :func:`verdict`, a rule can be replayed over history cheaply:
    ``replay({d: {c: verdict(s, rule) for c, s in day.items()} for d, day in stats.items()}, rule, v)``.
    """
    st = start or MonitorState(model_version)
    eps = {k: Episode.from_dict(v.to_dict()) for k, v in (episodes or {}).items()}
    for day in sorted(verdicts_by_day):
        if st.last_day is not None and day <= st.last_day:
            continue
        st, changed, opened = advance(st, day, verdicts_by_day[day], cfg, eps)
        eps.update(changed)
        if companions_of is not None:
            ask = partial(companions_of, day)
            st, changed, late = companion_day(st, day, opened, eps, cfg, ask)
            eps.update(changed)
            opened = [*opened, *late]
        for eid in opened if answer else []:
            eps[eid] = replace(eps[eid], round_id=eps[eid].round_id or "replayed")
    return st, eps


def supersede(episodes: Iterable[Episode], current_version: str, day: str) -> list[Episode]:
    """Open episodes of another champion's reference, closed because the champion (and so the reference)
    changed."""
    out = []
    for e in episodes:
        if e.status == "open" and e.model_version != current_version:
            out.append(replace(e, status="closed", closed_on=day,
                               close_reason=f"champion is now v{current_version} (new reference)"))
    return out


def unrecovered_cameras(episodes: Iterable[Episode], version: str,
                        carried_before: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, str]:
    """Cameras that another champion's monitor last saw drifting, and the day their drift began.

    For each camera, its latest episode of a version other than ``version``: when the camera had not left it
    clean (not in ``recovered``), the camera is unrecovered; the onset is that episode's first drifted day, or
    the onset carried into that episode's champion (``carried_before``: version -> camera -> onset), whichever is
    earlier, so a camera carried across several promotions keeps its first onset. A new champion's reference
    does not then take that camera's drifted days as normal (docs/drift.md, "Unrecovered cameras").
    """
    latest: dict[str, Episode] = {}
    for e in sorted(episodes, key=lambda e: (e.opened_on, e.episode_id)):
        if e.model_version != version:
            for c in e.cameras:
                latest[c] = e
    out: dict[str, str] = {}
    for cam, e in sorted(latest.items()):
        if cam in e.recovered:
            continue
        onset = min(e.days) if e.days else e.opened_on
        earlier = (carried_before or {}).get(e.model_version, {}).get(cam)
        out[cam] = min(onset, earlier) if earlier else onset
    return out


def recovered_by_estimate(reference_estimate: float | None, day_estimate: float | None,
                          tolerance: float) -> bool:
    """Whether a carried camera's label-free estimate on a day is back within ``tolerance`` of its estimate on
    its pre-onset reference (same champion, same calibration); False when either is unknown."""
    if reference_estimate is None or day_estimate is None:
        return False
    if not (np.isfinite(reference_estimate) and np.isfinite(day_estimate)):
        return False
    return day_estimate >= reference_estimate - tolerance


def estimate_overreads(labelled_map50: float | None, labelled_estimate: float | None, tolerance: float) -> bool:
    """Whether the label-free estimate on a set of labelled frames reads their mAP50 more than ``tolerance`` too
    high (pure): then it is not to be trusted to release that camera. False when either is unknown."""
    if labelled_map50 is None or labelled_estimate is None:
        return False
    if not (np.isfinite(labelled_map50) and np.isfinite(labelled_estimate)):
        return False
    return labelled_estimate - labelled_map50 > tolerance


@dataclass(frozen=True)
class LabelledCheck:
    """A carried camera's labelled control frames since its onset, scored by the champion: their mAP50 and the
    label-free estimate on the same frames (:func:`release_recovered`)."""

    n_frames: int
    map50: float | None
    estimate: float | None


def release_recovered(v: Verdict, carried_since: str, reference_estimate: float | None,
                      day_estimate: float | None, tolerance: float, check: LabelledCheck | None = None,
                      recent: Verdict | None = None) -> Verdict:
    """A carried camera's verdict: ``drift`` (its inputs still differ from before the onset) becomes ``clean`` when
    the label-free estimate says the champion handles the day as well as the pre-onset traffic; unchanged
    otherwise, with the two estimates in the note.

    ``check``: when the estimate on the camera's labelled frames since the onset over-reads their mAP50 by more
    than ``tolerance`` (:func:`estimate_overreads`), the estimate is wrong about this camera's new traffic (a
    repaint can fool the confidences) and the day stays ``drift``, with both numbers in the note.

    ``recent``: the day's verdict against the camera's *recent* traffic (the ordinary reference days whose rows the
    pre-onset ones replaced). A release absorbs the drift the camera was carried for, not the next one: when the day
    also drifts against its recent traffic, something changed again, and the day stays ``drift`` whatever the
    estimate says (a confidence-based estimate cannot see the objects a new drift makes the champion miss)."""
    if v.status != "drift" or reference_estimate is None or day_estimate is None:
        return v
    est = f"label-free estimate {day_estimate:.3f} against {reference_estimate:.3f} before the onset ({carried_since})"
    if recovered_by_estimate(reference_estimate, day_estimate, tolerance):
        if check is not None and estimate_overreads(check.map50, check.estimate, tolerance):
            return replace(v, note=(v.note + "; " if v.note else "") + f"{est}, but on its {check.n_frames} labelled "
                           f"control frames since the onset the estimate reads {check.estimate:.3f} where their mAP50 "
                           f"is {check.map50:.3f}: not trusted on this camera, held")
        if recent is not None and recent.status == "drift":
            return replace(v, note=(v.note + "; " if v.note else "") + f"{est}, but it also drifts against its recent "
                           f"traffic ({', '.join(recent.signals[:4]) or 'signals'}): a new drift, held")
        return replace(v, status="clean", note=f"inputs still differ from before the onset, but {est}: recovered "
                       f"(within {tolerance:g})")
    return replace(v, note=(v.note + "; " if v.note else "") + est)


def since_onset(rows: Features, onset: str, min_frames: int) -> Features:
    """A carried camera's recent traffic (its rows of the ordinary reference days) from its onset on: the traffic of
    the drift it was carried for. All of ``rows`` when fewer than ``min_frames`` frames are that recent (a reference
    window that ends before the drift shows much of itself)."""
    mine = rows.select(rows.day >= onset)
    return mine if mine.n_frames >= min_frames else rows


def carried_recent(recent: Features, camera: str, info: Mapping[str, Any], min_frames: int) -> Features:
    """:func:`since_onset` of ``camera``'s rows of ``recent``, from the first drifted day of the episode it was
    carried from (``info``: its entry of the reference's ``carried``; ``onset`` for records from before
    ``episode_onset`` was kept): what a carried camera's release, hold and companion test compare with."""
    return since_onset(recent.of_camera(camera), str(info.get("episode_onset") or info["onset"]), min_frames)


@dataclass(frozen=True)
class Grace:
    """A carried camera's answered episode: its targeted round ``round_id`` was started (and not trained without a
    promotion), so until ``until`` the camera opens no new episode for the same drift (:func:`hold_answered`)."""

    episode_id: str
    round_id: str
    until: str


HOLD_MAX_DAYS = 3650  # :func:`hold_span`'s ceiling: ten years


def hold_span(hold_days: int, answered_before: int) -> int:
    """Days a carried camera is held from its answered episode's opening (pure): ``hold_days``, doubled for each
    earlier answered episode of the same drift (``answered_before``): 7, 14, 28, ... A drift the label-free estimate
    never sees recovered (the repaint's under-reads) then costs a round every 7, 14, 28 days, ever fewer, and the
    first follow-up comes while the drift is fresh, when a second round helps most. 0 when ``hold_days`` is 0; at
    most ``HOLD_MAX_DAYS`` (a date stays a date however many answers a camera has had)."""
    return min(hold_days * 2 ** min(max(0, answered_before), 16), HOLD_MAX_DAYS) if hold_days > 0 else 0


def answered_grace(episode: Episode | None, hold_days: int, unpromoted: Mapping[str, str] | None = None,
                   answered_before: int = 0) -> Grace | None:
    """The grace a carried camera gets from ``episode``, the episode of an earlier champion it was carried from:
    an answered episode (its targeted round set) holds it :func:`hold_span` days from its opening
    (``answered_before``: the answered episodes of the same drift before it, :func:`answered_before`). None when
    the episode was not answered, when its round was trained without a promotion (``unpromoted``: the answer
    failed, :func:`answered_in_vain`), or when ``hold_days`` is 0 (then a champion change is what asks again)."""
    if episode is None or hold_days <= 0 or not episode.round_id or episode.round_id in (unpromoted or {}):
        return None
    until = date.fromisoformat(episode.opened_on) + timedelta(days=hold_span(hold_days, answered_before))
    return Grace(episode.episode_id, episode.round_id, until.isoformat())


def answered_before(episodes: Iterable[Episode], camera: str, episode: Episode, onset: str,
                    unpromoted: Mapping[str, str] | None = None) -> int:
    """The answered episodes of ``camera``'s drift before ``episode`` (pure): those it was in, opened before
    it and on or after the drift's ``onset`` (its first drifted day across champions), whose round was set and not
    trained without a promotion. What doubles the camera's hold (:func:`hold_span`)."""
    return sum(1 for e in episodes
               if camera in e.cameras and e.episode_id != episode.episode_id and e.round_id
               and e.round_id not in (unpromoted or {}) and onset <= e.opened_on < episode.opened_on)


def hold_answered(v: Verdict, grace: Grace | None, recent: Verdict | None) -> tuple[Verdict, bool]:
    """A carried camera's drifted day during its grace: ``(verdict, held)``. Held (it opens no episode, the
    verdict stays ``drift`` with a note) when the day is like the camera's traffic since its onset (``recent``, the
    day judged against :func:`since_onset` rows): the drift is the one its round answered, and asking again each
    time the champion changes spends a round every few days on one camera while the others' streaks restart. Not
    held when it also drifts against that traffic (a new drift), when there is no such comparison, or after the
    grace."""
    if grace is None or v.status != "drift" or v.day >= grace.until or recent is None:
        return v, False
    if recent.status == "drift":
        return replace(v, note=(v.note + "; " if v.note else "") + f"its episode {grace.episode_id} was answered "
                       f"(round {grace.round_id}), but it also drifts against its traffic since the onset "
                       f"({', '.join(recent.signals[:4]) or 'signals'}): a new drift"), False
    return replace(v, note=(v.note + "; " if v.note else "") + f"like its traffic since the onset, the drift its "
                   f"episode {grace.episode_id} answered (round {grace.round_id}): no new episode before "
                   f"{grace.until} (drift.hold_days)"), True


# --------------------------------------------------------------------------------------------
# The reference's days (pure)
# --------------------------------------------------------------------------------------------
def reference_days(days_with_frames: Iterable[date], anchor: date, n: int) -> list[date]:
    """The ``n`` most recent production days (days that have frames) strictly before ``anchor``, oldest first."""
    before = sorted({d for d in days_with_frames if d < anchor})
    return before[-n:] if n > 0 else []


def carried_reference_days(production: Mapping[str, Iterable[date]], carried: Mapping[str, str],
                           n: int) -> dict[str, list[date]]:
    """For each carried camera (camera -> onset day), its ``n`` most recent production days before the onset;
    cameras without any are left out (they keep the ordinary reference days)."""
    out = {}
    for cam, onset in sorted(carried.items()):
        days = reference_days(production.get(cam, []), date.fromisoformat(onset), n)
        if days:
            out[cam] = days
    return out


def promotion_anchor(version: str, promotion_log: Sequence[Mapping[str, Any]], version_tags: Mapping[str, str],
                     round_as_of: str | None) -> tuple[date | None, str]:
    """The production day the champion ``version`` took over, and how it was found.

    A model trained on a round took over the traffic of the round's ``as_of`` (the end of the window its
    labels came from; the promotion itself follows the labelling): that day when known; a model trained on no
    round (the bootstrap) may carry its own ``detloop.as_of`` tag (a backfill, a demo in simulated time).
    Otherwise the day of the version's first ``promote`` / ``override`` entry in the promotion log, then its
    ``detloop.promoted_at`` tag. A rollback makes no new anchor: the version keeps the one of its promotion.

    Returns:
        ``(day, how)``; ``(None, why)`` when the version was never promoted.
    """
    promoted = [e for e in promotion_log if str(e.get("version")) == str(version)
                and e.get("action") in ("promote", "override")]
    logged = date.fromisoformat(str(promoted[0]["at"])[:10]) if promoted else None
    if logged is None and version_tags.get("detloop.promoted_at"):
        logged = date.fromisoformat(str(version_tags["detloop.promoted_at"])[:10])
    as_of = round_as_of or version_tags.get("detloop.as_of")
    if as_of:
        r = date.fromisoformat(str(as_of)[:10])
        if logged is None or r <= logged:
            how = (f"as_of of round {version_tags.get('detloop.round_id')}" if round_as_of
                   else "the version's detloop.as_of tag")
            return r, how
    if logged is not None:
        return logged, "promotion log" if promoted else "version tag detloop.promoted_at"
    return None, f"version {version} has no promotion record"
