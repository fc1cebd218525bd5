"""Ablate the fine-tune's learning-rate warm-up on a finished soak's rounds: is the challenger's loss on the golden
set the warm-up's doing?

A finished soak (``benchmarks/soak.py``) keeps every round's dataset version, training spec and registered challenger.
For each ``--round`` this fine-tunes the round's champion on the round's own dataset version with the round's
recorded spec, once per variant:

- ``as-run``: the spec unchanged (it reproduces the run's challenger exactly: the training is deterministic);
- ``seed-1``: the spec with another seed (a second draw of the same training: the noise of the comparison);
- ``bias-lr-0``: ``warmup_bias_lr=0`` (Ultralytics starts the biases' learning rate at 0.1 during warm-up, meant for
  SGD; with AdamW at lr0 0.001 that is 100x the rate, and a 3-epoch fine-tune is mostly warm-up; Ultralytics' own
  ``optimizer=auto`` sets it to 0 when it picks AdamW);
- ``no-warmup``: ``warmup_epochs=0`` (the champion is trained: nothing to warm up);
- ``bias-lr-0-seed-1``: ``bias-lr-0`` with the other seed.

Each challenger is measured like the soak's: the gate against the round's champion on the round's slices (golden mAP
delta), and the true mAP50 per camera on the soak's truth frames of the end of the round's week
(:func:`benchmarks.soak_truth.true_map`, cached), with the champion and the run's own challenger beside.

    python -m benchmarks.soak_finetune --config configs/soak.yaml --round soak-2026-01-26 --round soak-2026-02-16 \\
        --out benchmarks/results/soak_finetune.json

Needs the soak's stack (started if down). Trainings are kept under ``<data_dir>/soak-finetune/<round>/<variant>``
and reused by a re-run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
# variant -> (Ultralytics arguments, training spec fields) over the round's recorded spec
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "as-run": ({}, {}),
    "bias-lr-0": ({"warmup_bias_lr": 0.0}, {}),
    "no-warmup": ({"warmup_epochs": 0.0}, {}),
    "seed-1": ({}, {"seed": 1}),
    "bias-lr-0-seed-1": ({"warmup_bias_lr": 0.0}, {"seed": 1}),
}


def finetune(settings: Any, store: Any, round_id: str, version: str, extra: dict[str, Any], out: Path,
             fields: dict[str, Any] | None = None, data: Path | None = None) -> Path:
    """The round's recorded fine-tune on ``version`` (or on the data.yaml ``data``) with ``extra`` Ultralytics
    arguments and spec ``fields`` replaced; reused when done. Returns the scoring artifact directory."""
    from detloop import datasets as ds
    from tasks.evaluation import ensure_artifact
    from tasks.training import TrainSpec, run_worker

    best, stamp = out / "ul" / "weights" / "best.pt", out / "done.json"
    key = json.dumps({"version": version, "extra": extra, **({"fields": fields} if fields else {}),
                      **({"data": str(data)} if data else {})}, sort_keys=True)
    if not (best.is_file() and stamp.is_file() and stamp.read_text() == key):
        spec = json.loads((settings.data_dir / "training" / f"round-{round_id}" / "ul" / "spec.json").read_text())
        data = data or ds.materialize(store, settings, version, oversample=settings.training.oversample_factor)
        spec.update(data=str(data), out_dir=str(out / "ul"), extra={**(spec.get("extra") or {}), **extra},
                    **(fields or {}))
        out.mkdir(parents=True, exist_ok=True)
        best = Path(run_worker(TrainSpec(**spec), settings.training.timeout_minutes * 60, out / "train.log")["best"])
        stamp.write_text(key)
    return ensure_artifact(best, settings.classes, settings.model.input_size, out / "artifact")


def ablate(settings: Any, round_ids: Sequence[str], variants: Sequence[str], frames: int = 400,
           log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Per round and variant: golden delta against the round's champion and true mAP50 per camera."""
    from benchmarks.soak_carry import RoundTruth, gate
    from detloop.clients.registry import RegistryClient
    from detloop.clients.s3 import S3Store
    from tasks.rounds import load_round

    store, registry = S3Store(settings), RegistryClient(settings)
    rows = []
    for rid in round_ids:
        rec = load_round(store, settings, rid)
        if rec is None or not rec.dataset_version or not rec.model_version:
            raise SystemExit(f"round {rid}: no record, dataset version or champion in this soak's store")
        ctx = RoundTruth(settings, registry, str(rec.model_version), rec.as_of, None, frames)
        champ, truth = ctx.champion, ctx.truth
        row: dict[str, Any] = {"round": rid, "champion": str(rec.model_version), "dataset_version": rec.dataset_version,
                               "truth_day": ctx.day.isoformat(), "champion_true": truth(champ, f"v{rec.model_version}"),
                               "variants": {}, "run": ctx.run_challenger(rid)}
        for name in variants:
            out = settings.data_dir / "soak-finetune" / rid / name
            extra, fields = VARIANTS[name]
            art = finetune(settings, store, rid, rec.dataset_version, extra, out, fields)
            g = gate(settings, store, rid, rec.dataset_version, art, champ, out / "eval")
            delta = g["golden_map"] - g["champion_golden_map"] if g["champion_golden_map"] is not None else None
            row["variants"][name] = {"extra": extra, "fields": fields, "outcome": g["outcome"], "reasons": g["reasons"],
                                     "golden_delta": delta, "true": truth(art, f"ft-{name}-{rid}")}
            log(f"{rid} {name}: golden delta {delta:+.4f} ({g['outcome']}); true {row['variants'][name]['true']}")
        rows.append(row)
    return rows


def mean_true(true: dict[str, float | None]) -> float | None:
    vals = [v for v in true.values() if v is not None]
    return sum(vals) / len(vals) if vals else None


def table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: per round, the champion, the run's challenger and each variant (golden delta, mean true mAP50)."""
    def f(x: Any, signed: bool = False) -> str:
        return "-" if x is None else (f"{x:+.4f}" if signed else f"{x:.3f}")

    lines = ["| round | model | golden mAP50-95 delta vs champion | gate | true mAP50, mean of cameras | per camera |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['round']} | champion v{r['champion']} | - | - | {f(mean_true(r['champion_true']))} | "
                     + ", ".join(f"{c} {f(v)}" for c, v in r["champion_true"].items()) + " |")
        if r.get("run"):
            lines.append(f"| | run's challenger v{r['run']['version']} | {f(r['run']['golden_delta'], True)} | "
                         f"{r['run']['outcome']} | {f(mean_true(r['run']['true']))} | "
                         + ", ".join(f"{c} {f(v)}" for c, v in r["run"]["true"].items()) + " |")
        for name, v in r["variants"].items():
            lines.append(f"| | {name} | {f(v['golden_delta'], True)} | {v['outcome']} | {f(mean_true(v['true']))} | "
                         + ", ".join(f"{c} {f(x)}" for c, x in v["true"].items()) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    import argparse

    from benchmarks.soak_carry import soak_stack, write_rows

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", "-c", default="configs/soak.yaml")
    ap.add_argument("--round", dest="rounds", action="append", required=True, help="round id (repeatable)")
    ap.add_argument("--variant", dest="variants", action="append", choices=sorted(VARIANTS),
                    help="variants (repeatable; default: all)")
    ap.add_argument("--truth-frames", type=int, default=400)
    ap.add_argument("--out", type=Path, default=RESULTS / "soak_finetune.json")
    a = ap.parse_args(argv)
    rows = ablate(soak_stack(a.config), a.rounds, a.variants or list(VARIANTS), a.truth_frames)
    return write_rows(a.out, "soak_finetune", rows, table(rows))


if __name__ == "__main__":
    main()
