"""Replay a soak round's retrain with the labels of earlier rounds carried, and compare it with the run's.

A finished soak (``benchmarks/soak.py``) keeps its stack's data: every round's record, dataset version, training
spec and registered challenger. For each ``--round`` this rebuilds the round's dataset version as
:func:`tasks.round_version.build_round_version` builds it now (the champion's data + the round + the labelled frames
of earlier rounds the champion's data lacks, :func:`tasks.round_version.carried_entries`; only rounds created
before it), fine-tunes the same champion with the round's recorded training spec (same epochs, seed, data layout),
and measures both challengers the same way: the true mAP50 per camera on the soak's truth frames of the end of the
round's week (:func:`benchmarks.soak_truth.true_map`, cached), and the gate against the round's champion on the same
slices (golden, crowded, control) as the run's retrain.

    python -m benchmarks.soak_carry --config configs/soak.yaml --round soak-2026-02-02 --round soak-2026-02-16 \\
        --out benchmarks/results/soak8_carry.json

Needs the soak's stack (started if down). A round's replay is kept under ``<data_dir>/soak-carry/<round>`` and
reused by a re-run (the fine-tune is not repeated).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def carried_version(store: Any, settings: Any, round_id: str) -> tuple[str, dict[str, Any]]:
    """Write the round's dataset version with the labels carried (an extra immutable version; nothing else is
    touched). Returns (version id, report)."""
    from detloop import datasets as ds
    from tasks.round_version import carried_for, retire_after, retire_controls
    from tasks.rounds import load_round

    rec = load_round(store, settings, round_id)
    if rec is None or not rec.dataset_version:
        raise SystemExit(f"round {round_id}: no record or no dataset version in this soak's store")
    mine = ds.load_manifest(store, settings, rec.dataset_version)
    parent = ds.load_manifest(store, settings, mine.parent) if mine.parent else None
    own = [e for e in mine.entries if e.source == f"round:{round_id}"]
    carried, rounds = carried_for(store, settings, round_id, parent, mine.parent, created_before=rec.created_at)
    m = ds.build_version("train", settings.classes, [*carried, *own], parent=parent, parent_id=mine.parent,
                         rounds=[round_id, *rounds])
    moved, _ = retire_controls(m.entries, f"round:{round_id}", retire_after(settings), settings.rounds.val_share)
    m = ds.DatasetManifest(kind=m.kind, classes=m.classes, entries=moved, parent=m.parent, rounds=m.rounds)
    vid = ds.save_manifest(store, settings, m, note=f"soak replay: round {round_id} with earlier rounds' labels")
    return vid, {"as_run_version": rec.dataset_version, "as_run_counts": mine.counts(), "carried_rounds": rounds,
                 "carried_entries": len(carried), "counts": m.counts(), "champion": rec.model_version,
                 "as_of": rec.as_of}


def retrain(settings: Any, store: Any, round_id: str, version: str, out: Path) -> Path:
    """The round's recorded fine-tune (``<data_dir>/training/round-<id>/ul/spec.json``) on ``version``; reused
    when its weights exist. Returns the scoring artifact directory."""
    from detloop import datasets as ds
    from tasks.evaluation import ensure_artifact
    from tasks.training import TrainSpec, run_worker

    best, stamp = out / "ul" / "weights" / "best.pt", out / "version.txt"
    if not (best.is_file() and stamp.is_file() and stamp.read_text().strip() == version):
        spec = json.loads((settings.data_dir / "training" / f"round-{round_id}" / "ul" / "spec.json").read_text())
        data = ds.materialize(store, settings, version, oversample=settings.training.oversample_factor)
        spec.update(data=str(data), out_dir=str(out / "ul"))
        best = Path(run_worker(TrainSpec(**spec), settings.training.timeout_minutes * 60, out / "train.log")["best"])
        stamp.write_text(version)
    return ensure_artifact(best, settings.classes, settings.model.input_size, out / "artifact")


def gate(settings: Any, store: Any, round_id: str, version: str, challenger: Path, champion: Path,
         work: Path) -> dict[str, Any]:
    """The gate on ``challenger`` against ``champion``, on the round's slices built from ``version``."""
    from detloop import datasets as ds
    from tasks.evaluation import evaluate_pair, gate_scores
    from tasks.promotion import decide
    from tasks.slices import build_slices

    golden = settings.evaluation.golden_version or ds.latest_version(store, settings, "golden")
    slices = build_slices(store, settings, golden, version, round_id)
    ch, cp = evaluate_pair(challenger, champion, slices, settings, work_dir=work)
    d = decide(gate_scores(ch, metric=settings.gate.metric), gate_scores(cp, metric=settings.gate.metric),
               settings.gate)
    g = "golden"
    return {"outcome": d.outcome, "reasons": d.reasons, "golden_map": ch.slices[g].overall.map,
            "champion_golden_map": cp.slices[g].overall.map if cp is not None else None}


class RoundTruth:
    """One soak round's measuring context: its champion's scoring directory, the end of its week, the cameras active
    then, and :meth:`truth`: a model's true mAP50 per camera on the soak's truth frames of that day (cached)."""

    def __init__(self, settings: Any, registry: Any, champion: str, as_of: str, cameras: Sequence[str] | None = None,
                 frames: int = 400) -> None:
        from benchmarks.soak_truth import week_end, week_of
        from detloop.world.config import load_world_config
        from flows.demo import START
        from tasks.registry import load_champion

        self.settings, self.registry, self.frames = settings, registry, frames
        self.world = load_world_config(settings.world_config_path())
        self.champion = Path(load_champion(settings, registry, version=str(champion))) / "scoring"
        self.day = week_end(START, week_of(START, date.fromisoformat(str(as_of))))
        active = self.world.active_cameras(self.day)
        self.cameras = [c for c in (cameras or active) if c in active]

    def truth(self, scoring: Path, label: str) -> dict[str, float | None]:
        from benchmarks.soak_truth import true_map

        s = self.settings
        return {c: true_map(self.world, list(s.classes), c, self.day, self.frames, scoring, s, s.world.seed,
                            s.data_dir / "soak-truth", label=label)["map50"] for c in self.cameras}

    def run_challenger(self, round_id: str) -> dict[str, Any] | None:
        """The challenger the run registered for ``round_id``: its gate outcome, golden mAP and delta, and truth."""
        from benchmarks.soak_truth import golden_delta
        from tasks.registry import load_champion
        from tasks.rounds import version_of_round

        ran = version_of_round(self.registry, round_id)
        if ran is None:
            return None
        tags = getattr(ran, "tags", None) or {}
        scoring = Path(load_champion(self.settings, self.registry, version=str(ran.version))) / "scoring"
        return {"version": str(ran.version), "outcome": tags.get("gate.outcome"),
                "golden_map": float(tags["detloop.golden_map"]) if tags.get("detloop.golden_map") else None,
                "golden_delta": golden_delta(tags.get("gate.checks")), "true": self.truth(scoring, f"v{ran.version}")}


def replay(settings: Any, round_ids: Sequence[str], cameras: Sequence[str] | None = None, frames: int = 400,
           log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Per round: the run's challenger and the carried replay, on truth and at the gate."""
    from detloop.clients.registry import RegistryClient
    from detloop.clients.s3 import S3Store

    store, registry = S3Store(settings), RegistryClient(settings)
    rows = []
    for rid in round_ids:
        vid, rep = carried_version(store, settings, rid)
        log(f"{rid}: {rep['carried_entries']} frames of {len(rep['carried_rounds'])} earlier rounds carried "
            f"({rep['as_run_counts']} -> {rep['counts']})")
        out = settings.data_dir / "soak-carry" / rid
        art = retrain(settings, store, rid, vid, out)
        ctx = RoundTruth(settings, registry, str(rep["champion"]), str(rep["as_of"]), cameras, frames)
        row = {"round": rid, **rep, "version": vid, "truth_day": ctx.day.isoformat(),
               "champion_true": ctx.truth(ctx.champion, f"v{rep['champion']}"),
               "carried_true": ctx.truth(art, f"carry-{rid}"),
               "carried_gate": gate(settings, store, rid, vid, art, ctx.champion, out / "eval")}
        ran = ctx.run_challenger(rid)
        if ran is not None:
            row["as_run"] = ran
        log(f"{rid}: as run {row.get('as_run', {}).get('true')} ({row.get('as_run', {}).get('outcome')}); "
            f"carried {row['carried_true']} ({row['carried_gate']['outcome']})")
        rows.append(row)
    return rows


def table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: per round and camera, the champion, the run's challenger and the carried replay."""
    def f(x: Any) -> str:
        return "-" if x is None else f"{x:.3f}"

    lines = ["| round | camera | champion | as run (gate) | carried (gate) | frames carried |", "|---|---|---|---|---|---|"]
    for r in rows:
        ran = r.get("as_run") or {}
        for cam, v in r["carried_true"].items():
            lines.append(f"| {r['round']} | {cam} | {f(r['champion_true'].get(cam))} | "
                         f"{f((ran.get('true') or {}).get(cam))} ({ran.get('outcome', '-')}) | {f(v)} "
                         f"({r['carried_gate']['outcome']}) | {r['carried_entries']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", "-c", default="configs/soak.yaml")
    ap.add_argument("--round", dest="rounds", action="append", required=True, help="round id (repeatable)")
    ap.add_argument("--camera", dest="cameras", action="append", help="cameras scored (default: all active)")
    ap.add_argument("--truth-frames", type=int, default=400)
    ap.add_argument("--out", type=Path, default=RESULTS / "soak_carry.json")
    a = ap.parse_args(argv)
    rows = replay(soak_stack(a.config), a.rounds, a.cameras, a.truth_frames)
    return write_rows(a.out, "soak_carry", rows, table(rows))


def soak_stack(config: str) -> Any:
    """The soak's settings, its stack up (started if down) and this process's clients pointed at it."""
    import os

    from detloop.offline import apply_offline_env
    from detloop.settings import load_settings
    from infra.stack import client_env, ensure_up

    settings = load_settings(config)
    apply_offline_env(settings)
    ensure_up(settings, print)
    os.environ.update(client_env(settings))
    return settings


def write_rows(out: Path, bench: str, rows: list[dict[str, Any]], markdown: str) -> list[dict[str, Any]]:
    """Write the result JSON (rows, table, when, machine) and print the table."""
    from benchmarks._common import machine_info, utc_now, write_result

    write_result(out, {"bench": bench, "rows": rows, "table": markdown, "when": utc_now(), "machine": machine_info()})
    print(markdown)
    return rows


if __name__ == "__main__":
    main()
