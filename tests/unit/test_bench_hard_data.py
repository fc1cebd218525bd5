"""The hard-data benchmark's pure parts: the arms' train lists and the table."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.al_data import BenchFrame
from benchmarks.hard_data import _write_list, markdown_table
from detloop.detections import Detections


def test_train_list_repeats_frames_as_linked_copies(tmp_path: Path) -> None:
    frames = []
    for i in range(3):
        img = tmp_path / "src" / "images" / "train" / f"f{i}.jpg"
        img.parent.mkdir(parents=True, exist_ok=True)
        img.write_bytes(b"x")
        lbl = tmp_path / "src" / "labels" / "train" / f"f{i}.txt"
        lbl.parent.mkdir(parents=True, exist_ok=True)
        lbl.write_text("0 0.5 0.5 0.1 0.1\n")
        frames.append(BenchFrame(f"f{i}", str(img), Detections.empty(), 64, 64, "cam0"))
    extra = [tmp_path / "syn.jpg"]
    lst = _write_list(tmp_path / "arm", frames, np.array([1, 3, 1]), extra)
    lines = lst.read_text().split()
    assert len(lines) == 3 + 2 + 1 and lines[-1] == str(extra[0])
    reps = [Path(p) for p in lines if "__rep" in p]
    assert len(reps) == 2 and all(p.is_file() and "f1__rep" in p.name for p in reps)
    assert all((tmp_path / "arm" / "labels" / "train" / f"{p.stem}.txt").read_text() == "0 0.5 0.5 0.1 0.1\n"
               for p in reps)


def test_table_shows_differences_against_plain() -> None:
    rows = [{"arm": "champion (before fine-tune)", "seeds": 0, "map": 0.4, "rare_ap": 0.3},
            {"arm": "plain", "seeds": 2, "map": 0.41, "rare_ap": 0.31},
            {"arm": "mining", "seeds": 2, "map": 0.42, "rare_ap": 0.30, "d_map": 0.01, "d_map_ci": [0.001, 0.02],
             "d_map_verdict": "wins", "d_rare_ap": -0.01, "d_rare_ap_ci": [-0.03, 0.01], "d_rare_ap_verdict": "noise"}]
    md = markdown_table(rows, "star")
    assert "| plain | 2 | 0.410 | 0.310 | baseline | baseline |" in md
    assert "+0.010 [+0.001, +0.020] wins" in md and "-0.010 [-0.030, +0.010] noise" in md
