"""Time per round at demo scale (train, export, evaluate, register) and the bootstrap model's golden mAP.

Runs against the TEST stack (``configs/test.yaml``, never the demo stack) with the DEMO training and
model settings of ``configs/local.yaml`` (bootstrap / fine-tune epochs, batch, nbs, input size):

1. publish the world's seed set (~150 frames) and golden set (200 frames) as dataset versions;
2. bootstrap: train ``model.arch`` from scratch for ``bootstrap_epochs`` on the seed version;
   export the scoring artifact; evaluate on the golden slices; register; gate; promote;
3. one fine-tune round from the champion (``finetune_epochs``, hard frames oversampled) with the
   champion re-evaluated on the same slices and latency measured interleaved; register; gate.

Run::

    .venv/bin/python -m benchmarks.round_timing [--bootstrap-epochs 60] [--finetune-epochs 10]

Writes ``benchmarks/results/round_timing.json``. MLflow names are unique per run (``bench-round-<ts>``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "results" / "round_timing.json"


class Timer:
    def __init__(self) -> None:
        self.phases: dict[str, float] = {}

    def __call__(self, name: str) -> Any:
        timer = self

        class _Ctx:
            def __enter__(self) -> None:
                self.t0 = time.perf_counter()

            def __exit__(self, *exc: object) -> None:
                timer.phases[name] = round(time.perf_counter() - self.t0, 2)
                print(f"[bench] {name}: {timer.phases[name]:.1f}s", flush=True)

        return _Ctx()


def _summary(report: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"latency_ms": report.latency_ms, "slices": {}}
    for name, sm in report.slices.items():
        out["slices"][name] = {
            "frames": sm.n_images,
            "instances": sm.overall.n_instances,
            "map50_95": sm.overall.map,
            "map50": sm.overall.map50,
            "ar": sm.overall.ar,
            "per_class_map50_95": {k: m.map for k, m in sm.per_class.items()},
            "per_size_map50_95": {k: m.map for k, m in sm.per_size.items()},
            "per_camera_map50_95": {k: m.map for k, m in sm.per_camera.items()},
        }
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/test.yaml", help="Stack to run against (the test stack).")
    ap.add_argument("--demo-config", default="configs/local.yaml", help="Where demo training settings come from.")
    ap.add_argument("--bootstrap-epochs", type=int, default=None)
    ap.add_argument("--finetune-epochs", type=int, default=None)
    ap.add_argument("--seed-frames", type=int, default=None, help="Default: world seed_set.frames.")
    ap.add_argument("--golden-frames", type=int, default=None, help="Default: world golden_set.frames.")
    ap.add_argument("--skip-finetune", action="store_true")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)

    from detloop import datasets as ds
    from detloop.clients.s3 import S3Store
    from detloop.offline import apply_offline_env
    from detloop.settings import load_settings
    from detloop.world.publish import publish_golden, publish_seed
    from tasks import registry as R
    from tasks.evaluation import evaluate_pair, gate_scores
    from tasks.export import export_scoring_artifact
    from tasks.promotion import GatePolicy, decide
    from tasks.slices import build_slices
    from tasks.training import train

    s = load_settings(args.config)
    demo = load_settings(args.demo_config, env={})
    s.training = demo.training.model_copy(deep=True)
    s.model = demo.model.model_copy(deep=True)
    s.gate = demo.gate.model_copy(deep=True)
    s.evaluation = demo.evaluation.model_copy(deep=True)
    if args.bootstrap_epochs:
        s.training.bootstrap_epochs = args.bootstrap_epochs
    if args.finetune_epochs:
        s.training.finetune_epochs = args.finetune_epochs
    tag = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    s.mlflow.experiment = f"bench-round-{tag}"
    s.mlflow.model_name = f"bench-round-{tag}"
    apply_offline_env(s)
    store = S3Store(s)
    t = Timer()
    load0 = os.getloadavg()
    work = s.data_dir / "bench" / f"round-{tag}"
    log_key = f"bench-promotions/{s.mlflow.model_name}/log.jsonl"

    with t("publish_seed_and_golden"):
        seed_vid = publish_seed(s, frames=args.seed_frames, threads=4)
        golden_vid = publish_golden(s, frames=args.golden_frames, threads=4)
    with t("materialize_seed"):
        seed_yaml = ds.materialize(store, s, seed_vid, splits=("train", "val"))
    with t("build_slices"):
        slices = build_slices(store, s, golden_vid)

    # ---- bootstrap ----------------------------------------------------------------------------
    with t("bootstrap_train"):
        boot = train(seed_yaml, s, None, f"bench-boot-{tag}", {"benchmark": "round_timing"},
                     dataset_version=seed_vid)
    with t("bootstrap_export"):
        art = export_scoring_artifact(boot.weights, work / "boot-art", s.classes, s.model.input_size)
    with t("bootstrap_evaluate"):
        ch, _ = evaluate_pair(art, None, slices, s, work / "eval-boot")
    with t("bootstrap_register_gate_promote"):
        v1 = R.register_challenger(s, boot.run_id, boot.weights, ch, dataset_version=seed_vid, scoring_dir=art)
        d1 = decide(gate_scores(ch), None, GatePolicy.from_settings(s.gate))
        R.record_gate(s, v1, d1, run_id=boot.run_id)
        if d1.passed:
            R.promote(s, v1, d1, actor="benchmark", log_key=log_key)
    result: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "loadavg_start": load0},
        "stack_config": args.config,
        "seed_version": seed_vid, "golden_version": golden_vid,
        "training": s.training.model_dump(), "input_size": s.model.input_size,
        "bootstrap": {
            "epochs": boot.epochs, "train_seconds": boot.train_seconds,
            "val_map50_95_ultralytics": boot.metrics.get("metrics/mAP50-95(B)"),
            "val_map50_ultralytics": boot.metrics.get("metrics/mAP50(B)"),
            "golden": _summary(ch), "gate": d1.outcome, "version": v1,
        },
    }
    # ---- one fine-tune round -------------------------------------------------------------------
    if not args.skip_finetune:
        champ_dir = R.load_champion(s, work / "champ") if d1.passed else None
        init = champ_dir / "weights" / "best.pt" if champ_dir else boot.weights
        with t("round_materialize"):
            ft_yaml = ds.materialize(store, s, seed_vid, splits=("train", "val"),
                                     oversample=s.training.oversample_factor)
        with t("round_train"):
            ft = train(ft_yaml, s, init, f"bench-ft-{tag}", {"benchmark": "round_timing"},
                       dataset_version=seed_vid, parent_version=v1)
        with t("round_export"):
            ft_art = export_scoring_artifact(ft.weights, work / "ft-art", s.classes, s.model.input_size)
        with t("round_evaluate_pair"):
            ch2, cp2 = evaluate_pair(ft_art, (champ_dir / "scoring") if champ_dir else art, slices, s,
                                     work / "eval-ft")
        with t("round_register_gate"):
            v2 = R.register_challenger(s, ft.run_id, ft.weights, ch2, dataset_version=seed_vid,
                                       parent_version=v1, scoring_dir=ft_art)
            d2 = decide(gate_scores(ch2), gate_scores(cp2), GatePolicy.from_settings(s.gate))
            R.record_gate(s, v2, d2, run_id=ft.run_id, champion_version=v1)
        result["finetune"] = {
            "epochs": ft.epochs, "train_seconds": ft.train_seconds,
            "golden": _summary(ch2), "champion_golden": _summary(cp2) if cp2 else None,
            "latency_ratio": (ch2.latency_ms / cp2.latency_ms) if cp2 and cp2.latency_ms else None,
            "gate": d2.outcome, "reasons": d2.reasons, "version": v2,
        }
    result["phases_seconds"] = t.phases
    boot_round = sum(v for k, v in t.phases.items() if k.startswith("bootstrap_"))
    result["bootstrap_round_seconds"] = round(boot_round, 1)
    if "round_train" in t.phases:
        result["finetune_round_seconds"] = round(sum(v for k, v in t.phases.items() if k.startswith("round_")), 1)
    result["host"]["loadavg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps({k: result[k] for k in ("phases_seconds", "bootstrap_round_seconds")}, indent=2))
    print(f"golden mAP50-95 of the bootstrap model: {result['bootstrap']['golden']['slices']['golden']['map50_95']}")
    return result


if __name__ == "__main__":
    main()
