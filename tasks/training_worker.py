"""Training subprocess: ``python -m tasks.training_worker SPEC.json``.

Runs one Ultralytics training described by a JSON spec (:class:`tasks.training.TrainSpec`) and writes
``result.json`` into the run directory. It is a separate process so that a crash cannot take the flow
down and a timeout can kill it (and its dataloader workers) as a process group. Ultralytics' own
MLflow / hub callbacks are switched off; the parent logs to MLflow. If the parent dies, a watchdog
thread kills the worker's process group.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from detloop.localfs import write_text


def run(spec: dict) -> dict:
    """Train per ``spec``; return the result dict (also written to ``<out_dir>/result.json``)."""
    os.environ["YOLO_CONFIG_DIR"] = spec["yolo_config_dir"]
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ["MLFLOW_TRACKING_URI"] = ""  # Ultralytics' callback must never log
    threads = int(spec["threads"])
    import torch

    torch.set_num_threads(threads)
    from ultralytics import YOLO
    from ultralytics import settings as yolo_settings
    from ultralytics.utils import torch_utils

    torch_utils.NUM_THREADS = threads  # Ultralytics caps torch at cpu_count - 1
    yolo_settings.update({"sync": False, "mlflow": False, "wandb": False, "tensorboard": False, "comet": False,
                          "clearml": False, "dvc": False, "raytune": False, "vscode_msg": False,
                          "openvino_msg": False, "runs_dir": str(Path(spec["out_dir"]).parent)})
    out_dir = Path(spec["out_dir"])
    model = YOLO(spec["model"], task="detect")
    trainer = None  # Ultralytics' own DetectionTrainer (plain BCE) unless a focal / varifocal loss is configured
    cls_loss = spec.get("cls_loss") or {}
    if cls_loss.get("kind", "bce") != "bce":
        from tasks.cls_loss import trainer_for

        trainer = trainer_for(cls_loss["kind"], cls_loss["gamma"], cls_loss.get("alpha"))
    t0 = time.time()
    model.train(
        data=spec["data"],
        epochs=spec["epochs"],
        imgsz=spec["imgsz"],
        batch=spec["batch"],
        nbs=spec["nbs"],
        optimizer=spec["optimizer"],
        lr0=spec["lr0"],
        workers=spec["workers"],
        device=spec["device"],
        seed=spec["seed"],
        deterministic=False,
        pretrained=spec["pretrained"],
        amp=False,
        plots=False,
        project=str(out_dir.parent),
        name=out_dir.name,
        exist_ok=True,
        verbose=False,
        val=True,
        patience=spec.get("patience", 100),
        trainer=trainer,
        **spec.get("extra", {}),
    )
    seconds = time.time() - t0
    save_dir = Path(model.trainer.save_dir)
    yaml_cfg = getattr(model.model, "yaml", None) or {}
    result = {
        "arch": str(yaml_cfg.get("yaml_file") or spec["model"]).rsplit("/", 1)[-1],
        "save_dir": str(save_dir),
        "best": str(save_dir / "weights" / "best.pt"),
        "last": str(save_dir / "weights" / "last.pt"),
        "results_csv": str(save_dir / "results.csv"),
        "train_seconds": seconds,
        "threads": threads,
        "trainer": type(model.trainer).__name__,  # e.g. FocalDetectionTrainer when training.cls_loss is not bce
    }
    write_text(out_dir / "result.json", json.dumps(result, indent=2))  # whole or absent: the parent reads it
    return result


def _exit_with_parent(interval_s: float = 5.0) -> None:
    """Kill our process group when the parent dies (we run in our own session, so nothing else would)."""
    import signal
    import threading

    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent:
                os.killpg(os.getpgid(0), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True, name="parent-watchdog").start()


def main() -> None:
    _exit_with_parent()
    spec = json.loads(Path(sys.argv[1]).read_text())
    if os.environ.get("DETLOOP_TEST_CRASH_TRAINING") == "1":  # fault injection for tests
        raise RuntimeError("injected training crash")
    run(spec)


if __name__ == "__main__":
    main()
