"""``detloop drift tiling`` against the real stack: the champion from the real registry, the camera's labelled frames
from dataset versions on the real S3, each variant scored by the champion's scoring artifact (a random one: the
figures are not the point here; benchmarks/soak_tiling.py and docs/benchmarks.md measure them)."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

from detloop.datasets import build_version, save_manifest, store_labelled_frame
from detloop.detections import Detections


def _frame(s: Any, store: Any, camera: str, i: int, split: str, day: str) -> Any:
    """A 640x480 JPEG with three filled squares, labelled with their boxes."""
    rng = np.random.default_rng(i)
    img = rng.integers(60, 120, (480, 640, 3), dtype=np.uint8)
    boxes = []
    for _ in range(3):
        x, y, w = int(rng.integers(0, 560)), int(rng.integers(0, 400)), int(rng.integers(12, 60))
        cv2.rectangle(img, (x, y), (x + w, y + w), (40, 40, 220), -1)
        boxes.append([x, y, x + w, y + w])
    ok, jpg = cv2.imencode(".jpg", img)
    assert ok
    det = Detections(xyxy=np.array(boxes, float), confidence=np.ones(3), class_id=np.zeros(3, int))
    return store_labelled_frame(store, s.s3.data_bucket, jpg.tobytes(), det, width=640, height=480,
                                classes=s.classes, camera=camera, date=day, hour=i % 24, split=split,
                                source="round:tiling-test", key=f"frames/{camera}-{i}.jpg", ext="jpg")


@pytest.fixture(scope="module")
def checked(stack_settings: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from detloop.clients import Clients
    from detloop.settings import load_settings
    from tasks.export import make_random_artifact
    from tests.integration.test_flows import _isolated_config

    sfx = uuid.uuid4().hex[:8]
    cfg = _isolated_config(stack_settings, f"tiling-{sfx}")
    path = tmp_path_factory.mktemp("tiling") / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    s = load_settings(path)
    c = Clients.from_settings(s)
    cam = f"tilecam-{sfx}"  # the data bucket is shared: a camera of this test only
    seen = [_frame(s, c.store, cam, i, "train", "2026-02-01") for i in range(2)]
    champ_version = save_manifest(c.store, s, build_version("train", s.classes, seen))
    new = [_frame(s, c.store, cam, 10 + i, "train", "2026-02-10") for i in range(2)]
    val = [_frame(s, c.store, cam, 20 + i, "val", "2026-02-11") for i in range(2)]
    child = build_version("train", s.classes, new + val, parent=build_version("train", s.classes, seen))
    latest = save_manifest(c.store, s, child)
    files = tmp_path_factory.mktemp("tiling-model")
    make_random_artifact(files / "scoring", list(s.classes), s.model.input_size, seed=0)
    (files / "weights").mkdir()
    (files / "weights" / "best.pt").write_bytes(b"not used by scoring")
    run_id = c.registry.create_run("tiling-test", {})
    c.registry.end_run(run_id)
    mv = c.registry.register_logged_model(run_id, files, "tiling-test", {"detloop.dataset_version": champ_version}, {})
    c.registry.set_alias("champion", str(mv.version))
    return {"cfg": str(path), "cam": cam, "latest": latest, "version": str(mv.version), "s": s}


def test_the_champion_is_scored_whole_and_tiled_on_the_frames_it_never_trained_on(checked: dict[str, Any]) -> None:
    from flows.tiling import tiling_check

    r = tiling_check(checked["cam"], date(2026, 2, 5), ["whole", "t320", "t320f"], checked["latest"], checked["cfg"])
    assert r["champion"] == checked["version"]
    # the two train frames of the champion's own version and anything before --since are left out
    assert r["frames"] == 4 and r["splits"] == {"train": 2, "val": 2}
    assert [x["variant"] for x in r["scores"]] == ["whole", "t320", "t320f"]
    for x in r["scores"]:
        assert x["seconds_per_frame"] > 0 and (x["map50"] is None or 0.0 <= x["map50"] <= 1.0)
    assert r["advice"].startswith(f"{checked['cam']}: ") and "| t320f |" in r["markdown"]
    everything = tiling_check(checked["cam"], None, ["whole"], checked["latest"], checked["cfg"])
    assert everything["frames"] == 4  # the champion's own train frames never count, whatever the date


def test_bad_input_is_one_clear_line(checked: dict[str, Any]) -> None:
    from detloop.errors import ConfigError, DataError
    from flows.tiling import tiling_check

    with pytest.raises(DataError, match=r"nocam: no labelled frames .* never trained on"):
        tiling_check("nocam", None, ["whole"], checked["latest"], checked["cfg"])
    with pytest.raises(DataError, match="since 2027-01-01"):
        tiling_check(checked["cam"], date(2027, 1, 1), ["whole"], checked["latest"], checked["cfg"])
    with pytest.raises(ConfigError, match="'tiles'"):
        tiling_check(checked["cam"], None, ["whole", "tiles"], checked["latest"], checked["cfg"])


def test_the_cli_prints_the_table_and_the_advice(checked: dict[str, Any]) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    out = CliRunner().invoke(app, ["drift", "tiling", checked["cam"], "--variant", "whole", "--variant", "t320",
                                   "--dataset-version", checked["latest"], "-c", checked["cfg"]])
    assert out.exit_code == 0, out.output
    assert f"on 4 frames of {checked['cam']} (train 2, val 2)" in out.output
    assert "| t320 |" in out.output and out.output.strip().splitlines()[-1].startswith(checked["cam"])
