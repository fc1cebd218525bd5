"""The main job: the loop on the synthetic production world, through the real deployments and events.

``detloop demo`` (and ``make demo``):

1. set-up: bring the stack up with the runner, publish a synthetic world with drift events, the golden
   set and the seed set, bootstrap a champion (the ``bootstrap/train-first-champion`` deployment);
2. the loop, one simulated week at a time (``as_of`` advancing): run ``select-for-labeling/open-weekly-round``,
   let simulated annotators label the round in Label Studio, run ``watch-rounds/close-finished-rounds``, whose
   ``detloop.annotation.round.completed`` event triggers ``retrain-and-promote`` on the runner; wait
   for it and read its result;
3. print one table row as each week finishes and write a learning-curve PNG (golden mAP against labelled frames,
   the seed set included, and the blind control arm's mAP beside it).

Re-running continues where it stopped: every step is idempotent (published keys are skipped, the
bootstrap sees the champion, a week whose round exists resumes it, a trained round reports its result).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from detloop.errors import DetloopError
from detloop.settings import Settings
from flows.common import DEPLOYMENTS

START = date(2026, 1, 5)  # a Monday; the world's drift events are dated from here


@dataclass(frozen=True)
class DemoSize:
    frames_per_day: int  # per active camera
    seed_frames: int
    golden_frames: int
    budget: int
    bootstrap_epochs: int | None  # None: the config's training.bootstrap_epochs


SIZES = {
    "tiny": DemoSize(frames_per_day=2, seed_frames=100, golden_frames=40, budget=10, bootstrap_epochs=None),
    "default": DemoSize(frames_per_day=8, seed_frames=150, golden_frames=200, budget=60, bootstrap_epochs=None),
    "large": DemoSize(frames_per_day=20, seed_frames=300, golden_frames=400, budget=120, bootstrap_epochs=None),
}


def _require_champion(settings: Settings, size: str, spec: DemoSize) -> None:
    """After the bootstrap: stop with the gate's reason when it promoted nothing (the weeks need a champion)."""
    from detloop.clients.registry import RegistryClient
    from tasks.registry import champion_version, list_models

    registry = RegistryClient(settings)
    if champion_version(registry) is not None:
        return
    boot = next((m for m in list_models(registry) if m["dataset_version"] != "-"), None)
    why = f"version {boot['version']} was {boot['gate']}: {boot['reasons']}" if boot else "no model version was registered"
    raise DetloopError(
        f"the bootstrap promoted no champion ({why}); at --size {size} the seed set has {spec.seed_frames} frames. "
        "Use a larger --size, more training.bootstrap_epochs, or a lower gate.bootstrap_floor in your config"
    )


def _run_deployment(name: str, params: dict[str, Any], timeout: float) -> Any:
    from prefect.deployments import run_deployment

    fr = run_deployment(name, parameters={"params": params}, timeout=timeout)
    if fr.state is None or not fr.state.is_completed():
        state = fr.state.name if fr.state else "unknown"
        msg = fr.state.message if fr.state else ""
        raise DetloopError(f"flow run {fr.name} of {name} ended {state}: {msg} (see the Prefect UI)")
    return fr


def run_watch(params: dict[str, Any], attempts: int = 10, wait: float = 5.0) -> Any:
    """Run the watch deployment now (retried while a run of it comes back cancelled)."""
    from prefect.deployments import run_deployment

    fr = None
    for _ in range(attempts):
        fr = run_deployment(DEPLOYMENTS["watch"], parameters={"params": params}, timeout=600)
        if fr.state is None or not fr.state.is_cancelled():
            break
        time.sleep(wait)
    if fr is None or fr.state is None or not fr.state.is_completed():
        raise DetloopError(f"watch-rounds did not complete ({fr.state.name if fr and fr.state else 'no state'})")
    return fr


def retrain_runs(client: Any, deployment_id: Any, limit: int = 100) -> list[Any]:
    """The newest runs of one deployment (filtered by the server: ids of event-triggered runs are random,
    so the default id order does not put new runs first)."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    return list(client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=limit,
    ))


def wait_for_round_retrain(round_id: str, list_runs: Callable[[], list[Any]], timeout: float, *,
                           rewatch: Callable[[], Any] | None = None, rewatch_every: float = 60.0,
                           max_failed: int = 3, poll: float = 3.0, clock: Callable[[], float] = time.monotonic,
                           sleep: Callable[[float], None] = time.sleep) -> Any:
    """Wait until a ``retrain-and-promote`` run of ``round_id`` (among ``list_runs()``) completes; returns it.

    While no run of the round is pending or running, ``rewatch`` is called every ``rewatch_every`` seconds, as the
    watch deployment's schedule does in production: the watch re-announces a finished round that is still untrained
    after 2 x ``locks.lease_seconds`` (``tasks.rounds.retrain_stalled``), so a ``round.completed`` event lost in an
    outage, or a retrain that failed in one (the Prefect server killed under it), gets a new retrain instead of this
    waiting for nothing or giving up. Raises when ``max_failed`` runs of the round ended without completing (at the
    first with no ``rewatch``: nothing would re-announce it), or at ``timeout``."""
    start = clock()
    last_watch = start
    while clock() - start < timeout:
        mine = [r for r in list_runs() if (r.parameters.get("params") or {}).get("round_id") == round_id]
        completed = [r for r in mine if r.state is not None and r.state.is_completed()]
        if completed:
            return completed[0]
        active = [r for r in mine if r.state is None or not r.state.is_final()]
        failed = [r for r in mine if r.state is not None and r.state.is_final()]
        if failed and not active and (rewatch is None or len(failed) >= max_failed):
            r = failed[0]
            runs = f" ({len(failed)} runs)" if len(failed) > 1 else ""
            raise DetloopError(f"retrain-and-promote for {round_id} ended {r.state.name}: {r.state.message}{runs}")
        if not active and rewatch is not None and clock() - last_watch >= rewatch_every:
            rewatch()
            last_watch = clock()
        sleep(poll)
    raise DetloopError(f"no finished retrain-and-promote run for round {round_id} after {timeout:.0f} s "
                       "(is the runner up? `detloop stack status`)")


def _wait_for_retrain(round_id: str, timeout: float, poll: float = 3.0,
                      rewatch: Callable[[], Any] | None = None, rewatch_every: float = 60.0) -> Any:
    """Wait for the event-triggered ``retrain-and-promote`` run of ``round_id`` to finish (on the Prefect server),
    re-running the watch through ``rewatch`` while none is pending or running (:func:`wait_for_round_retrain`)."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(DEPLOYMENTS["retrain"])
        return wait_for_round_retrain(round_id, lambda: retrain_runs(client, dep.id), timeout,
                                      rewatch=rewatch, rewatch_every=rewatch_every, poll=poll)


def _round_for(settings: Settings, as_of: date) -> str | None:
    from detloop.clients.s3 import S3Store
    from tasks.rounds import load_round, round_id_for

    rid = round_id_for(settings.label_studio.project_title, as_of)
    return rid if load_round(S3Store(settings), settings, rid) is not None else None


def setup_world(settings: Settings, size: DemoSize, weeks: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Publish production frames (with the world's drift events), the golden set and the seed set.

    Production starts ``drift.reference_days`` before :data:`START` (a pre-production period before any drift):
    the first champion takes over on START (:func:`bootstrap_champion`), and its drift reference is those days.
    """
    from detloop.world.publish import publish_golden, publish_seed, publish_world

    pre = settings.drift.reference_days
    first, days = START - timedelta(days=pre), pre + 7 * (weeks + 1)
    rep = publish_world(settings, first, days, size.frames_per_day, corrupt=3, progress=True)
    log(f"world: {getattr(rep, 'written', '?')} frames written over {days} days from {first} (the first champion "
        f"takes over on {START}) (existing skipped: {getattr(rep, 'skipped', '?')})")
    golden = publish_golden(settings, frames=size.golden_frames, progress=True)
    seed = publish_seed(settings, frames=size.seed_frames, progress=True)
    log(f"golden dataset version {golden}, seed dataset version {seed}")
    return {"golden": golden, "seed": seed}


def run_demo(
    settings: Settings,
    weeks: int = 3,
    size: str = "default",
    log: Callable[[str], None] = print,
    timeout: float = 3600.0,
    out_dir: Path | None = None,
) -> dict[str, Any]:
    """Set up and run ``weeks`` simulated weeks; returns timings, one row per round and the PNG path.

    The stack must be up, with its runner (``detloop demo`` brings it up first). The deployments run with
    ``settings``' config file (their ``config`` parameter), so the same served runner can run the demo on
    another world.
    """
    from detloop.clients.s3 import S3Store

    if size not in SIZES:
        raise DetloopError(f"--size must be one of {sorted(SIZES)}, got {size!r}")
    spec = SIZES[size]
    t0 = time.monotonic()
    base: dict[str, Any] = {"config": str(settings.source)} if settings.source else {}
    ids = setup_world(settings, spec, weeks, log)
    bootstrap_s = bootstrap_champion(settings, spec, size, ids["seed"], base, timeout, log)
    setup_s = time.monotonic() - t0

    store = S3Store(settings)
    rows: list[dict[str, Any]] = []
    profile = default_annotators(settings)
    t_loop = time.monotonic()
    for w in range(1, weeks + 1):
        row = run_week(settings, w, spec, base, store, profile, log, timeout)
        if row is None:
            continue
        rows.append(row)
        if len(rows) == 1:
            log(table_header())
        log(table_row(rows[-1]))
    loop_s = time.monotonic() - t_loop
    out_dir = out_dir or settings.data_dir / "demo"
    png = plot_learning_curve(rows, out_dir / "learning_curve.png", seed_frames=spec.seed_frames)
    return {"setup_seconds": setup_s, "bootstrap_seconds": bootstrap_s, "loop_seconds": loop_s, "rounds": rows,
            "seed_frames": spec.seed_frames, "learning_curve": str(png)}


def default_annotators(settings: Settings) -> Any:
    """The simulated annotators of the demo (and the soak): rare skips, misses, jitter and class flips."""
    from detloop.sim.annotator import AnnotatorProfile

    return AnnotatorProfile(p_skip=0.02, p_miss_small=0.05, jitter=0.02, p_flip=0.01, seed=settings.world.seed)


def bootstrap_champion(settings: Settings, spec: DemoSize, size: str, seed_version: str, base: dict[str, Any],
                       timeout: float, log: Callable[[str], None]) -> float:
    """Train the first champion through the bootstrap deployment; returns its seconds (stops without a champion).

    It takes over on :data:`START` (the bootstrap's ``as_of``), so its drift reference is the pre-production days
    before it (:func:`setup_world`), not the simulated world's last days before today's date."""
    _wait_for_deployments(timeout=120)
    boot_params: dict[str, Any] = {**base, "dataset_version": seed_version, "as_of": START.isoformat()}
    if spec.bootstrap_epochs:
        boot_params["epochs"] = spec.bootstrap_epochs
    log(f"bootstrap: training the first champion (deployment {DEPLOYMENTS['bootstrap']}) ...")
    tb = time.monotonic()
    _run_deployment(DEPLOYMENTS["bootstrap"], boot_params, timeout)
    _require_champion(settings, size, spec)
    return time.monotonic() - tb


def label_and_retrain(settings: Settings, round_id: str, base: dict[str, Any], profile: Any,
                      log: Callable[[str], None], timeout: float) -> tuple[dict[str, int], dict[str, Any]]:
    """The simulated annotators label a round in Label Studio, the watch deployment closes it, and the
    event-triggered ``retrain-and-promote`` run finishes; returns the annotators' counts and the round's
    ``result.json``."""
    from detloop.clients.s3 import S3Store
    from detloop.sim.annotator import annotate_pending

    counts = annotate_pending(settings, profile, round_id=round_id)
    log(f"simulated annotators labelled {counts.get('annotated', 0)} and skipped {counts.get('skipped', 0)} "
        f"frames of {round_id}")
    run_watch(base)
    # keep the watch running meanwhile, as its schedule does in production: a round.completed event lost in an
    # outage, or a retrain failed in one, is then re-announced (after 2 x locks.lease_seconds) instead of the wait
    # hanging or giving up
    _wait_for_retrain(round_id, timeout, rewatch=lambda: run_watch(base),
                      rewatch_every=settings.prefect.watch_interval_seconds)
    return counts, S3Store(settings).get_json(settings.s3.data_bucket, f"rounds/{round_id}/result.json")


def run_week(settings: Settings, week: int, spec: DemoSize, base: dict[str, Any], store: Any, profile: Any,
             log: Callable[[str], None], timeout: float) -> dict[str, Any] | None:
    """One simulated week: the weekly round (``as_of`` = START + 7 x week) selected, labelled, retrained; its
    table row, or None when no round opened."""
    as_of = START + timedelta(days=7 * week)
    tw = time.monotonic()
    log(f"week {week}: select-for-labeling as_of={as_of} ...")
    _run_deployment(DEPLOYMENTS["select"], {**base, "as_of": as_of.isoformat(), "budget": spec.budget}, timeout)
    round_id = _round_for(settings, as_of)
    if round_id is None:
        log(f"week {week}: no round opened (empty window or skipped)")
        return None
    counts, result = label_and_retrain(settings, round_id, base, profile, log, timeout)
    return {**week_row(week, as_of, round_id, result, time.monotonic() - tw), "annotated": counts.get("annotated", 0)}


# one row per finished week: (key, header, width, format)
COLUMNS = (("week", "week", 4, "{}"), ("as_of", "as_of", 10, "{}"), ("labels", "labels", 6, "{}"),
           ("boxes", "boxes", 5, "{}"), ("champion_map", "golden before", 13, "{:.3f}"),
           ("challenger_map", "golden after", 12, "{:.3f}"), ("control_champion", "control before", 14, "{:.3f}"),
           ("control_challenger", "control after", 13, "{:.3f}"), ("decision", "decision", 21, "{}"),
           ("version", "version", 7, "{}"), ("minutes", "minutes", 7, "{:.1f}"))


def week_row(week: int, as_of: date, round_id: str, result: dict[str, Any], seconds: float) -> dict[str, Any]:
    """One week's row from its round's ``result.json`` (golden and control-arm mAP50-95 before and after)."""
    control = next((s for s in result.get("slices") or [] if s.get("slice") == "control"), {})
    return {"week": week, "as_of": str(as_of), "round": round_id, "labels": result.get("labelled_frames"),
            "boxes": result.get("labelled_boxes"), "champion_map": result.get("golden_map_champion"),
            "challenger_map": result.get("golden_map_challenger"), "control_champion": control.get("champion_map"),
            "control_challenger": control.get("challenger_map"), "control_frames": control.get("frames"),
            "decision": result.get("outcome"), "version": result.get("version"), "minutes": seconds / 60.0}


def _cell(value: Any, width: int, fmt: str) -> str:
    text = "-" if value is None else (fmt.format(value) if isinstance(value, int | float) else str(value))
    return text.rjust(width) if isinstance(value, int | float) else text.ljust(width)


def table_header() -> str:
    """The header of the demo's per-week table."""
    return "  ".join(h.ljust(w) for _, h, w, _ in COLUMNS)


def table_row(row: dict[str, Any]) -> str:
    """One finished week as a fixed-width line under :func:`table_header` (3 decimals, no dicts)."""
    return "  ".join(_cell(row.get(k), w, f) for k, _, w, f in COLUMNS)


def _wait_for_deployments(timeout: float) -> None:
    """The runner registers the deployments when it starts: wait until they exist."""
    from prefect import get_client

    names = [DEPLOYMENTS[k] for k in ("bootstrap", "select", "watch", "retrain")]
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            missing = []
            for n in names:
                try:
                    client.read_deployment_by_name(n)
                except Exception:
                    missing.append(n)
            if not missing:
                return
            if time.monotonic() > deadline:
                raise DetloopError(f"deployments {missing} not registered; is the runner up? (`detloop stack status`, "
                                   "`detloop stack logs runner`)")
            time.sleep(2)


def plot_learning_curve(rows: list[dict[str, Any]], path: Path, seed_frames: int = 0) -> Path:
    """Golden mAP50-95 against labelled frames (the seed set first), and the blind control arm beside it.

    Left: the champion before each round and the challenger after it, at the cumulative number of labelled
    frames (seed set + rounds); the first point is the bootstrap champion at the seed set's size. Right: the
    same models on each round's control frames (drawn at random from production and never trained on): an
    unbiased estimate of the gain on production, next to the golden set's.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)

    def num(v: Any) -> float:
        return float(v) if v is not None else float("nan")

    xs, cum = [], seed_frames
    for r in rows:
        cum += int(r.get("labels") or 0)
        xs.append(cum)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    if rows:
        ax.plot([seed_frames, *xs], [num(rows[0].get("champion_map")), *[num(r.get("challenger_map")) for r in rows]],
                "o-", label="champion after each round")
        ax.plot(xs, [num(r.get("champion_map")) for r in rows], "x", color="grey", label="champion before the round")
        ax.annotate("seed set", (seed_frames, num(rows[0].get("champion_map"))), fontsize=7,
                    textcoords="offset points", xytext=(4, -10))
        for x, r in zip(xs, rows, strict=True):
            ax.annotate(str(r.get("decision", ""))[:8], (x, num(r.get("challenger_map"))), fontsize=7,
                        textcoords="offset points", xytext=(0, 6), ha="center")
        weeks = [r.get("week") for r in rows]
        w = 0.38
        bx.bar([i - w / 2 for i in range(len(rows))], [num(r.get("control_champion")) for r in rows], w,
               label="champion before", color="grey")
        bx.bar([i + w / 2 for i in range(len(rows))], [num(r.get("control_challenger")) for r in rows], w,
               label="challenger after")
        bx.set_xticks(range(len(rows)), [f"week {k}\n({r.get('control_frames') or 0} fr.)" for k, r in
                                          zip(weeks, rows, strict=True)], fontsize=7)
    ax.set_xlabel("labelled frames (seed set + rounds, cumulative)")
    ax.set_ylabel("golden mAP50-95")
    ax.set_title("golden set", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    bx.set_ylabel("mAP50-95 on the round's control frames")
    bx.set_title("blind control arm (random production frames, never trained on)", fontsize=9)
    bx.grid(alpha=0.3, axis="y")
    bx.legend(loc="lower right", fontsize=7)
    fig.suptitle("detloop demo: learning curve")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
