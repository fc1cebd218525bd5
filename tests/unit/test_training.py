"""Pure parts of training and the registry client: class-list checks, size refusals, oversampling,
input hash, results.csv parsing, and how MLflow failures are classified."""

from __future__ import annotations

from pathlib import Path

import pytest

from detloop.errors import DataError
from detloop.synth_shapes import write_yolo_dataset
from tasks.training import (
    _train_locked,
    bounded_epochs,
    check_dataset,
    class_difference,
    input_hash,
    oversample_hard,
    read_results_csv,
)

CLASSES = ["disc", "square", "triangle", "ring", "star"]


def test_class_difference_lists_missing_extra_and_order() -> None:
    assert class_difference(CLASSES, CLASSES) is None
    assert class_difference(["disc", "square"], ["disc", "square", "star"]) == "missing ['star']"
    assert class_difference(["disc", "hex"], ["disc"]) == "unexpected ['hex']"
    msg = class_difference(["square", "disc"], ["disc", "square"])
    assert msg is not None and "order differs" in msg and "square: 0 (config 1)" in msg


def test_check_dataset_counts_and_refusals(tmp_path: Path) -> None:
    y = write_yolo_dataset(tmp_path / "ok", CLASSES, n_train=5, n_val=2, size=64, r_range=(5, 12))
    counts = check_dataset(y, CLASSES, 4)
    assert counts["train"] == 5 and counts["val"] == 2 and counts["train_boxes"] >= 5
    with pytest.raises(DataError, match=r"5 train frames \(need >= 6\)"):
        check_dataset(y, CLASSES, 6)
    with pytest.raises(DataError, match=r"missing \['extra'\]; unexpected \['star'\]"):
        check_dataset(y, [*CLASSES[:-1], "extra"], 1)
    with pytest.raises(DataError, match="dataset file not found"):
        check_dataset(tmp_path / "nope.yaml", CLASSES, 1)


def test_oversample_repeats_hard_frames_as_linked_copies(tmp_path: Path) -> None:
    y = write_yolo_dataset(tmp_path / "ds", CLASSES, n_train=4, n_val=1, size=64, r_range=(5, 12))
    hard = ["train_00001", "train_00003"]
    new = oversample_hard(y, hard, 3, tmp_path / "over")
    lines = (tmp_path / "over" / "train.txt").read_text().split()
    assert len(lines) == 4 + 2 * 2
    assert sum("train_00001" in line for line in lines) == 3
    for line in lines:
        p = Path(line)
        assert p.is_file()
        lbl = Path(str(p).replace("/images/", "/labels/")).with_suffix(".txt")
        assert lbl.is_file() and lbl.read_text().strip()
    rep = tmp_path / "over" / "images" / "train_rep" / "train_00001__rep1.png"
    assert rep.stat().st_ino == (tmp_path / "ds" / "images" / "train" / "train_00001.png").stat().st_ino
    assert check_dataset(new, CLASSES, 1)["train"] == 8
    assert oversample_hard(y, hard, 1, tmp_path / "one").parent.joinpath("train.txt").read_text().count("\n") == 4


def test_bounded_epochs_keeps_whole_epochs_under_the_bound() -> None:
    assert bounded_epochs(10, 262, 1500) == 5          # 1,310 images, not 2,620
    assert bounded_epochs(10, 431, 1500) == 3
    assert bounded_epochs(10, 150, 1500) == 10         # 1,500 fits: the configured epochs
    assert bounded_epochs(10, 151, 1500) == 9
    assert bounded_epochs(10, 4000, 1500) == 1         # never below one epoch
    assert bounded_epochs(10, 4000, None) == 10        # off


class _ReusingRegistry:
    """A registry holding one finished run for any input hash (training is then skipped)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.queries = tmp, []

    def find_runs(self, query: str) -> list[object]:
        from types import SimpleNamespace

        self.queries.append(query)
        data = SimpleNamespace(metrics={}, tags={})
        return [SimpleNamespace(info=SimpleNamespace(run_id="r1"), data=data)] if "FINISHED" in query else []

    def download_run_artifact(self, run_id: str, path: str, dst: Path) -> Path:
        return self.tmp / "best.pt"


def test_a_finetune_trains_at_most_finetune_max_images_unless_epochs_are_given(tmp_path: Path) -> None:
    from detloop.settings import load_settings

    y = write_yolo_dataset(tmp_path / "ds", CLASSES, n_train=6, n_val=1, size=64, r_range=(5, 12))
    (tmp_path / "w.pt").write_bytes(b"weights")
    counts = check_dataset(y, CLASSES, 1)

    def epochs_of(max_images: int | None, epochs: int | None = None, init: Path | None = tmp_path / "w.pt") -> int:
        s = load_settings("configs/test.yaml", env={}, overrides={"data_dir": str(tmp_path / "data"), "training": {
            "finetune_epochs": 10, "bootstrap_epochs": 10, "finetune_max_images": max_images}})
        r = _train_locked(y, s, init, "run", None, None, None, epochs, _ReusingRegistry(tmp_path), counts, None)
        return r.epochs

    assert epochs_of(None) == 10
    assert epochs_of(20) == 3                 # 6 train frames: 3 epochs = 18 images <= 20
    assert epochs_of(20, epochs=7) == 7       # an explicit epochs parameter is what the caller asked for
    assert epochs_of(20, init=None) == 10     # a bootstrap is not a fine-tune


def test_input_hash_changes_with_data_weights_and_params(tmp_path: Path) -> None:
    y = write_yolo_dataset(tmp_path / "ds", CLASSES, n_train=3, n_val=1, size=64, r_range=(5, 12))
    h = input_hash(y, None, {"epochs": 1})
    assert h == input_hash(y, None, {"epochs": 1})
    assert h != input_hash(y, None, {"epochs": 2})
    w = tmp_path / "w.pt"
    w.write_bytes(b"weights")
    assert h != input_hash(y, w, {"epochs": 1})
    lbl = next((tmp_path / "ds" / "labels" / "train").glob("*.txt"))
    lbl.write_text(lbl.read_text() + "0 0.5 0.5 0.1 0.1\n")
    assert h != input_hash(y, None, {"epochs": 1})


def test_read_results_csv(tmp_path: Path) -> None:
    p = tmp_path / "results.csv"
    p.write_text("epoch,  train/box_loss,  metrics/mAP50-95(B)\n1, 2.5, 0.01\n2, 2.0, 0.05\n")
    rows = read_results_csv(p)
    assert rows == [{"epoch": 1.0, "train/box_loss": 2.5, "metrics/mAP50-95(B)": 0.01},
                    {"epoch": 2.0, "train/box_loss": 2.0, "metrics/mAP50-95(B)": 0.05}]
    assert read_results_csv(tmp_path / "missing.csv") == []


def test_mlflow_errors_are_classified_by_type_and_status_not_text() -> None:
    import requests
    from mlflow.exceptions import MlflowException, RestException

    from detloop.clients.registry import call_mlflow
    from detloop.errors import NotFound, ServiceRejected, ServiceUnavailable

    calls = {"n": 0}

    def down() -> None:
        calls["n"] += 1
        try:
            raise requests.ConnectionError("refused")
        except requests.ConnectionError as e:  # how MLflow's rest_utils wraps it: no `from`, the context remains
            raise MlflowException(f"API request to http://h:1/api failed with exception {e}")  # noqa: B904

    with pytest.raises(ServiceUnavailable, match=r"MLflow at http://h:1 is not reachable \(list\)"):
        call_mlflow(down, "list", "http://h:1")
    assert calls["n"] == 1  # no retry in the client

    def missing() -> None:
        raise RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Registered Model not found"})

    with pytest.raises(NotFound):
        call_mlflow(missing, "get model", "http://h:1")

    def busy() -> None:
        raise RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "try later"})

    with pytest.raises(ServiceUnavailable, match="HTTP 503"):
        call_mlflow(busy, "x", "http://h:1")

    def bad() -> None:
        raise RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "bad tag"})

    with pytest.raises(ServiceRejected, match="HTTP 400 on x: INVALID_PARAMETER_VALUE: bad tag"):
        call_mlflow(bad, "x", "http://h:1")

    def bug() -> None:
        raise ValueError("a bug is not a service failure")

    with pytest.raises(ValueError):
        call_mlflow(bug, "x", "http://h:1")

def test_clean_log_drops_colour_codes_and_progress_redraws() -> None:
    from tasks.training import clean_log

    raw = ("\x1b[34m\x1b[1mtrain: \x1b[0mScanning 16 images\n"
           "  1/2  0.5G  1.2  \r  1/2  0.5G  1.1  50%|#####     |\r  1/2  0.5G  1.0 100%|##########|\n"
           "\x1b[K\n"
           "Results saved to \x1b[1mruns/x\x1b[0m\n")
    out = clean_log(raw)
    assert "\x1b" not in out and "\r" not in out
    assert out.splitlines() == ["train: Scanning 16 images", "  1/2  0.5G  1.0 100%|##########|", "",
                                "Results saved to runs/x"]
