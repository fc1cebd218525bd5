"""Replay the drift monitor's rule on a soak's stored features under other drift settings (issue 21).

A soak (``benchmarks/soak.py``) keeps every champion's reference and every monitored day's features. This re-runs
the comparisons and the episode machine on them (``benchmarks.soak_truth.replay_monitor``) once per variant of the
drift settings, scores nothing and writes nothing into the soak's store, and says per variant:

- per world onset (drift x camera), the first episode opened on the camera at or after it, and its delay;
- false alarms: drifted camera-days and episodes on a camera before any onset touched it (its stationary days);
- the wall time of the comparisons (what a variant costs the daily monitor).

The variants: ``as_run`` (the rule as the fourth tiled soak ran it: ``permutations_refine`` off, one day at a time,
two signals), ``refined`` (session 42: a p-value near the permutation floor recomputed from
``drift.permutations_refine`` resamples) and ``configured`` (the settings as configured: since session 43 also
``pool_days: 2`` and ``alarm_strong_alpha: 0.002``), plus any ``--variant name:key=value,...`` given. The first two
pin what they differ in, so they mean the same when the defaults move.

    python -m benchmarks.monitor_replay --config configs/soak_tiled_d.yaml \\
        --soak benchmarks/results/soak8_tiled_d.json --out benchmarks/results/monitor_replay_soak_d.json

Needs the soak's S3 up (``detloop stack up --config ...``, or ``detloop bench monitor-replay`` starts it).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Mapping, Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
_ONE_DAY_TWO_SIGNALS = {"pool_days": 1, "alarm_strong_alpha": None}  # the rule before session 43
DEFAULT_VARIANTS: dict[str, dict[str, Any]] = {"as_run": {"permutations_refine": None, **_ONE_DAY_TWO_SIGNALS},
                                               "refined": dict(_ONE_DAY_TWO_SIGNALS), "configured": {}}


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``name:key=value,key=value`` (drift settings; ``null`` for None, numbers as numbers) -> ``(name, overrides)``.

    Raises:
        ValueError: not of that form.
    """
    from benchmarks._common import parse_settings

    name, _, body = text.partition(":")
    if not name or not body:
        raise ValueError(f"--variant {text!r}: expected name:key=value[,key=value...]")
    return name, parse_settings(body, f"--variant {name}:")


def stationary_until(onsets: Sequence[Mapping[str, Any]], cameras: Sequence[str]) -> dict[str, str | None]:
    """camera -> its first onset (ISO day), None when no drift touched it: its days before are stationary."""
    first: dict[str, str | None] = dict.fromkeys(cameras)
    for o in onsets:
        cam = o["camera"]
        if cam in first and (first[cam] is None or o["onset"] < str(first[cam])):
            first[cam] = o["onset"]
    return first


def false_alarms(statuses: Mapping[str, Mapping[str, Mapping[str, str]]], episodes: Sequence[Mapping[str, Any]],
                 until: Mapping[str, str | None]) -> dict[str, Any]:
    """Drifted camera-days and episodes on stationary days (a camera's days before its first onset), counted per
    champion's test (``stationary_camera_days``, ``drifted``) and per camera-day (``unique_*``).

    Args:
        statuses: version -> day -> camera -> verdict status (``drift`` / ``clean`` / ``insufficient``).
        episodes: the episodes the replay opened (``opened_on``, ``cameras``).
        until: :func:`stationary_until`.
    """
    judged = drifted = 0
    where: list[str] = []
    days_judged: set[tuple[str, str]] = set()
    days_drifted: set[tuple[str, str]] = set()
    for v, days in statuses.items():
        for day, cams in days.items():
            for cam, status in cams.items():
                end = until.get(cam, day)
                if status == "insufficient" or (end is not None and day >= end):
                    continue
                judged += 1
                days_judged.add((cam, day))
                if status == "drift":
                    drifted += 1
                    days_drifted.add((cam, day))
                    where.append(f"v{v} {cam} {day}")
    eps = sorted({f"{e['opened_on']} {c}" for e in episodes for c in e.get("cameras", [])
                  if until.get(c) is None or e["opened_on"] < str(until[c])})
    # each champion compares the same day with its own reference: a (version, camera, day) is one test, a camera-day
    # drifted when any champion's test drifted it
    return {"stationary_camera_days": judged, "drifted": drifted, "drifted_on": where,
            "unique_camera_days": len(days_judged), "unique_drifted": len(days_drifted), "episodes": len(eps),
            "episodes_on": eps}


def summarise(variant: Mapping[str, Any], onsets: Sequence[Mapping[str, Any]],
              cameras: Sequence[str]) -> dict[str, Any]:
    """A replayed variant's onsets (first episode and delay) and false alarms, from its per-version records."""
    from benchmarks.soak import episode_delays

    found = [e for v in variant["versions"].values() for e in v["episodes"]]
    statuses = {v: r.get("statuses", {}) for v, r in variant["versions"].items()}
    return {"onsets": episode_delays(onsets, found),
            "false_alarms": false_alarms(statuses, found, stationary_until(onsets, cameras))}


def headline(res: Mapping[str, Any]) -> dict[str, str]:
    """One line per variant: onsets detected, stationary days drifted, wall time."""
    out = {}
    for name, v in res["variants"].items():
        fa = v["false_alarms"]
        joined = sorted(f"{e['opened_on']} {c}" for r in v["versions"].values() for e in r["episodes"]
                        for c in e.get("companions") or {})
        out[name] = (f"{sum(o['detected'] for o in v['onsets'])}/{len(v['onsets'])} onsets, "
                     f"{fa['unique_drifted']}/{fa['unique_camera_days']} stationary camera-days drifted "
                     f"({fa['drifted']}/{fa['stationary_camera_days']} champion tests), {fa['episodes']} false "
                     f"episode(s), {v['seconds']:.0f} s"
                     + (f"; companions joined: {', '.join(joined)}" if joined else ""))
    return out


def run(settings: Any, store: Any, versions: Sequence[str], variants: Mapping[str, Mapping[str, Any]],
        onsets: Sequence[Mapping[str, Any]], cameras: Sequence[str], log: Any = print) -> dict[str, Any]:
    """Each variant replayed on ``versions``; see the module docstring."""
    from benchmarks.soak_truth import replay_monitor

    out: dict[str, Any] = {}
    for name, over in variants.items():
        t0 = time.perf_counter()
        rep = replay_monitor(store, settings, versions, drift=over, log=lambda m, n=name: log(f"[{n}] {m}"))
        out[name] = {"overrides": dict(over), "drift_settings": rep["drift_settings"], "versions": rep["versions"],
                     "seconds": time.perf_counter() - t0}
        out[name].update(summarise(out[name], onsets, cameras))
        log(f"[{name}] {headline({'variants': {name: out[name]}})[name]}")
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="the soak's config (its S3 must be up)")
    ap.add_argument("--soak", type=Path, default=None,
                    help="the soak's result JSON: its weeks, for the world's onsets (default: 8 weeks)")
    ap.add_argument("--variant", action="append", default=[],
                    help="name:key=value,... drift settings of one more variant (e.g. refine99k:permutations_refine="
                         "99999)")
    ap.add_argument("--only", default=None, help="comma-separated variant names to run (default: all)")
    ap.add_argument("--summarise", action="store_true",
                    help="replay nothing: rebuild the summaries of --out from its stored per-version records")
    ap.add_argument("--out", type=Path, default=RESULTS / "monitor_replay.json")
    args = ap.parse_args(argv)
    from benchmarks.soak_truth import world_onsets
    from detloop.settings import load_settings
    from detloop.world.config import load_world_config
    from flows.demo import START

    settings = load_settings(args.config)
    world = load_world_config(settings.world_config_path())
    cameras = [c.id for c in world.cameras]
    if args.summarise:
        res = json.loads(args.out.read_text())
        for v in res["variants"].values():
            v.update(summarise(v, res["onsets"], cameras))
    else:
        from detloop.clients.s3 import S3Store
        from infra.stack import client_env
        from tasks.drift_records import carried_by_version

        os.environ.update(client_env(settings))
        store = S3Store(settings)
        variants = dict(DEFAULT_VARIANTS)
        variants.update(dict(parse_variant(v) for v in args.variant))
        if args.only:
            variants = {k: v for k, v in variants.items() if k in args.only.split(",")}
        soak = json.loads(args.soak.read_text()) if args.soak else None
        # every champion with a reference: each watched the days it served (the soak's own replay takes the
        # champions at the weeks' ends only)
        versions = sorted(carried_by_version(store, settings), key=int)
        weeks = int(soak["weeks_run"]) if soak else 8
        onsets = world_onsets(world, START, START + timedelta(days=7 * weeks))
        res = {"bench": "monitor_replay", "config": args.config, "soak": str(args.soak) if args.soak else None,
               "when": date.today().isoformat(), "versions": versions, "onsets": onsets,
               "variants": run(settings, store, versions, variants, onsets, cameras)}
    base = res["variants"].get("as_run", {}).get("seconds")
    for v in res["variants"].values():
        v["seconds_ratio_to_as_run"] = None if not base else v["seconds"] / base
    res["headline"] = headline(res)
    for name, line in res["headline"].items():
        print(f"{name}: {line}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2, default=str))
    return res


if __name__ == "__main__":
    main()
