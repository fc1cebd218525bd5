"""Time per round at demo scale (train, then evaluate -> register -> gate -> promote) and the bootstrap model's
golden mAP.

Runs against the TEST stack (``configs/test.yaml``, never the demo stack) with the DEMO training and
model settings of ``configs/local.yaml`` (bootstrap / fine-tune epochs, batch, nbs, input size):

1. publish the world's seed set (~150 frames) and golden set (200 frames) as dataset versions;
2. bootstrap: train ``model.arch`` from scratch for ``bootstrap_epochs`` on the seed version, then the
   loop's own post-training subflow (:func:`flows.post_training.evaluate_and_promote`: export, evaluate on
   the golden slices, register, gate, promote);
3. one fine-tune round from the champion (``finetune_epochs``, hard frames oversampled), then the same
   subflow (the champion re-evaluated on the same slices, latency measured interleaved).

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
    from detloop.clients import Clients
    from detloop.offline import apply_offline_env
    from detloop.settings import load_settings
    from detloop.world.publish import publish_golden, publish_seed
    from flows.post_training import evaluate_and_promote
    from tasks import registry as R
    from tasks.training import train

    s = load_settings(args.config)
    demo = load_settings(args.demo_config, env={})
    tag = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    # the demo's training, model, gate and evaluation settings on this stack, under a model name of its own
    overrides: dict[str, Any] = {
        "training": demo.training.model_dump(mode="json"), "model": demo.model.model_dump(mode="json"),
        "gate": demo.gate.model_dump(mode="json"), "evaluation": demo.evaluation.model_dump(mode="json"),
        "mlflow": {"experiment": f"bench-round-{tag}", "model_name": f"bench-round-{tag}"},
        "data_dir": str(s.data_dir),
    }
    if args.bootstrap_epochs:
        overrides["training"]["bootstrap_epochs"] = args.bootstrap_epochs
    if args.finetune_epochs:
        overrides["training"]["finetune_epochs"] = args.finetune_epochs
    s = load_settings(args.config, overrides=overrides)
    apply_offline_env(s)
    os.environ.setdefault("PREFECT_API_URL", s.prefect.api_url)
    clients = Clients.from_settings(s)
    store = clients.store
    t = Timer()
    load0 = os.getloadavg()

    with t("publish_seed_and_golden"):
        seed_vid = publish_seed(s, frames=args.seed_frames, threads=4)
        golden_vid = publish_golden(s, frames=args.golden_frames, threads=4)
    with t("materialize_seed"):
        seed_yaml = ds.materialize(store, s, seed_vid, splits=("train", "val"))

    # ---- bootstrap: train, then the post-training subflow (evaluate -> register -> gate -> promote) -------
    with t("bootstrap_train"):
        boot = train(seed_yaml, s, clients.registry, None, f"bench-boot-{tag}", {"benchmark": "round_timing"},
                     dataset_version=seed_vid, store=store)
    with t("bootstrap_evaluate_register_gate_promote"):
        post1 = evaluate_and_promote(boot.run_id, str(boot.weights), seed_vid, args.config, overrides,
                                     golden=golden_vid, actor="benchmark")
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
            "golden": _summary(post1.challenger_report), "gate": post1.outcome, "version": post1.version,
        },
    }
    # ---- one fine-tune round -------------------------------------------------------------------
    if not args.skip_finetune:
        champion = R.fetch_champion(s, clients.registry)
        init = champion.weights if champion else boot.weights
        with t("round_materialize"):
            ft_yaml = ds.materialize(store, s, seed_vid, splits=("train", "val"),
                                     oversample=s.training.oversample_factor)
        with t("round_train"):
            ft = train(ft_yaml, s, clients.registry, init, f"bench-ft-{tag}", {"benchmark": "round_timing"},
                       dataset_version=seed_vid, parent_version=post1.version, store=store)
        with t("round_evaluate_register_gate_promote"):
            post2 = evaluate_and_promote(ft.run_id, str(ft.weights), seed_vid, args.config, overrides,
                                         golden=golden_vid, actor="benchmark")
        ch2, cp2 = post2.challenger_report, post2.champion_report
        result["finetune"] = {
            "epochs": ft.epochs, "train_seconds": ft.train_seconds,
            "golden": _summary(ch2), "champion_golden": _summary(cp2) if cp2 else None,
            "latency_ratio": (ch2.latency_ms / cp2.latency_ms) if cp2 and cp2.latency_ms else None,
            "gate": post2.outcome, "reasons": post2.decision.reasons if post2.decision else [],
            "version": post2.version,
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
