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


def replay(settings: Any, round_ids: Sequence[str], cameras: Sequence[str] | None = None, frames: int = 400,
           log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Per round: the run's challenger and the carried replay, on truth and at the gate."""
    from benchmarks.soak_truth import golden_delta, true_map, week_end, week_of
    from detloop.clients.registry import RegistryClient
    from detloop.clients.s3 import S3Store
    from detloop.world.config import load_world_config
    from flows.demo import START
    from tasks.registry import load_champion
    from tasks.rounds import version_of_round

    store, registry = S3Store(settings), RegistryClient(settings)
    world = load_world_config(settings.world_config_path())
    cache = settings.data_dir / "soak-truth"
    rows = []
    for rid in round_ids:
        vid, rep = carried_version(store, settings, rid)
        log(f"{rid}: {rep['carried_entries']} frames of {len(rep['carried_rounds'])} earlier rounds carried "
            f"({rep['as_run_counts']} -> {rep['counts']})")
        out = settings.data_dir / "soak-carry" / rid
        art = retrain(settings, store, rid, vid, out)
        champ = load_champion(settings, registry, version=str(rep["champion"]))
        ran = version_of_round(registry, rid)
        ran_dir = load_champion(settings, registry, version=str(ran.version)) if ran is not None else None
        day = week_end(START, week_of(START, date.fromisoformat(str(rep["as_of"]))))
        cams = [c for c in (cameras or world.active_cameras(day)) if c in world.active_cameras(day)]

        def truth(scoring: Path, label: str, cams: list[str] = cams, day: date = day) -> dict[str, float | None]:
            return {c: true_map(world, list(settings.classes), c, day, frames, scoring, settings,
                                settings.world.seed, cache, label=label)["map50"] for c in cams}

        row = {"round": rid, **rep, "version": vid, "truth_day": day.isoformat(),
               "champion_true": truth(Path(champ) / "scoring", f"v{rep['champion']}"),
               "carried_true": truth(art, f"carry-{rid}"),
               "carried_gate": gate(settings, store, rid, vid, art, Path(champ) / "scoring", out / "eval")}
        if ran is not None and ran_dir is not None:
            tags = getattr(ran, "tags", None) or {}
            row["as_run"] = {"version": str(ran.version), "outcome": tags.get("gate.outcome"),
                             "golden_map": float(tags["detloop.golden_map"]) if tags.get("detloop.golden_map")
                             else None, "golden_delta": golden_delta(tags.get("gate.checks")),
                             "true": truth(Path(ran_dir) / "scoring", f"v{ran.version}")}
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
    import os

    from benchmarks._common import machine_info, utc_now, write_result
    from detloop.offline import apply_offline_env
    from detloop.settings import load_settings
    from infra.stack import client_env, ensure_up

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", "-c", default="configs/soak.yaml")
    ap.add_argument("--round", dest="rounds", action="append", required=True, help="round id (repeatable)")
    ap.add_argument("--camera", dest="cameras", action="append", help="cameras scored (default: all active)")
    ap.add_argument("--truth-frames", type=int, default=400)
    ap.add_argument("--out", type=Path, default=RESULTS / "soak_carry.json")
    a = ap.parse_args(argv)
    settings = load_settings(a.config)
    apply_offline_env(settings)
    ensure_up(settings, print)
    os.environ.update(client_env(settings))
    rows = replay(settings, a.rounds, a.cameras, a.truth_frames)
    write_result(a.out, {"bench": "soak_carry", "rows": rows, "table": table(rows), "when": utc_now(),
                         "machine": machine_info()})
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
