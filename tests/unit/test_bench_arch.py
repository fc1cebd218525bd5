"""Pure parts of ``detloop bench arch``: the measured variants of each family and the table."""

from __future__ import annotations

import pytest

from benchmarks.arch import markdown_table, variants


def test_end_to_end_families_are_measured_with_and_without_nms() -> None:
    got = [(v.name, v.head) for v in variants(["yolo11n.yaml", "yolo26n.yaml", "yolo11n-p2.yaml"])]
    assert got == [("yolo11n", "one2many"), ("yolo26n NMS", "one2many"), ("yolo26n NMS-free", "one2one"),
                   ("yolo11n-p2", "one2many")]
    with pytest.raises(ValueError, match="unknown model arch"):
        variants(["yolov9c.yaml"])


def test_table_shows_paired_differences_against_the_baseline_only() -> None:
    base = {"model": "a", "map": 0.3, "crowded_ap": 0.2, "crowded_ar": 0.4, "small_ap": float("nan"),
            "ms_per_frame": 10.0, "latency_ratio": 1.0, "train_min_per_epoch": 1.5}
    other = {**base, "model": "b", "map": 0.35, "map_delta": {"delta": 0.05, "ci": [0.01, 0.09]},
             "ms_per_frame": 12.0, "latency_ratio": 1.2}
    lines = markdown_table([base, other]).splitlines()
    assert lines[2].startswith("| a | 0.300 | 0.200 | 0.400 | n/a | 10.0 (1.00x) | 1.50 |")
    assert "0.350 (+0.050 [+0.010, +0.090])" in lines[3] and "12.0 (1.20x)" in lines[3]
