"""``detloop soak --weeks N`` (also ``detloop bench soak``): weeks of unattended operation on the demo world through the
real stack and deployments, with one injected fault per week (issue 21).

Per simulated day the ``drift-monitor`` deployment runs for that day; an episode's ``detloop.drift.detected`` event
starts ``select-for-labeling/open-drift-round`` through its automation, and the soak labels each drift round it
finds with the simulated annotators, closes it with the watch deployment and waits for the event-triggered
retrain (:func:`flows.demo.label_and_retrain`). Once a week the weekly round runs (:func:`flows.demo.run_week`).
The world (``configs/world.yaml``) starts its drifts mid-run; from 2026-01-05, week ``w`` covers the days
``(start + 7(w-1), start + 7w]``, so each onset falls on the last day of a week: cam1 dusk (01-19) week 2, cam3
repaint and the new cam4 (01-26) week 3, more stars (02-02) week 4, cam2 zoom-out (02-09) week 5.

**One fault per week** (:func:`fault_plan`, seeded): a random service of the stack is SIGKILLed (the kill machinery
of :mod:`benchmarks.faults`, :func:`benchmarks.faults.service_killer`, a supervisor restarting it after a few
seconds) at a random moment of a random flow run of that week; a run that fails is re-run after ``ensure_up``, as
an operator (or the next cron tick) would. Afterwards each round is checked with
:func:`benchmarks.faults.check` (duplicates, lost annotations, the champion's integrity).

Per week: rounds run (weekly / targeted), labels paid, episodes opened and their delay after the world's onsets,
champion golden mAP, control-arm mAP, gate decisions, faults and whether the week completed, duplicates, data
lost. After the weeks (:func:`finish`): each onset's episode and delay, and what the world's truth says
(:mod:`benchmarks.soak_truth`): every week's champion's true mAP per camera on frames no one published, and for
every drift that lowered a camera's true mAP by >= 0.05 the weeks until it was back within 0.02. JSON in
``benchmarks/results/soak.json``, a table and a timeline PNG for ``docs/``.
"""

from __future__ import annotations

import copy
import json
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PLOT = REPO / "docs" / "img" / "soak_timeline.png"
FAULT_SERVICES = ("s3", "mlflow", "label-studio", "prefect")
FAULT_FLOWS = ("drift", "round")  # the daily monitor, or the weekly round (select -> label -> watch -> retrain)
RESTART_AFTER_S = 5.0  # the supervisor brings a killed service back after this long


# --------------------------------------------------------------------------------------------
# Pure parts
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fault:
    """The fault of one week: ``service`` killed ``delay_s`` seconds into ``flow`` on weekday ``day``: the daily
    monitor's run (``drift``, day 0-6) or the weekly round (``round``, day 6: select, labelling, watch and retrain in
    a row, so the delay picks the stage)."""

    week: int
    service: str
    flow: str
    day: int
    delay_s: float


def fault_plan(weeks: int, seed: int, services: Sequence[str] = FAULT_SERVICES, flows: Sequence[str] = FAULT_FLOWS,
               max_delay_s: float = 20.0, max_round_delay_s: float = 300.0) -> list[Fault]:
    """One fault per week, drawn from ``random.Random(seed)``: a service, a flow, a weekday and a delay (up to
    ``max_delay_s`` into a monitor run, ``max_round_delay_s`` into the weekly round)."""
    rng = random.Random(seed)
    out = []
    for w in range(1, weeks + 1):
        flow = rng.choice(list(flows))
        top = max_delay_s if flow == "drift" else max_round_delay_s
        out.append(Fault(w, rng.choice(list(services)), flow, rng.randrange(7) if flow == "drift" else 6,
                         round(rng.uniform(0.5, top), 1)))
    return out


def episode_delays(onsets: Sequence[Mapping[str, Any]], episodes: Sequence[Mapping[str, Any]],
                   rounds: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """For each world onset, the first episode opened on its camera at or after the onset: delay in days,
    targeted round, or missed. ``answered``: the episode names a targeted round and, with ``rounds`` (the round
    ids on record), that round exists (an episode is given its round id when announced; if the run its event
    started failed, the round was never created: the third soak's repaint). ``follow_up_of``: the episode that handed the camera over to it (still drifting
    ``drift.reopen_after_days`` after that one was answered), when it is such a follow-up: the camera was already
    drifting before the onset, so the delay says less about this drift.

    Args:
        onsets: ``{"name", "camera", "onset"}`` (ISO day).
        episodes: episode records (``opened_on``, ``cameras``, ``round_id``, ``episode_id``, ``handed_over``,
            ``followed_by``).
        rounds: round ids on record (None: an episode's round id is taken as its answer).
    """
    have = None if rounds is None else set(rounds)
    out = []
    for o in onsets:
        handed = {e["followed_by"]: e["episode_id"] for e in episodes
                  if e.get("followed_by") and o["camera"] in e.get("handed_over", [])}
        mine = sorted((e for e in episodes if o["camera"] in e.get("cameras", []) and e["opened_on"] >= o["onset"]),
                      key=lambda e: e["opened_on"])
        e = mine[0] if mine else None
        out.append({**o, "episode": e["episode_id"] if e else None, "opened_on": e["opened_on"] if e else None,
                    "delay_days": (date.fromisoformat(e["opened_on"]) - date.fromisoformat(o["onset"])).days
                    if e else None, "round_id": e.get("round_id") if e else None, "detected": e is not None,
                    "answered": bool(e and e.get("round_id") and (have is None or e["round_id"] in have)),
                    "follow_up_of": handed.get(e["episode_id"]) if e else None})
    return out


TABLE = (("week", "week"), ("as_of", "as of"), ("weekly_rounds", "weekly"), ("targeted_rounds", "targeted"),
         ("labels", "labels"), ("episodes_opened", "episodes"), ("golden_map", "golden mAP"),
         ("control_map", "control mAP"), ("decisions", "gate"), ("fault", "fault"), ("fault_outcome", "faulted run"),
         ("completed", "week ok"), ("duplicates", "dupl."), ("lost", "lost"))


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, list | tuple):
        return ", ".join(str(x) for x in v) or "-"
    return str(v)


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The per-week table (markdown)."""
    head = "| " + " | ".join(h for _, h in TABLE) + " |"
    sep = "| " + " | ".join("---" for _ in TABLE) + " |"
    return "\n".join([head, sep] + ["| " + " | ".join(_fmt(r.get(k)) for k, _ in TABLE) + " |" for r in rows])


def plot_timeline(rows: Sequence[Mapping[str, Any]], onsets: Sequence[Mapping[str, Any]], start: date,
                  out: Path, truth: Mapping[str, Any] | None = None) -> Path:
    """Golden and control mAP by week, faults marked, onsets as vertical lines; with ``truth``
    (:func:`benchmarks.soak_truth.measure`) a second panel of each camera's true mAP50 under the week's champion."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = 2 if truth else 1
    fig, axes = plt.subplots(n, 1, figsize=(9, 3.2 * n), sharex=True, squeeze=False)
    ax = axes[0][0]
    wk = [r["week"] for r in rows]
    weeks = {int(k): v for k, v in (truth or {}).get("weeks", {}).items()}  # int keys, or str after JSON
    golden = [(weeks.get(r["week"]) or {}).get("golden_map", r.get("golden_map")) for r in rows]
    ax.plot(wk, golden, "o-", label="champion golden mAP50-95 (end of week)")
    ax.plot(wk, [r.get("control_map") for r in rows], "s--", label="control-arm mAP50-95 (champion, before round)")
    for r in rows:
        if r.get("fault"):
            ax.annotate(f"kill {r['fault']}", (r["week"], 0.05), fontsize=6, rotation=90, color="tab:red")
    panels = [ax]
    if truth:
        tx = axes[1][0]
        cams = sorted({c for v in weeks.values() for c in (v.get("true") or {})})
        for c in cams:
            pts = [(w, v["true"][c]["map50"]) for w, v in sorted(weeks.items()) if c in (v.get("true") or {})]
            tx.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, label=f"{c} true mAP50")
        tx.set_ylabel(f"true mAP50 ({truth.get('frames_per_camera_week')} frames)")
        tx.legend(fontsize=6, loc="lower left", ncol=3)
        panels.append(tx)
    by_onset: dict[tuple[str, str], list[str]] = {}
    for o in onsets:  # one line and label per drift, its cameras together
        by_onset.setdefault((o["onset"], o["name"]), []).append(o["camera"])
    for k, ((day, name), cams) in enumerate(sorted(by_onset.items())):
        w = (date.fromisoformat(day) - start).days / 7
        for p in panels:
            p.axvline(w, color="grey", lw=0.8, ls=":")
        label = name if name.startswith("new camera") else f"{name} ({', '.join(cams) if len(cams) < 3 else 'all'})"
        ax.text(w + 0.04 + 0.12 * (k % 2), 0.97, label, fontsize=6, rotation=90, va="top")
    for p in panels:
        p.set_ylim(0, 1)
    panels[-1].set_xlabel("week")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


# --------------------------------------------------------------------------------------------
# The run (real stack)
# --------------------------------------------------------------------------------------------
def faulted(fault: Fault | None, stack: Any, fn: Callable[[], Any], log: Callable[[str], None]) -> tuple[str, Any]:
    """Run ``fn``; with a ``fault``, kill its service ``fault.delay_s`` seconds in (a supervisor restarts it). Once
    the service was killed, returns only when it is back up. A run that fails is re-run after ``ensure_up`` until
    it completes (at most 3 times). Returns
    ``(outcome of the faulted run, result of the run that completed)``."""
    from benchmarks.faults import _outcome, service_killer
    from infra.stack import ensure_up

    timer = None
    fired = threading.Event()
    if fault is not None:
        kill = service_killer(stack, fault.service, RESTART_AFTER_S)

        def fire() -> None:
            fired.set()
            kill()

        timer = threading.Timer(fault.delay_s, fire)
        timer.daemon = True
        timer.start()
    outcome, result = _outcome(fn)
    if timer is not None:
        timer.cancel()
        timer.join()  # a kill in progress finishes before we look
        log(f"fault {fault.service} @ {fault.flow} +{fault.delay_s} s: {outcome}")  # type: ignore[union-attr]
    if fired.is_set():
        # the supervisor brings the service back; whoever comes next (the annotators, the next run) finds it up
        # rather than racing its restart (a run that did not need the service completes before it is back)
        time.sleep(RESTART_AFTER_S)
        ensure_up(stack)
    tries = 0
    while not outcome.startswith("completed"):
        tries += 1
        if tries > 3:
            raise RuntimeError(f"{outcome}; still failing after 3 re-runs")
        time.sleep(RESTART_AFTER_S)
        ensure_up(stack)
        outcome2, result = _outcome(fn)
        if outcome2.startswith("completed"):
            break
    return outcome, result


def lost_and_duplicated(check_counts: Mapping[str, Any], annotated: int, labelled: int) -> tuple[int, int]:
    """``(duplicates, lost)`` of one round: duplicate tasks and model versions; frames selected without a task
    and annotations submitted (``annotated``) that the round's labels report did not pull (``labelled``)."""
    dup = int(check_counts.get("duplicate_tasks") or 0) + int(check_counts.get("duplicate_versions") or 0)
    lost = int(check_counts.get("selected_without_task") or 0) + max(0, int(annotated) - int(labelled))
    return dup, lost


def _count(row: dict[str, Any], c: Mapping[str, Any], counts: Mapping[str, int], store: Any, settings: Any,
           round_id: str) -> None:
    """A round's labels paid (what its labels report pulled: also the labels a crashed run's annotators made
    before a ``--resume``, which this process did not submit), duplicates and losses, added to the week's row."""
    report = store.get_json(settings.s3.data_bucket, f"rounds/{round_id}/labels_report.json")
    labelled = int(report.get("labelled", 0))
    dup, lost = lost_and_duplicated(c, int(counts.get("annotated", 0)), labelled)
    row["labels"] += labelled
    row["duplicates"] += dup
    row["lost"] += lost


def soak_identity(settings: Any) -> str:
    """What makes two soaks the same soak beyond size and seed: the settings (hashed with
    :func:`benchmarks._common.settings_hash`, so an option added later at its null default keeps the identity)."""
    from benchmarks._common import settings_hash

    return settings_hash(settings.model_dump(mode="json", exclude={"source"}), 12)


def legacy_soak_identities(settings: Any) -> set[str]:
    """:func:`soak_identity` as results written before 2026-12-05 carry it: every setting hashed, nulls included,
    and the secrets as set on the machine that ran it (as they are here, or all set, as on the soak machines); and
    as results written before an :data:`ADDED_DEFAULTS` option existed carry it."""
    from benchmarks._common import SECRET_MASK, legacy_settings_hash, settings_hash

    d = settings.model_dump(mode="json", exclude={"source"})
    masked = {**d, "s3": {**d["s3"], "access_key_id": SECRET_MASK, "secret_access_key": SECRET_MASK},
              "label_studio": {**d["label_studio"], "api_token": SECRET_MASK}}
    return {legacy_settings_hash(d, 12), legacy_settings_hash(masked, 12),
            settings_hash(without_added_defaults(d), 12)}


# Options added after soaks had begun at a non-null default, with that default: a soak started before one existed
# carries the identity without it. Its runs are the same configuration up to the option (merged into a running
# soak, it applied from that day on: the soak's docs name the day).
ADDED_DEFAULTS: dict[tuple[str, ...], Any] = {
    ("drift", "release_check_min_frames"): 20,  # 2026-12-05, the labelled check of a release
    ("drift", "pool_days"): 2,  # 2026-12-06, a camera-day tested on its frames and the day before's
    ("drift", "alarm_strong_alpha"): 0.002,  # 2026-12-06, one signal near the refined floor is a drifted day
}


def without_added_defaults(dump: Mapping[str, Any]) -> dict[str, Any]:
    """A settings dump without the :data:`ADDED_DEFAULTS` options that are at their added default (an option set
    to anything else stays: that is another configuration)."""
    out = copy.deepcopy(dict(dump))
    for path, default in ADDED_DEFAULTS.items():
        node = out
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and path[-1] in node and node[path[-1]] == default:
            del node[path[-1]]
    return out


def resumable_rows(previous: Mapping[str, Any] | None, weeks: int, size: Mapping[str, Any], seed: int,
                   identity: str, legacy: Iterable[str] = ()) -> list[dict[str, Any]]:
    """The leading completed weeks of an earlier (partial) result of the same soak, to carry over on ``--resume``.
    ``legacy``: the same settings' identities as older results carry them (:func:`legacy_soak_identities`),
    accepted too.

    Raises:
        ValueError: the earlier result is of another soak (settings, size or fault seed differ, or it predates
            ``identity``): its weeks do not belong here.
    """
    if not previous:
        return []
    same = previous.get("identity") is not None and previous.get("identity") in {identity, *legacy}
    if not same or previous.get("size") != dict(size) or previous.get("seed") != seed:
        raise ValueError(f"--resume: the earlier result is of another soak (settings {previous.get('identity')}, size "
                         f"{previous.get('size')}, seed {previous.get('seed')}; asked settings {identity}, size "
                         f"{dict(size)}, seed {seed}): use another --out")
    out = []
    for i, row in enumerate(previous.get("rows") or []):
        if row.get("week") != i + 1 or not row.get("completed") or i >= weeks:
            break
        out.append(dict(row))
    return out


def identity_migrations(previous: Mapping[str, Any] | None, identity: str) -> list[dict[str, Any]]:
    """The identity migrations to keep in a resumed soak's result: the earlier result's, plus one when that result
    carried another (legacy) identity for the same settings."""
    if not previous:
        return []
    old = previous.get("identity_migrated") or []
    kept = [dict(m) for m in (old if isinstance(old, list) else [old])]
    if previous.get("identity") not in (None, identity):
        from benchmarks._common import utc_now

        kept.append({"from": previous["identity"], "to": identity, "when": utc_now(),
                     "why": "the same settings hashed an older way (nulls included, so an option added at a null "
                            "default changed it; or before an option added at its default existed: ADDED_DEFAULTS)"})
    return kept


def run_soak(settings: Any, weeks: int, spec: Any, seed: int = 0, timeout: float = 3600.0,
             monitor_days: int = 7, log: Callable[[str], None] = print,
             carried: Sequence[Mapping[str, Any]] = (),
             on_week: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Set up (world, golden, seed, bootstrap champion) and run ``weeks`` weeks at ``spec``
    (:class:`flows.demo.DemoSize`). The stack must be up with its runner (``detloop soak`` brings it up).

    ``carried``: completed weeks of an earlier run of this soak (:func:`resumable_rows`), kept as they were and
    not re-run (set-up and bootstrap are idempotent: a re-run finds them done). ``on_week``: called with the
    result so far after every week (the CLI writes it, so a soak stopped mid-way resumes from its last week)."""
    from benchmarks.faults import Cell, check
    from detloop.clients.s3 import S3Store
    from flows.common import DEPLOYMENTS
    from flows.demo import (
        START,
        _run_deployment,
        bootstrap_champion,
        default_annotators,
        label_and_retrain,
        run_week,
        setup_world,
    )
    from tasks.drift_records import list_episodes
    from tasks.rounds import list_rounds

    t0 = time.monotonic()
    base: dict[str, Any] = {"config": str(settings.source)} if settings.source else {}
    ids = setup_world(settings, spec, weeks, log)
    bootstrap_champion(settings, spec, "soak", ids["seed"], base, timeout, log)
    store = S3Store(settings)
    profile = default_annotators(settings)
    plan = fault_plan(weeks, seed)
    cell = Cell("soak", str(settings.source), settings)
    rows: list[dict[str, Any]] = [dict(r) for r in carried]
    last_as_of = rows[-1]["as_of"] if rows else ""
    # the drift rounds of carried weeks were labelled then: not counted again
    handled: set[str] = {r.round_id for r in list_rounds(store, settings) if r.reason == "drift" and r.as_of
                         <= last_as_of}
    if rows:
        log(f"resuming after week {len(rows)} ({last_as_of}); {len(handled)} drift round(s) already handled")

    identity = soak_identity(settings)

    def result() -> dict[str, Any]:
        return {"bench": "soak", "identity": identity, "weeks_asked": weeks, "weeks_run": len(rows),
                "size": asdict(spec), "seed": seed, "faults": [asdict(f) for f in plan[: len(rows)]], "rows": rows,
                "weeks_carried": len(carried), "seconds": time.monotonic() - t0}

    for w in range(len(rows) + 1, weeks + 1):
        tw = time.monotonic()
        fault = plan[w - 1]
        week_start = START + timedelta(days=7 * (w - 1))
        row: dict[str, Any] = {"week": w, "as_of": (START + timedelta(days=7 * w)).isoformat(),
                               "fault": f"{fault.service}@{fault.flow}", "weekly_rounds": 0, "targeted_rounds": 0,
                               "labels": 0, "decisions": [], "duplicates": 0, "lost": 0, "completed": False}
        outcomes = []
        try:
            for k in range(min(7, monitor_days)):  # the daily monitor, then any drift round it started
                day = week_start + timedelta(days=k + 1)
                f = fault if fault.flow == "drift" and fault.day == k else None
                out, _ = faulted(f, settings, lambda d=day: _run_deployment(
                    DEPLOYMENTS["drift"], {**base, "as_of": d.isoformat()}, timeout), log)
                outcomes += [out] if f else []
                time.sleep(3)  # the automation turns an episode's event into a drift-round run
                for r in list_rounds(store, settings):
                    if r.reason == "drift" and r.round_id not in handled:
                        counts, res = label_and_retrain(settings, r.round_id, base, profile, log, timeout)
                        handled.add(r.round_id)
                        row["targeted_rounds"] += 1
                        row["decisions"].append(f"drift:{res.get('outcome')}")
                        _count(row, check(cell, r.round_id, trained=True), counts, store, settings, r.round_id)
            f = fault if fault.flow == "round" else None
            out, wrow = faulted(f, settings, lambda w=w: run_week(settings, w, spec, base, store, profile, log, timeout),
                                log)
            outcomes += [out] if f else []
            if wrow is not None:
                row["weekly_rounds"] = 1
                row["decisions"].append(f"weekly:{wrow.get('decision')}")
                row["golden_map"] = wrow.get("challenger_map") if wrow.get("decision") == "passed" else wrow.get(
                    "champion_map")
                row["control_map"] = wrow.get("control_champion")
                c = check(cell, wrow["round"], trained=True)
                _count(row, c, {"annotated": wrow.get("annotated", 0)}, store, settings, wrow["round"])
                row["champion_ok"] = c.get("champion_ok")
            row["completed"] = True
        except Exception as err:  # the week's failure is the measurement: recorded with its cause, the soak stops
            row["error"] = f"{type(err).__name__}: {err}"
            log(f"week {w} did not complete: {row['error']}")
        row["fault_outcome"] = outcomes[0] if outcomes else "not reached"
        eps = [e.to_dict() for e in list_episodes(store, settings)]
        row["episodes_opened"] = sum(week_start.isoformat() < e["opened_on"] <= row["as_of"] for e in eps)
        row["minutes"] = (time.monotonic() - tw) / 60
        rows.append(row)
        log(json.dumps(row, default=str))
        if on_week is not None:
            on_week({**result(), "partial": True})
        if not row["completed"]:
            break
    return result()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import argparse
    import os

    from benchmarks._common import machine_info, utc_now, write_result
    from detloop.settings import load_settings
    from infra.stack import ensure_up

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", "-c", default=os.environ.get("DETLOOP_CONFIG") or "configs/test.yaml")
    ap.add_argument("--weeks", type=int, default=8)
    ap.add_argument("--frames-per-day", type=int, default=24,
                    help="production frames per camera-day (the monitor needs drift.min_frames of them)")
    ap.add_argument("--budget", type=int, default=24, help="frames per weekly round")
    ap.add_argument("--seed-frames", type=int, default=100, help="bootstrap (seed) set frames")
    ap.add_argument("--golden-frames", type=int, default=200,
                    help="golden set frames (the gate's evidence: the first two soaks had 40, and 11 of 14 challengers "
                    "were rejected on golden deltas of -0.009 to -0.0005)")
    ap.add_argument("--bootstrap-epochs", type=int, default=None, help="default: training.bootstrap_epochs")
    ap.add_argument("--seed", type=int, default=0, help="seed of the fault plan")
    ap.add_argument("--monitor-days", type=int, default=7, help="daily monitor runs per week (7: every day)")
    ap.add_argument("--out", type=Path, default=RESULTS / "soak.json")
    ap.add_argument("--resume", action="store_true",
                    help="carry over the completed weeks of --out (written after every week) and run the rest")
    ap.add_argument("--plot", type=Path, default=PLOT)
    ap.add_argument("--truth-frames", type=int, default=400,
                    help="frames rendered per camera and week to measure each week's champion's true mAP (0: skip)")
    ap.add_argument("--truth-only", action="store_true",
                    help="run nothing: add the episodes, the true mAP per camera and week and the recoveries to --out")
    a = ap.parse_args(argv)
    from detloop.offline import apply_offline_env
    from flows.demo import DemoSize
    from infra.stack import client_env

    settings = load_settings(a.config)
    apply_offline_env(settings)
    ensure_up(settings, print)
    os.environ.update(client_env(settings))
    spec = DemoSize(a.frames_per_day, a.seed_frames, a.golden_frames, a.budget, a.bootstrap_epochs)
    previous = json.loads(a.out.read_text()) if (a.resume or a.truth_only) and a.out.is_file() else None
    if a.truth_only:
        if previous is None:
            raise SystemExit(f"--truth-only: no soak result at {a.out}")
        res = dict(previous)
    else:
        identity = soak_identity(settings)
        carried = resumable_rows(previous, a.weeks, asdict(spec), a.seed, identity, legacy_soak_identities(settings))
        migrated = {"identity_migrated": m} if (m := identity_migrations(previous, identity)) else {}
        from detloop.localfs import write_text

        res = run_soak(settings, a.weeks, spec, a.seed, monitor_days=a.monitor_days, carried=carried,
                       on_week=lambda partial: write_text(a.out, json.dumps({**partial, **migrated}, indent=2,
                                                                            default=str)))
        res.update(migrated)
    res = finish(settings, res, a.truth_frames, a.plot)
    res.update({"when": utc_now(), "machine": machine_info()})
    return write_result(a.out, res)


def finish(settings: Any, res: dict[str, Any], truth_frames: int, plot: Path,
           log: Callable[[str], None] = print) -> dict[str, Any]:
    """After the weeks: each world onset's episode and delay, the true mAP of every week's champion per camera
    and each drift's recovery (:mod:`benchmarks.soak_truth`), the timeline PNG and the table."""
    from benchmarks.soak_truth import (
        measure,
        measure_challengers,
        recovery_table,
        replay_monitor,
        world_onsets,
    )
    from detloop.clients.s3 import S3Store
    from detloop.world.config import load_world_config
    from flows.demo import START
    from tasks.drift_records import list_episodes

    world = load_world_config(settings.world_config_path())
    onsets = world_onsets(world, START, START + timedelta(days=7 * res["weeks_run"]))
    store = S3Store(settings)
    eps = [e.to_dict() for e in list_episodes(store, settings)]
    from tasks.rounds import list_rounds

    res = {**res, "episodes": episode_delays(onsets, eps, [r.round_id for r in list_rounds(store, settings)])}
    from tasks.drift_records import carried_by_version

    res["carried"] = carried_by_version(store, settings)  # cameras each champion watched against pre-onset days
    if truth_frames > 0:
        done = [r for r in res["rows"] if r.get("completed")]
        res["truth"] = measure(settings, done, START, truth_frames, log)
        res["recovery_table"] = recovery_table(res["truth"]["recovery"])
        # the rule replayed on what was stored, as configured and with the default permutations: a check that the
        # replay reproduces the run, and what the default would have seen
        versions = sorted({w["champion"] for w in res["truth"]["weeks"].values() if w.get("champion")}, key=int)
        default = type(settings.drift)().permutations
        res["monitor_replay"] = {"configured": replay_monitor(store, settings, versions, None, log)}
        if settings.drift.permutations != default:
            res["monitor_replay"]["default"] = replay_monitor(store, settings, versions, default, log)
        for name, rep in res["monitor_replay"].items():
            found = [e for v in rep["versions"].values() for e in v["episodes"]]
            rep["onsets"] = episode_delays(onsets, found)
            log(f"replay ({name}, {rep['permutations']} permutations): "
                f"{sum(o['detected'] for o in rep['onsets'])} of {len(onsets)} onsets detected")
        # every challenger on the drifted cameras' truth: what the gate's rejections cost, and how far the best
        # model trained on the drifted frames came
        res["gate_counterfactual"] = measure_challengers(settings, res["truth"], START, truth_frames, log)
        for v, cam, d in res["gate_counterfactual"]["summary"]["rejected_but_better"]:
            log(f"rejected v{v} was better on {cam} by {d:+.3f} true mAP50")
    plot_timeline(res["rows"], onsets, START, plot, res.get("truth"))
    res["table"] = markdown_table(res["rows"])
    return res


if __name__ == "__main__":
    main()
