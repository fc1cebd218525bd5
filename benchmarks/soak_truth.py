"""What the world's truth says of a soak: per week and camera, the true mAP of the champion that held at the end
of the week, and for every drift that lowered a camera's true mAP, the weeks until it came back.

The soak itself sees only what production sees (the golden set, the control arm). Here every week's champion
(from the round records: the model that scored the first round after the week; the champion now for the last
week) scores frames rendered for each camera on the week's last day from a stream production never publishes
(``truth``), so no frame was ever trained on; their truth is known, so the mAP is the true one. Per
(version, camera, day) results are cached under ``<data_dir>/soak-truth``.

Run after a soak (``python -m benchmarks.soak --truth-only --out <soak.json>``); ``detloop soak`` runs it at the
end of every complete run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any

TRUTH_STREAM = "truth"


def week_end(start: date, week: int) -> date:
    """The last day (``as_of``) of soak week ``week`` (1-based) starting on ``start``."""
    return start + timedelta(days=7 * week)


def week_of(start: date, day: date) -> int:
    """The soak week holding ``day``: week ``w`` covers ``(start + 7(w-1), start + 7w]``."""
    return max(1, -(-(day - start).days // 7))


def champions_by_week(week_ends: Mapping[int, str], rounds: Sequence[Mapping[str, Any]],
                      current: str | None) -> dict[int, str | None]:
    """Week -> the registry version that was champion at the end of that week.

    Args:
        week_ends: week -> its ``as_of`` (ISO day).
        rounds: round records (``as_of``, ``model_version``, ``created_at``): each was scored by the champion of
            its moment.
        current: the champion now (for weeks after which no round ran).

    The first round (in creation order) whose ``as_of`` is after a week's end was scored by the champion that
    held at that end; a week with no later round gets ``current``.
    """
    ordered = sorted(rounds, key=lambda r: (str(r.get("created_at") or ""), str(r.get("as_of"))))
    out: dict[int, str | None] = {}
    for w, end in sorted(week_ends.items()):
        nxt = next((r for r in ordered if str(r["as_of"]) > end and r.get("model_version")), None)
        out[w] = str(nxt["model_version"]) if nxt else current
    return out


def world_onsets(world: Any, start: date, end: date) -> list[dict[str, Any]]:
    """The world's drift episodes that begin in ``[start, end]``: one per (drift, camera), plus new cameras."""
    out = []
    cams = [c.id for c in world.cameras]
    for d in world.drift:
        if start <= d.start <= end:
            for c in d.cameras or cams:
                out.append({"name": d.name, "camera": c, "onset": d.start.isoformat()})
    for c in world.cameras:
        if c.active_from is not None and start < c.active_from <= end:
            out.append({"name": f"new camera {c.id}", "camera": c.id, "onset": c.active_from.isoformat()})
    return out


def recovery_weeks(series: Mapping[int, float | None], onset_week: int, drop: float = 0.05,
                   tolerance: float = 0.02, until: int | None = None) -> dict[str, Any]:
    """How long a camera's mAP took to come back after a drift.

    Args:
        series: week -> the camera's true (or control-arm) mAP at the end of that week.
        onset_week: the week the drift began.
        drop: a drift "lowered" the mAP when a week from ``onset_week`` on is this far below the week before it.
        tolerance: recovered when back within this of the pre-onset value.
        until: the week the camera's next drift began: the drop is looked for before it (so a later drift's
            damage is not charged to this one); the recovery is looked for in every later week.

    Returns:
        ``{"pre", "lowest", "lowered", "recovered_week", "weeks_to_recover"}`` (None where it does not apply).
    """
    pre = series.get(onset_week - 1)
    after = {w: v for w, v in series.items() if w >= onset_week and v is not None}
    window = {w: v for w, v in after.items() if until is None or w < until}
    if pre is None or not window:
        return {"pre": pre, "lowest": None, "lowered": None, "recovered_week": None, "weeks_to_recover": None}
    lowest = min(window.values())
    lowered = lowest <= pre - drop
    low_week = min(w for w, v in window.items() if v == lowest)
    rec = next((w for w in sorted(after) if w > low_week and after[w] >= pre - tolerance), None) if lowered else None
    return {"pre": pre, "lowest": lowest, "lowered": lowered, "recovered_week": rec,
            "weeks_to_recover": None if rec is None else rec - onset_week}


def recoveries(truth: Mapping[int, Mapping[str, Mapping[str, float | None]]],
               onsets: Sequence[Mapping[str, Any]], start: date, metric: str = "map50",
               drop: float = 0.05, tolerance: float = 0.02) -> list[dict[str, Any]]:
    """For every world onset, whether it lowered its camera's true ``metric`` by ``drop`` and the weeks until it
    was back within ``tolerance`` of the week before the onset (:func:`recovery_weeks`)."""
    out = []
    for o in onsets:
        cam = o["camera"]
        ow = week_of(start, date.fromisoformat(o["onset"]))
        later = [week_of(start, date.fromisoformat(x["onset"])) for x in onsets if x["camera"] == cam]
        until = min((w for w in later if w > ow), default=None)  # the camera's next drift: its drop is not ours
        series = {w: (cams.get(cam) or {}).get(metric) for w, cams in truth.items()}
        out.append({**o, "onset_week": ow, "metric": metric, "next_onset_week": until,
                    "last_week": max(truth, default=None),
                    **recovery_weeks(series, ow, drop=drop, tolerance=tolerance, until=until)})
    return out


def true_map(world: Any, classes: Sequence[str], camera: str, day: date, n: int, scoring_dir: Path,
             settings: Any, seed: int, cache: Path | None = None, label: str = "") -> dict[str, float | None]:
    """The true mAP50 / mAP50-95 of the model in ``scoring_dir`` on ``n`` truth-stream frames of one camera-day,
    scored as ``settings.model`` scores that camera (tiled or whole; cached in ``cache`` under ``label``)."""
    from benchmarks.drift import render_and_score, tiling_tag

    name = f"{label}-{camera}-{day.isoformat()}-{n}-{seed}{tiling_tag(settings, camera)}.json"
    path = cache / name if cache is not None else None
    if path is not None and path.is_file():
        return json.loads(path.read_text())
    from tasks.evaluation import compute_metrics
    from tasks.scoring import load_scorer

    t0 = time.perf_counter()
    scorer = load_scorer(scoring_dir, settings.model, list(classes))
    scored, truths = render_and_score(world, classes, camera, day, n, scorer, settings, seed, stream=TRUTH_STREAM)
    m = compute_metrics("truth", truths, [s.detections for s in scored], list(classes), min_instances=1).overall
    res = {"map50": m.map50, "map": m.map, "n_truth": int(sum(len(t) for t in truths)),
           "seconds": time.perf_counter() - t0}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res))
    return res


def measure(settings: Any, rows: Sequence[Mapping[str, Any]], start: date, frames: int = 200,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Per week: the champion at its end, its golden mAP (registry tag) and its true mAP per active camera;
    then the recovery of every drift onset. Needs the soak's stack (S3 for the round records, MLflow for the
    versions; copies already fetched are reused)."""
    from detloop.clients.registry import RegistryClient
    from detloop.clients.s3 import S3Store
    from detloop.world.config import load_world_config
    from tasks.registry import champion_version, load_champion
    from tasks.rounds import list_rounds

    store = S3Store(settings)
    registry = RegistryClient(settings)
    world = load_world_config(settings.world_config_path())
    classes = list(settings.classes)
    ends = {int(r["week"]): str(r["as_of"]) for r in rows}
    rounds = [{"as_of": r.as_of, "model_version": r.model_version, "created_at": r.created_at}
              for r in list_rounds(store, settings)]
    now = champion_version(registry)
    champs = champions_by_week(ends, rounds, str(now.version) if now is not None else None)
    cache = settings.data_dir / "soak-truth"
    weeks: dict[int, dict[str, Any]] = {}
    truth: dict[int, dict[str, dict[str, float | None]]] = {}
    for w, v in champs.items():
        day = date.fromisoformat(ends[w])
        if v is None:
            weeks[w] = {"champion": None}
            continue
        mv = registry.get_version(v)
        local = load_champion(settings, registry, version=v)
        tags = (getattr(mv, "tags", None) or {})
        golden = float(tags["detloop.golden_map"]) if tags.get("detloop.golden_map") else None
        truth[w] = {}
        for cam in world.active_cameras(day):
            truth[w][cam] = true_map(world, classes, cam, day, frames, Path(local) / "scoring", settings,
                                     settings.world.seed, cache, label=f"v{v}")
            log(f"week {w} v{v} {cam} {day}: true mAP50 {truth[w][cam]['map50']:.3f}")
        weeks[w] = {"champion": v, "golden_map": golden, "true": truth[w]}
    onsets = world_onsets(world, start, week_end(start, max(ends)))
    return {"frames_per_camera_week": frames, "stream": TRUTH_STREAM, "weeks": weeks,
            "recovery": recoveries(truth, onsets, start, "map50"),
            "recovery_map": recoveries(truth, onsets, start, "map")}


def recovery_table(recovery: Sequence[Mapping[str, Any]]) -> str:
    """Markdown: per onset, the true mAP before, its lowest, whether lowered and weeks to recover."""
    def f(x: Any) -> str:
        return "-" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)

    def weeks(r: Mapping[str, Any]) -> str:
        if not r["lowered"]:
            return "-"
        if r["weeks_to_recover"] is None:
            return f"**not back** by week {r['last_week']}"
        return str(r["weeks_to_recover"])

    head = ("| drift | camera | onset (week) | true mAP50 the week before | lowest after | lowered by >= 0.05 "
            "| back within 0.02 in week | weeks to recover |\n|---|---|---|---|---|---|---|---|")
    lines = [f"| {r['name']} | {r['camera']} | {r['onset']} ({r['onset_week']}) | {f(r['pre'])} | {f(r['lowest'])} "
             f"| {'yes' if r['lowered'] else 'no' if r['lowered'] is not None else '-'} | {f(r['recovered_week'])} "
             f"| {weeks(r)} |" for r in recovery]
    return "\n".join([head, *lines])


def replay_monitor(store: Any, settings: Any, versions: Sequence[str], permutations: int | None = None,
                   log: Callable[[str], None] = print, drift: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The monitor's rule replayed on what the soak stored (each champion's reference and daily features), with
    ``drift.permutations`` set to ``permutations`` (None: as configured) and the drift settings in ``drift``
    overridden: per champion, the first drifted day, each day's verdict per camera (``statuses``) and the episodes
    the rule opens. Scores nothing; re-runs the comparisons (``tasks.drift.compare_day``).

    Only the days from the champion's anchor (the day it took over: its reference's ``anchor``) are judged, as the
    live monitor does (``flows.drift.update_episodes``): the days stored before it (a report's window reaches back)
    are the previous champion's traffic and the very days its reference is built from, so judging them would open
    episodes after the fact. They still feed ``drift.pool_days``, as they do live.
    """
    from tasks.drift import (
        companion_window,
        companions_for,
        compare_day,
        pool_window,
        pooled,
        replay,
        verdict,
    )
    from tasks.drift_records import load_day_features, load_days, load_recent_rows, load_reference

    update = {**({} if permutations is None else {"permutations": permutations}), **dict(drift or {})}
    from benchmarks._common import drift_with

    cfg = drift_with(settings, update)
    out: dict[str, Any] = {"permutations": cfg.permutations, "versions": {},
                           "drift_settings": {"permutations": cfg.permutations,
                                              "permutations_refine": cfg.permutations_refine, "alpha": cfg.alpha,
                                              "correction": cfg.correction,
                                              "alarm_min_signals": cfg.alarm_min_signals,
                                              "alarm_consecutive_days": cfg.alarm_consecutive_days,
                                              "alarm_strong_alpha": cfg.alarm_strong_alpha,
                                              "pool_days": cfg.pool_days}}
    for v in versions:
        ref = load_reference(store, settings, v)
        if ref is None:
            continue
        days = sorted(load_days(store, settings, v))
        since = str(ref[0].get("anchor") or "")
        verdicts, stats_of = {}, {}
        t0 = time.perf_counter()
        pool_from = min((x for d in days if d >= since for x in pool_window(d, cfg.pool_days)), default=since)
        feats_of = {d: f for d in days if d >= pool_from and (f := load_day_features(store, settings, v, d)) is not None}
        for d in days:
            if d not in feats_of or d < since:
                continue
            stats_of[d] = compare_day(ref[1], pooled(feats_of, d, cfg.pool_days), cfg, settings.classes, d)
            verdicts[d] = {c: verdict(s, cfg, settings.classes) for c, s in stats_of[d].items()}
        carried = ref[0].get("carried") or {}
        recent = load_recent_rows(store, settings, v) if carried else None

        def joining(d: str, e: Any, st: Any, known: Any, ref: Any = ref, recent: Any = recent,
                    carried: Any = carried, verdicts: Any = verdicts, stats_of: Any = stats_of,
                    feats_of: Any = feats_of) -> Any:
            return companions_for(d, e, st, known, stats_of[d], verdicts[d],
                                  companion_window(feats_of, e, d, cfg.pool_days), ref[1], carried, recent, cfg,
                                  settings.classes)

        _, eps = replay(verdicts, cfg, v, answer=True, companions_of=joining if cfg.companion_alpha else None)
        first: dict[str, str] = {}
        for d in sorted(verdicts):
            for c, vd in verdicts[d].items():
                if vd.status == "drift":
                    first.setdefault(c, d)
        out["versions"][v] = {
            "days": [min(verdicts), max(verdicts)] if verdicts else [], "anchor": since or None,
            "first_drifted_day": first,
            "statuses": {d: {c: vd.status for c, vd in verdicts[d].items()} for d in sorted(verdicts)},
            "episodes": [{"episode_id": e.episode_id, "opened_on": e.opened_on, "cameras": e.cameras,
                          "signals": e.signals, "handed_over": e.handed_over, "followed_by": e.followed_by,
                          "companions": e.companions, "joined_late": e.joined_late}
                         for e in sorted(eps.values(), key=lambda e: e.opened_on)],
            "seconds": time.perf_counter() - t0}
        log(f"v{v} with {cfg.permutations} permutations: {len(eps)} episode(s) "
            f"{[(e.opened_on, e.cameras) for e in eps.values()]}")
    return out


def gate_check(checks: str | None, name: str) -> tuple[str, float | None] | None:
    """``(status, value)`` of check ``name`` in a version's ``gate.checks`` tag (JSON ``[[name, status, value],
    ...]``); None when it is not there."""
    try:
        rows = json.loads(checks or "[]")
    except ValueError:
        return None
    row = next((r for r in rows if r and r[0] == name), None)
    return None if row is None else (str(row[1]), None if row[2] is None else float(row[2]))


def golden_delta(checks: str | None) -> float | None:
    """The ``golden_map_delta`` value of a version's ``gate.checks`` tag."""
    got = gate_check(checks, "golden_map_delta")
    return None if got is None else got[1]


def gate_counterfactual(challengers: Sequence[Mapping[str, Any]],
                        champion_truth: Mapping[int, Mapping[str, Mapping[str, float | None]]],
                        cameras: Mapping[str, int], better_by: float = 0.02, metric: str = "map50",
                        pre: Mapping[str, float | None] | None = None) -> dict[str, Any]:
    """What the gate's decisions cost on the drifted cameras, from the world's truth.

    Args:
        challengers: one per challenger: ``version``, ``week`` (the week it was proposed), ``outcome`` (gate),
            ``golden_delta`` and ``true`` (camera -> {metric: value} at the end of that week).
        champion_truth: week -> camera -> {metric: value} of the champion that held at the end of the week.
        cameras: camera -> the week its drift began, for the cameras whose drift lowered the true mAP (the ones
            recovery is judged on); only challengers of that week or later count for the camera.
        better_by: a challenger "would have helped" a camera when its true value is at least this above the
            champion's in the same week.
        pre: camera -> its true value the week before the onset (the recovery target).

    Returns:
        ``rows`` (per challenger and camera: challenger, champion and delta) and ``summary``: the rejected
        challengers that were better on a drifted camera by ``better_by``, and per camera the best true value any
        challenger reached after the onset, with its gap to ``pre``.
    """
    rows, helped, best = [], [], {}
    for c in challengers:
        for cam, onset in cameras.items():
            if int(c["week"]) < onset:
                continue
            mine = ((c.get("true") or {}).get(cam) or {}).get(metric)
            champ = ((champion_truth.get(int(c["week"])) or {}).get(cam) or {}).get(metric)
            if mine is None:
                continue
            delta = None if champ is None else mine - champ
            rows.append({"version": str(c["version"]), "week": int(c["week"]), "camera": cam,
                         "outcome": c.get("outcome"), "golden_delta": c.get("golden_delta"),
                         "drifted_gain": c.get("drifted_gain"), "allowance": bool(c.get("allowance")),
                         "challenger": mine, "champion": champ, "delta": delta})
            if c.get("outcome") == "rejected" and delta is not None and delta >= better_by:
                helped.append(rows[-1])
            if cam not in best or mine > best[cam]["value"]:
                target = (pre or {}).get(cam)
                best[cam] = {"value": mine, "version": str(c["version"]), "week": int(c["week"]), "pre": target,
                             "gap_to_pre": None if target is None else mine - target}
    return {"metric": metric, "better_by": better_by, "rows": rows,
            "summary": {"rejected_but_better": [(r["version"], r["camera"], round(r["delta"], 4)) for r in helped],
                        "best_challenger": best}}


def counterfactual_table(cf: Mapping[str, Any]) -> str:
    """Markdown: per challenger and drifted camera, its true value beside the week's champion's."""
    def f(x: Any, sign: bool = False) -> str:
        return "-" if x is None else (f"{x:+.3f}" if sign else f"{x:.3f}")

    lines = [f"| version | week | camera | gate | golden delta | drifted-slice gain | challenger true {cf['metric']} | "
             "champion | delta |", "|---|---|---|---|---|---|---|---|---|"]
    for r in cf["rows"]:
        gain = f(r.get("drifted_gain"), True) + (" (allowance granted)" if r.get("allowance") else "")
        lines.append(f"| v{r['version']} | {r['week']} | {r['camera']} | {r['outcome']} | "
                     f"{f(r['golden_delta'], True)} | {gain} | {f(r['challenger'])} | {f(r['champion'])} | "
                     f"{f(r['delta'], True)} |")
    return "\n".join(lines) + "\n"


def measure_challengers(settings: Any, truth: Mapping[str, Any], start: date, frames: int,
                        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Score every registered challenger proposed after the first drift that lowered a camera's true mAP, on
    that camera's truth frames at the end of the week it was proposed (same frames as the champion of that
    week), and compare (:func:`gate_counterfactual`). Needs the soak's stack (MLflow, S3)."""
    from detloop.clients.registry import RegistryClient
    from detloop.clients.s3 import S3Store
    from detloop.world.config import load_world_config
    from tasks.registry import load_champion
    from tasks.rounds import list_rounds

    lowered = sorted((r for r in truth.get("recovery", []) if r.get("lowered")), key=lambda r: int(r["onset_week"]))
    cameras: dict[str, int] = {}
    pre: dict[str, float | None] = {}
    for r in lowered:  # a camera's first drift that lowered it
        if r["camera"] not in cameras:
            cameras[r["camera"]], pre[r["camera"]] = int(r["onset_week"]), r.get("pre")
    first = min(cameras.values(), default=None)
    weeks = {int(w): v.get("true") or {} for w, v in truth["weeks"].items()}
    if first is None:
        return gate_counterfactual([], weeks, {})
    registry = RegistryClient(settings)
    world = load_world_config(settings.world_config_path())
    as_of = {r.round_id: r.as_of for r in list_rounds(S3Store(settings), settings)}
    out = []
    for mv in sorted(registry.versions(), key=lambda m: int(m.version)):
        tags = getattr(mv, "tags", None) or {}
        day = as_of.get(tags.get("detloop.round_id", ""))
        if day is None or tags.get("gate.bootstrap") == "true":
            continue
        week = week_of(start, date.fromisoformat(str(day)))
        if week < first or week not in weeks:
            continue
        end = week_end(start, week)
        local = load_champion(settings, registry, version=str(mv.version))
        true = {cam: true_map(world, list(settings.classes), cam, end, frames, Path(local) / "scoring", settings,
                              settings.world.seed, settings.data_dir / "soak-truth", label=f"v{mv.version}")
                for cam, onset in cameras.items() if week >= onset and cam in world.active_cameras(end)}
        log(f"challenger v{mv.version} (week {week}, {tags.get('gate.outcome')}): "
            + ", ".join(f"{c} {t['map50']:.3f}" for c, t in true.items()))
        # drift rounds with the drift allowance on: the drifted-slice gain, and whether it granted the allowance
        # (granted is not used: a challenger that also raised golden did not need it)
        drifted = gate_check(tags.get("gate.checks"), "drifted_gain")
        out.append({"version": str(mv.version), "week": week, "outcome": tags.get("gate.outcome"),
                    "golden_delta": golden_delta(tags.get("gate.checks")), "true": true,
                    "drifted_gain": None if drifted is None else drifted[1],
                    "allowance": drifted is not None and drifted[0] == "pass"})
    return gate_counterfactual(out, weeks, cameras, pre=pre)
