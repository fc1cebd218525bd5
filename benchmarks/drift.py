"""Drift benchmark (issue 21): how fast the monitor finds each kind of drift, how often it cries wolf, which signal
moves first, and how well a label-free estimate follows the champion's true accuracy.

``detloop bench drift`` (``python -m benchmarks drift``). Offline: no stack. The benchmark world
(``configs/world_drift_bench.yaml``) is rendered in memory, ``--frames-per-day`` frames per camera-day, and
scored by the champion's scoring artifact through the scoring path (:func:`tasks.scoring.score_decoded`: the
preprocessing, decode and embedding production uses; the flipped pass of ``tta`` for the first ``--flip-frames``
frames of each camera-day). Each camera-day is compared with the camera's reference (the ``--reference-days``
days before the monitored ones) by :func:`tasks.drift.compare`, judged by :func:`tasks.drift.verdict` and the
episode machine :func:`tasks.drift.replay`: the monitor's own statistics and rule, composed, not copied.

Signals are judged alone and together: ``confidence`` (the box-confidence tests, overall and per class),
``embedding`` (MMD), ``image`` (brightness and contrast) and ``combined`` (every test, the configured rule). A
group with fewer features than ``drift.alarm_min_signals`` needs all of them (embedding alone: one).

Truth: every frame's boxes are known, so the champion's true mAP50 of every camera-day is measured on its frames
(hundreds per camera-day). Per camera-day results are cached under ``--work-dir`` by content (world conditions
of the day, frames, model), so a re-run or the stationary run reuses what is done.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PLOT = REPO / "docs" / "img" / "drift_bench_timeline.png"

GROUPS: dict[str, Callable[[str], bool]] = {
    "confidence": lambda f: f == "confidence" or f.startswith("confidence["),
    "embedding": lambda f: f == "embedding",
    "image": lambda f: f in ("brightness", "contrast"),
    "combined": lambda f: True,
}
GROUP_FEATURES = {"confidence": 2, "embedding": 1, "image": 2}  # features a group can fire on at most (per stat)
MAP_DROP = 0.05  # a drift "lowers true mAP" when its full-strength days are this far below its pre-onset days


@dataclass
class BenchConfig:
    """What the benchmark runs on."""

    config: str = "configs/local.yaml"
    world_config: str = "configs/world_drift_bench.yaml"
    model: str = ".detloop-bench/drift/bootstrap/scoring"
    world_seed: int = 0
    start: date = date(2026, 3, 2)
    reference_days: int = 3
    days: int = 10  # monitored days after the reference
    frames_per_day: int = 300
    camera_frames: dict[str, int] = field(default_factory=dict)  # per-camera override of frames_per_day
    flip_frames: int = 100  # frames per camera-day also scored flipped (label-free estimate)
    control_frames: int = 48  # labelled control frames per camera (calibration), from its reference days
    cameras: list[str] | None = None
    stationary: bool = False
    work_dir: str = ".detloop-bench/drift"
    permutations: int | None = None
    permutations_refine: int | None = None  # None: as configured; 0: off
    drift: dict[str, Any] = field(default_factory=dict)  # other drift settings (--drift key=value,...)

    def frames_for(self, camera: str) -> int:
        return int(self.camera_frames.get(camera, self.frames_per_day))

    def ref_dates(self) -> list[date]:
        return [self.start + timedelta(days=i) for i in range(self.reference_days)]

    def monitored_dates(self) -> list[date]:
        return [self.start + timedelta(days=self.reference_days + i) for i in range(self.days)]


# --------------------------------------------------------------------------------------------
# Pure parts
# --------------------------------------------------------------------------------------------
def group_stats(stats: Any, group: str) -> Any:
    """A copy of a :class:`tasks.drift.CameraDayStats` keeping only the tests of one signal group."""
    from tasks.drift import CameraDayStats

    keep = GROUPS[group]
    d = stats.to_dict()
    d["tests"] = [t for t in d["tests"] if keep(t["feature"])]
    return CameraDayStats.from_dict(d)


def group_rule(cfg: Any, group: str) -> Any:
    """The drift rule for one group: ``combined`` is ``cfg``; a group with fewer features than
    ``alarm_min_signals`` needs them all (so the embedding alone alarms on its one test)."""
    if group == "combined":
        return cfg
    return cfg.model_copy(update={"alarm_min_signals": min(cfg.alarm_min_signals, GROUP_FEATURES[group])})


def onset_of(world: Any, camera: str) -> tuple[date | None, str | None, int]:
    """``(first day, name, ramp_days)`` of the first drift of ``camera`` (None: a stationary camera)."""
    ds = [d for d in world.drift if not d.cameras or camera in d.cameras]
    if not ds:
        return None, None, 0
    d = min(ds, key=lambda x: x.start)
    return d.start, d.name, d.ramp_days


def detection(status_by_day: Mapping[str, str], episode_day: str | None, onset: date,
              frames_per_day: int) -> dict[str, Any]:
    """Delays of one drift episode: first drifted day and the episode's opening, in days and frames after onset.

    Args:
        status_by_day: ISO day -> ``drift`` / ``clean`` / ``insufficient`` of the camera.
        episode_day: the day an episode opened on the camera at or after onset (None: missed).
        onset: first day of the drift.
        frames_per_day: frames the camera published per day.

    Returns:
        ``{"first_drift_day", "delay_days", "episode_day", "episode_delay_days", "frames_to_episode", "missed"}``;
        a delay of 0 days is the onset day itself; frames count every frame published from the onset through the
        day that decided.
    """
    after = sorted(d for d, s in status_by_day.items() if d >= onset.isoformat() and s == "drift")
    first = after[0] if after else None

    def days(d: str | None) -> int | None:
        return None if d is None else (date.fromisoformat(d) - onset).days

    ep = days(episode_day)
    return {"first_drift_day": first, "delay_days": days(first), "episode_day": episode_day,
            "episode_delay_days": ep, "frames_to_episode": None if ep is None else (ep + 1) * frames_per_day,
            "missed": episode_day is None}


def false_alarms(status: Mapping[str, Mapping[str, str]], episodes_opened: Mapping[str, list[str]],
                 stationary: Mapping[str, set[str]]) -> dict[str, Any]:
    """False alarms over stationary camera-days.

    Args:
        status: camera -> ISO day -> verdict status.
        episodes_opened: camera -> ISO days an episode opened on it.
        stationary: camera -> the ISO days on which nothing drifts on it.

    Returns:
        camera-days judged, drifted ones (a false alarm day) and episodes opened on stationary days, with rates.
    """
    n = drifted = eps = 0
    for cam, days in stationary.items():
        for d in days:
            s = status.get(cam, {}).get(d)
            if s is None or s == "insufficient":
                continue
            n += 1
            drifted += s == "drift"
            eps += d in episodes_opened.get(cam, [])
    return {"camera_days": n, "drifted_days": drifted, "episodes": eps,
            "drifted_day_rate": drifted / n if n else None, "episode_rate": eps / n if n else None}


def drift_kind(pre_map50: float | None, full_map50: float | None, drop: float = MAP_DROP) -> str:
    """``lowers_map`` (full-strength days at least ``drop`` below the pre-onset days), ``inputs_only``, or
    ``unknown`` (no day before onset or none at full strength in the window)."""
    if pre_map50 is None or full_map50 is None:
        return "unknown"
    return "lowers_map" if full_map50 <= pre_map50 - drop else "inputs_only"


def moved_first(days: Sequence[str], signal: Mapping[str, str], true_map: Mapping[str, float], pre_map: float,
                onset: date, drop: float = MAP_DROP) -> dict[str, Any]:
    """Did a signal fire before the true mAP fell by ``drop`` below its pre-onset level?

    Returns:
        ``{"signal_day", "map_drop_day", "signal_first"}`` (``signal_first`` None when mAP never drops).
    """
    post = [d for d in sorted(days) if d >= onset.isoformat()]
    sig = next((d for d in post if signal.get(d) == "drift"), None)
    mdrop = next((d for d in post if true_map.get(d) is not None and true_map[d] <= pre_map - drop), None)
    first = None if mdrop is None else (sig is not None and sig <= mdrop)
    return {"signal_day": sig, "map_drop_day": mdrop, "signal_first": first}


# --------------------------------------------------------------------------------------------
# Rendering and scoring one camera-day (cached)
# --------------------------------------------------------------------------------------------
@dataclass
class CameraDay:
    """What the benchmark keeps of one camera-day."""

    features: Any  # tasks.drift.Features
    map50: float | None
    n_truth: int
    control_map50: float | None
    control: Any  # tasks.label_free.DayStats of the first control_frames frames
    day_stats: Any  # tasks.label_free.DayStats of every frame
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def day_key(world: Any, classes: Sequence[str], camera: str, day: date, cfg: BenchConfig, model_id: str) -> str:
    """Content key of a camera-day: the world without its drift list plus the conditions of the day."""
    from detloop.world.render import conditions

    c = conditions(world, list(classes), camera, day)
    w = world.model_dump(mode="json")
    w.pop("drift")
    w.pop("golden_set")
    payload = json.dumps([w, cfg.world_seed, camera, day.isoformat(), cfg.frames_for(camera), cfg.flip_frames,
                          cfg.control_frames, model_id, c.brightness, c.contrast, c.size_scale,
                          c.class_probs.round(6).tolist(), c.colors], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def tiling_tag(settings: Any, camera: str) -> str:
    """A cache-key suffix for how ``camera``'s frames are scored: ``""`` whole (the keys of caches made before
    tiling was honoured stay valid), else the tile geometry."""
    t = settings.model.tile_spec(camera)
    return "" if t is None else f"-tiled{t.tile}o{t.overlap}{'f' if t.full_frame else ''}i{t.ios_threshold:g}"


def render_and_score(world: Any, classes: Sequence[str], camera: str, day: date, n: int, scorer: Any,
                     settings: Any, seed: int, flip_frames: int = 0, stream: str | None = None) -> tuple[list, list]:
    """Render frames ``0..n-1`` of ``camera`` on ``day`` (the world's ``stream``, default production), score them
    as production does at evaluation's low confidence floor (the first ``flip_frames`` also flipped), tiled when
    ``model.tiling`` tiles the camera: the scored frames and their truths."""
    from detloop.contracts import FrameRef
    from detloop.preprocess import load_frame_for_model
    from detloop.world.render import PRODUCTION, encode_jpeg, render_frame
    from tasks.evaluation import eval_decode
    from tasks.scoring import DecodedFrame, score_decoded

    ms = settings.model
    p = eval_decode(ms)  # the low floor of evaluation, so the same pass gives AP and the monitor's features
    ms_bench = ms.model_copy(update={"scoring_conf_threshold": p.conf_threshold,
                                     "scoring_max_candidates": p.max_candidates})
    size = int(scorer.meta.input_size)
    scored: list = []
    truths: list = []
    for lo in range(0, n, ms.batch_size):
        batch = []
        for i in range(lo, min(n, lo + ms.batch_size)):
            fr = render_frame(world, list(classes), camera, day, i, n, seed=seed, stream=stream or PRODUCTION)
            data = encode_jpeg(fr.image, world.jpeg_quality)
            got = load_frame_for_model(data, size, ms.fast_decode, tiling=ms.tile_spec(camera))
            if isinstance(got, str):
                raise RuntimeError(f"rendered frame unreadable: {got}")
            key = f"frames/camera={camera}/date={day.isoformat()}/{fr.frame_id}.jpg"
            batch.append(DecodedFrame(FrameRef("bench", key, "", camera, day.isoformat(), len(data)), got))
            truths.append(fr.truth)
        scored += score_decoded(batch, scorer, ms_bench, tta=lo < flip_frames)
    return scored, truths


def score_camera_day(world: Any, classes: Sequence[str], camera: str, day: date, cfg: BenchConfig, scorer: Any,
                     settings: Any) -> CameraDay:
    """Render, score (and flip-score the first ``flip_frames``), measure true mAP50 of one camera-day."""
    from tasks.drift import Features
    from tasks.evaluation import compute_metrics
    from tasks.label_free import DayStats

    t0 = time.perf_counter()
    n = cfg.frames_for(camera)
    scored, truths = render_and_score(world, classes, camera, day, n, scorer, settings, cfg.world_seed,
                                      cfg.flip_frames)
    mc = settings.drift.min_confidence
    feats = Features.from_scored(scored, mc)
    preds = [s.detections for s in scored]
    m = compute_metrics("day", truths, preds, list(classes), min_instances=1).overall
    k = min(cfg.control_frames, n)
    mctl = compute_metrics("control", truths[:k], preds[:k], list(classes), min_instances=1).overall
    return CameraDay(
        features=feats, map50=m.map50, n_truth=int(sum(len(t) for t in truths)), control_map50=mctl.map50,
        control=DayStats.of(preds[:k], [s.tta for s in scored[:k]], mc),
        day_stats=DayStats.of(preds, [s.tta for s in scored], mc),
        seconds=time.perf_counter() - t0,
    )


def _save(path: Path, cd: CameraDay) -> None:
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, ctl_conf=cd.control.confidences, ctl_flip=cd.control.flip,
                        day_conf=cd.day_stats.confidences, day_flip=cd.day_stats.flip)
    path.with_suffix(".features.npz").write_bytes(cd.features.to_npz())
    path.with_suffix(".labelfree.npz").write_bytes(buf.getvalue())
    path.with_suffix(".json").write_text(json.dumps({"map50": cd.map50, "n_truth": cd.n_truth,
                                                     "control_map50": cd.control_map50, "seconds": cd.seconds}))


def _load(path: Path) -> CameraDay | None:
    from tasks.drift import Features
    from tasks.label_free import DayStats

    j = path.with_suffix(".json")
    if not j.is_file():
        return None
    meta = json.loads(j.read_text())
    z = np.load(path.with_suffix(".labelfree.npz"))
    return CameraDay(Features.from_npz(path.with_suffix(".features.npz").read_bytes()), meta["map50"],
                     meta["n_truth"], meta["control_map50"], DayStats(z["ctl_conf"], z["ctl_flip"]),
                     DayStats(z["day_conf"], z["day_flip"]), meta["seconds"])


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
def run(cfg: BenchConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Score every camera-day (cached), judge them per signal group, write the result JSON and the timeline PNG."""
    from benchmarks._common import machine_info, utc_now
    from detloop.settings import load_settings
    from detloop.world.config import load_world_config
    from tasks.drift import Features, compare, pooled, replay, verdict
    from tasks.label_free import ESTIMATORS, agreement, calibrate, cross_validated_atc_weight, estimate
    from tasks.scoring import ModelRef, load_scorer

    t_start = time.perf_counter()
    settings = load_settings(REPO / cfg.config)
    over: dict[str, Any] = {}
    if cfg.permutations:
        over["permutations"] = cfg.permutations
    if cfg.permutations_refine is not None:
        over["permutations_refine"] = cfg.permutations_refine or None
    over.update(cfg.drift)
    if over:
        from benchmarks._common import drift_with

        settings = settings.model_copy(update={"drift": drift_with(settings, over)})
    dcfg = settings.drift
    classes = list(settings.classes)
    wpath = REPO / ("configs/world_stationary.yaml" if cfg.stationary else cfg.world_config)
    world = load_world_config(wpath)
    world.check_classes(classes)
    scorer = load_scorer(REPO / cfg.model, settings.model, classes)
    model_id = ModelRef(path=str(REPO / cfg.model)).content_id()
    cams = cfg.cameras or [c.id for c in world.cameras]
    cache = REPO / cfg.work_dir / "days"
    cache.mkdir(parents=True, exist_ok=True)

    days_all = cfg.ref_dates() + cfg.monitored_dates()
    data: dict[str, dict[str, CameraDay]] = {c: {} for c in cams}
    scored_now = 0
    for day in days_all:
        for cam in cams:
            if cam not in world.active_cameras(day):
                continue
            key = day_key(world, classes, cam, day, cfg, model_id + tiling_tag(settings, cam))
            path = cache / f"{cam}-{day.isoformat()}-{key}"
            cd = _load(path)
            if cd is None:
                cd = score_camera_day(world, classes, cam, day, cfg, scorer, settings)
                _save(path, cd)
                scored_now += 1
                log(f"{cam} {day}: {cfg.frames_for(cam)} frames, mAP50 {cd.map50:.3f} ({cd.seconds:.0f} s)")
            data[cam][day.isoformat()] = cd

    # the monitor: each monitored camera-day against the camera's reference days
    ref_iso = [d.isoformat() for d in cfg.ref_dates()]
    mon_iso = [d.isoformat() for d in cfg.monitored_dates()]
    stats: dict[str, dict[str, Any]] = {c: {} for c in cams}
    t_cmp = time.perf_counter()
    for cam in cams:
        ref = Features.concat([data[cam][d].features for d in ref_iso if d in data[cam]])
        monitored = {d: data[cam][d].features for d in mon_iso if d in data[cam]}  # pooled: never the reference
        for d in monitored:
            stats[cam][d] = compare(ref, pooled(monitored, d, dcfg.pool_days), dcfg, classes, cam, d)
    compare_s = time.perf_counter() - t_cmp

    groups: dict[str, Any] = {}
    status: dict[str, dict[str, dict[str, str]]] = {}
    for g in GROUPS:
        rule = group_rule(dcfg, g)
        verdicts = {d: {c: verdict(group_stats(stats[c][d], g), rule, classes) for c in cams if d in stats[c]}
                    for d in mon_iso}
        status[g] = {c: {d: verdicts[d][c].status for d in mon_iso if c in verdicts[d]} for c in cams}
        _, eps = replay(verdicts, rule, "bench")
        opened: dict[str, list[str]] = {c: [] for c in cams}
        for e in eps.values():
            for c in e.cameras:
                opened[c].append(e.opened_on)
        per_drift = {}
        stationary: dict[str, set[str]] = {}
        for cam in cams:
            onset, name, ramp = onset_of(world, cam)
            st_days = {d for d in mon_iso if onset is None or d < onset.isoformat()}
            stationary[cam] = st_days
            if onset is None:
                continue
            ep_day = min((d for d in opened[cam] if d >= onset.isoformat()), default=None)
            per_drift[name] = {"camera": cam, "onset": onset.isoformat(), "ramp_days": ramp,
                               **detection(status[g][cam], ep_day, onset, cfg.frames_for(cam))}
        groups[g] = {"rule": {"alarm_min_signals": rule.alarm_min_signals,
                              "alarm_consecutive_days": rule.alarm_consecutive_days,
                              "alarm_statistics": list(rule.alarm_statistics), "alpha": rule.alpha,
                              "correction": rule.correction, "alarm_strong_alpha": rule.alarm_strong_alpha,
                              "pool_days": rule.pool_days},
                     "drifts": per_drift, "false_alarms": false_alarms(status[g], opened, stationary)}

    # truth and the timeline
    timeline: dict[str, Any] = {}
    drifts: dict[str, Any] = {}
    for cam in cams:
        tm = {d: data[cam][d].map50 for d in ref_iso + mon_iso if d in data[cam]}
        conf = {d: float(np.mean(data[cam][d].features.box_confidence)) if data[cam][d].features.n_boxes else None
                for d in tm}
        timeline[cam] = {"true_map50": tm, "mean_confidence": conf,
                         "status": {g: status[g][cam] for g in GROUPS}}
        onset, name, ramp = onset_of(world, cam)
        if onset is None:
            continue
        pre = [tm[d] for d in tm if d < onset.isoformat() and tm[d] is not None]
        full = onset + timedelta(days=max(ramp, 1) - 1)
        post = [tm[d] for d in tm if d >= full.isoformat() and tm[d] is not None]
        pre_m = float(np.mean(pre)) if pre else None
        post_m = float(np.mean(post)) if post else None
        kind = drift_kind(pre_m, post_m)
        drifts[name] = {"camera": cam, "onset": onset.isoformat(), "ramp_days": ramp, "pre_map50": pre_m,
                        "full_strength_map50": post_m, "full_strength_days": len(post),
                        "map50_change": None if kind == "unknown" else post_m - pre_m,  # type: ignore[operator]
                        "kind": kind,
                        "moved_first": {g: moved_first(mon_iso, status[g][cam], tm, pre_m or 0.0, onset)
                                        for g in ("confidence", "embedding", "image", "combined")}}

    # label-free accuracy. As the monitor does (tasks.live_accuracy.atc_calibration), the estimators are calibrated
    # once on the control frames of every camera's reference days pooled, at their mAP50 (the mean of the cameras'
    # control mAP50, equal frames each), ATC's weight in `weighted` from leave-one-camera-out errors on the same
    # control frames; per-camera calibrations are kept for comparison (`<estimator>_per_camera`).
    from tasks.label_free import DayStats

    def ctl_of(cs: Sequence[str]) -> tuple[Any, float] | None:
        days_ = [data[c][d] for c in cs for d in ref_iso if d in data[c]]
        maps = [x.control_map50 for x in days_ if x.control_map50 is not None]
        if not days_ or not maps:
            return None
        return (DayStats(np.concatenate([x.control.confidences for x in days_]),
                         np.concatenate([x.control.flip for x in days_])), float(np.mean(maps)))

    pooled = ctl_of(cams)
    own_ctl = {cam: ctl_of([cam]) for cam in cams}
    cam_groups = [(o[0].confidences, o[1], int(o[0].flip.size)) for o in own_ctl.values() if o is not None]
    cal_all = calibrate(*pooled, atc_weight=cross_validated_atc_weight(cam_groups)) if pooled else None
    lf_rows = []
    for cam in cams:
        own = own_ctl[cam]
        if cal_all is None or own is None:
            continue
        cal_cam = calibrate(*own)
        ref_true = [data[cam][d].map50 for d in ref_iso if d in data[cam] and data[cam][d].map50 is not None]
        for d in mon_iso:
            if d in data[cam]:
                truth = data[cam][d].map50
                est = estimate(data[cam][d].day_stats, cal_all)
                per_cam = {f"{k}_per_camera": v for k, v in estimate(data[cam][d].day_stats, cal_cam).items()}
                moved = bool(ref_true and truth is not None and abs(truth - float(np.mean(ref_true))) >= 0.05)
                lf_rows.append({"camera": cam, "day": d, "true_map50": truth, "moved": moved, **est, **per_cam,
                                "calibration": cal_all.to_dict(), "calibration_per_camera": cal_cam.to_dict()})
    cols = [*ESTIMATORS, *(f"{e}_per_camera" for e in ESTIMATORS)]

    def lf_summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        truths = [r["true_map50"] for r in rows]
        return {**{e: agreement([r[e] for r in rows], truths) for e in cols},
                "naive_last_control": agreement([r["calibration_per_camera"]["map50"] for r in rows], truths)}

    label_free = {**lf_summary(lf_rows),
                  **{part: lf_summary([r for r in lf_rows if r["moved"] is want])
                     for part, want in (("moved", True), ("stationary", False))}}

    result = {
        "bench": "drift", "when": utc_now(), "stationary_world": cfg.stationary,
        "config": {k: (v.isoformat() if isinstance(v, date) else v) for k, v in vars(cfg).items()},
        "model": {"path": cfg.model, "content_id": model_id},
        "drift_settings": dcfg.model_dump(mode="json"),
        "groups": groups, "drifts": drifts, "timeline": timeline,
        "label_free": {"summary": label_free, "rows": lf_rows},
        "targets": targets(groups, drifts, label_free, cfg, dcfg.label_free_estimator),
        "seconds": {"total": time.perf_counter() - t_start, "compare": compare_s, "camera_days_scored": scored_now},
        "machine": machine_info(),
    }
    return result


def targets(groups: Mapping[str, Any], drifts: Mapping[str, Any], label_free: Mapping[str, Any],
            cfg: BenchConfig, estimator: str = "weighted") -> dict[str, Any]:
    """The issue's targets, reached or not (pure); label-free accuracy is judged on ``estimator``, the one the
    monitor reports (``drift.label_free_estimator``), not on the best of several."""
    out: dict[str, Any] = {}
    comb = groups.get("combined", {})
    light = [(n, v) for n, v in comb.get("drifts", {}).items() if "dim30" in n]
    if light:
        n, v = light[0]
        d = v.get("episode_delay_days")
        out["moderate_lighting_within_1_day"] = {
            "drift": n, "frames_per_day": cfg.frames_for(v["camera"]), "first_drift_delay_days": v.get("delay_days"),
            "episode_delay_days": d, "reached_first_drift": v.get("delay_days") is not None and v["delay_days"] <= 1,
            "reached_episode": d is not None and d <= 1}
    fa = comb.get("false_alarms", {})
    if fa.get("camera_days"):
        out["false_alarms_le_5pct"] = {"camera_days": fa["camera_days"], "drifted_day_rate": fa["drifted_day_rate"],
                                       "episode_rate": fa["episode_rate"],
                                       "reached_days": fa["drifted_day_rate"] <= 0.05,
                                       "reached_episodes": fa["episode_rate"] <= 0.05}
    w = label_free.get(estimator, {}).get("within")
    if w is not None:
        out["label_free_within_0.05_ge_80pct"] = {"estimator": estimator, "within": w, "reached": w >= 0.8}
    out["lowering_drifts"] = sorted(n for n, v in drifts.items() if v["kind"] == "lowers_map")
    return out


def plot(result: Mapping[str, Any], out: Path) -> None:
    """Per camera: true mAP50 and mean confidence by day, drifted days of each signal group as marks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tl = result["timeline"]
    cams = list(tl)
    fig, axes = plt.subplots(len(cams), 1, figsize=(10, 1.9 * len(cams)), sharex=True)
    axes = np.atleast_1d(axes)
    onsets = {v["camera"]: (v["onset"], n, v["ramp_days"]) for n, v in result["drifts"].items()}
    marks = {"confidence": ("o", "tab:orange"), "embedding": ("s", "tab:purple"), "image": ("^", "tab:green"),
             "combined": ("x", "black")}
    for ax, cam in zip(axes, cams, strict=True):
        t = tl[cam]
        days = sorted(t["true_map50"])
        x = np.arange(len(days))
        ax.plot(x, [t["true_map50"][d] for d in days], "-", color="tab:blue", label="true mAP50")
        ax.plot(x, [t["mean_confidence"][d] for d in days], "--", color="tab:red", label="mean confidence")
        for k, (g, (m, col)) in enumerate(marks.items()):
            hit = [i for i, d in enumerate(days) if t["status"][g].get(d) == "drift"]
            ax.plot(hit, [0.15 + 0.06 * k] * len(hit), m, color=col, label=f"{g} drifted", ms=5)
        if cam in onsets:
            on, name, ramp = onsets[cam]
            if on in days:
                i = days.index(on)
                ax.axvspan(i - 0.5, i - 0.5 + max(ramp, 1), color="grey", alpha=0.2)
                ax.axvline(i - 0.5, color="grey")
            ax.set_title(f"{cam}: {name} from {on}" + (f" (ramp {ramp} d)" if ramp else ""), fontsize=8, loc="left")
        else:
            ax.set_title(f"{cam}: stationary", fontsize=8, loc="left")
        ax.set_ylim(0.1, 1.0)
        ax.set_xticks(x, [d[5:] for d in days], fontsize=7)
    axes[0].legend(fontsize=6, ncol=3, loc="lower left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import argparse
    import shlex
    import sys

    from benchmarks._common import parse_settings, write_result

    cfg = BenchConfig()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", "-c", default=cfg.config, help="detloop config (classes, model, drift rule)")
    ap.add_argument("--world", default=cfg.world_config, help="benchmark world YAML")
    ap.add_argument("--stationary", action="store_true", help="the stationary world (false alarms only)")
    ap.add_argument("--model", default=cfg.model, help="the champion's scoring artifact directory (or a .pt)")
    ap.add_argument("--start", default=cfg.start.isoformat(), help="first reference day")
    ap.add_argument("--reference-days", type=int, default=cfg.reference_days)
    ap.add_argument("--days", type=int, default=cfg.days, help="monitored days after the reference")
    ap.add_argument("--frames-per-day", type=int, default=cfg.frames_per_day, help="frames per camera-day")
    ap.add_argument("--camera-frames", default="", help="per-camera override, e.g. cam0=200,cam2=200")
    ap.add_argument("--flip-frames", type=int, default=cfg.flip_frames, help="frames per camera-day scored flipped")
    ap.add_argument("--control-frames", type=int, default=cfg.control_frames,
                    help="labelled control frames per reference camera-day (label-free calibration)")
    ap.add_argument("--cameras", default="", help="comma-separated cameras (default: all)")
    ap.add_argument("--permutations", type=int, default=None, help="override drift.permutations")
    ap.add_argument("--permutations-refine", type=int, default=None,
                    help="override drift.permutations_refine (0: off, p-values as the base permutations give them)")
    ap.add_argument("--drift", default="", metavar="KEY=VALUE,...",
                    help="other drift settings, e.g. pool_days=3,alarm_strong_alpha=0.002")
    ap.add_argument("--work-dir", default=cfg.work_dir, help="cache of camera-days")
    ap.add_argument("--out", type=Path, default=RESULTS / "drift.json")
    ap.add_argument("--plot", type=Path, default=PLOT)
    a = ap.parse_args(argv)
    cfg.config, cfg.world_config, cfg.stationary, cfg.model = a.config, a.world, a.stationary, a.model
    cfg.start, cfg.reference_days, cfg.days = date.fromisoformat(a.start), a.reference_days, a.days
    cfg.frames_per_day, cfg.flip_frames, cfg.control_frames = a.frames_per_day, a.flip_frames, a.control_frames
    cfg.camera_frames = {k: int(v) for k, v in (p.split("=") for p in a.camera_frames.split(",") if p.strip())}
    cfg.cameras = [c for c in a.cameras.split(",") if c.strip()] or None
    cfg.permutations, cfg.work_dir = a.permutations, a.work_dir
    cfg.permutations_refine = a.permutations_refine
    cfg.drift = parse_settings(a.drift, "--drift") if a.drift.strip() else {}
    args = sys.argv[1:] if argv is None else argv
    result = run(cfg)
    result["command"] = shlex.join(["python", "-m", "benchmarks.drift", *args])
    plot(result, a.plot)
    return write_result(a.out, result)


if __name__ == "__main__":
    main()
