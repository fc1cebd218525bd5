"""Pure parts of ``detloop bench drift``: signal groups, delays, false alarms, which moved first, cache keys."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from benchmarks.drift import (
    BenchConfig,
    day_key,
    detection,
    drift_kind,
    false_alarms,
    group_rule,
    group_stats,
    moved_first,
    onset_of,
    targets,
)
from detloop.settings import DriftSettings
from detloop.world.config import load_world_config
from tasks.drift import CameraDayStats, Stat, verdict

CLASSES = ["disc", "square", "triangle", "ring", "star"]
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _stats() -> CameraDayStats:
    tests = [Stat("brightness", "ks", 0.9, 1e-9), Stat("contrast", "ks", 0.8, 1e-8),
             Stat("confidence", "ks", 0.3, 1e-3), Stat("confidence[disc]", "ks", 0.1, 0.5),
             Stat("embedding", "mmd", 0.2, 1e-3), Stat("log_area", "ks", 0.1, 0.4)]
    return CameraDayStats("cam1", "2026-03-08", 300, 600, 2000, 4000, "camera", True, tests=tests)


def test_groups_keep_only_their_tests_and_judge_alone() -> None:
    s = _stats()
    names = {g: [t.name for t in group_stats(s, g).tests] for g in ("confidence", "embedding", "image", "combined")}
    assert names["image"] == ["brightness:ks", "contrast:ks"]
    assert names["confidence"] == ["confidence:ks", "confidence[disc]:ks"]
    assert names["embedding"] == ["embedding:mmd"] and len(names["combined"]) == 6
    assert len(s.tests) == 6  # the original is not modified
    cfg = DriftSettings()
    assert group_rule(cfg, "combined") is cfg
    assert group_rule(cfg, "embedding").alarm_min_signals == 1
    assert group_rule(cfg, "image").alarm_min_signals == 2
    v = {g: verdict(group_stats(s, g), group_rule(cfg, g)).status for g in ("confidence", "embedding", "image")}
    assert v == {"confidence": "clean", "embedding": "drift", "image": "drift"}  # one confidence test is not two


def test_detection_delays_in_days_and_frames() -> None:
    onset = date(2026, 3, 8)
    st = {"2026-03-07": "drift", "2026-03-08": "clean", "2026-03-09": "drift", "2026-03-10": "drift"}
    d = detection(st, "2026-03-10", onset, 300)
    assert d["first_drift_day"] == "2026-03-09" and d["delay_days"] == 1  # the pre-onset alarm is not a detection
    assert d["episode_delay_days"] == 2 and d["frames_to_episode"] == 900 and not d["missed"]
    m = detection({"2026-03-08": "clean"}, None, onset, 300)
    assert m["missed"] and m["delay_days"] is None and m["frames_to_episode"] is None


def test_false_alarms_count_only_judged_stationary_days() -> None:
    status = {"cam0": {"d1": "clean", "d2": "drift", "d3": "insufficient"}, "cam1": {"d1": "drift", "d2": "drift"}}
    fa = false_alarms(status, {"cam0": ["d2"], "cam1": ["d2"]}, {"cam0": {"d1", "d2", "d3"}, "cam1": {"d1"}})
    assert fa["camera_days"] == 3 and fa["drifted_days"] == 2 and fa["episodes"] == 1
    assert fa["drifted_day_rate"] == pytest.approx(2 / 3) and fa["episode_rate"] == pytest.approx(1 / 3)
    assert false_alarms({}, {}, {"cam0": {"d1"}})["drifted_day_rate"] is None


def test_moved_first_and_drift_kind() -> None:
    days = ["2026-03-07", "2026-03-08", "2026-03-09", "2026-03-10"]
    tm = {"2026-03-07": 0.70, "2026-03-08": 0.69, "2026-03-09": 0.60, "2026-03-10": 0.50}
    early = moved_first(days, {"2026-03-08": "drift"}, tm, 0.70, date(2026, 3, 8))
    assert early == {"signal_day": "2026-03-08", "map_drop_day": "2026-03-09", "signal_first": True}
    late = moved_first(days, {"2026-03-10": "drift"}, tm, 0.70, date(2026, 3, 8))
    assert late["signal_first"] is False
    flat = moved_first(days, {"2026-03-08": "drift"}, dict.fromkeys(days, 0.7), 0.70, date(2026, 3, 8))
    assert flat["map_drop_day"] is None and flat["signal_first"] is None
    assert drift_kind(0.7, 0.6) == "lowers_map" and drift_kind(0.7, 0.68) == "inputs_only"
    assert drift_kind(None, 0.5) == "unknown"


def test_bench_world_onsets_and_cache_keys() -> None:
    bench = load_world_config(CONFIGS / "world_drift_bench.yaml")
    still = load_world_config(CONFIGS / "world_stationary.yaml")
    assert still.drift == [] and [c.id for c in still.cameras] == [c.id for c in bench.cameras]
    assert onset_of(bench, "cam0") == (None, None, 0)
    on, name, _ = onset_of(bench, "cam1")
    assert on == date(2026, 3, 8) and name == "cam1-dim30"
    assert any(d.ramp_days > 0 for d in bench.drift)
    cfg = BenchConfig()
    before, after = date(2026, 3, 7), date(2026, 3, 9)
    # before the onset both worlds render the same frames: one cache entry; after it they differ
    assert day_key(bench, CLASSES, "cam1", before, cfg, "m") == day_key(still, CLASSES, "cam1", before, cfg, "m")
    assert day_key(bench, CLASSES, "cam1", after, cfg, "m") != day_key(still, CLASSES, "cam1", after, cfg, "m")
    assert day_key(bench, CLASSES, "cam1", before, cfg, "m") != day_key(bench, CLASSES, "cam1", before, cfg, "other")


def test_targets_report_reached_and_not_reached() -> None:
    groups = {"combined": {"drifts": {"cam1-dim30": {"camera": "cam1", "delay_days": 0, "episode_delay_days": 2}},
                           "false_alarms": {"camera_days": 20, "drifted_day_rate": 0.1, "episode_rate": 0.0}}}
    lf = {"atc": {"within": 0.5}, "flip": {"within": 0.85}, "combined": {"within": None}}
    t = targets(groups, {"x": {"kind": "lowers_map"}, "y": {"kind": "inputs_only"}}, lf,
                BenchConfig(camera_frames={"cam1": 300}), "flip")
    light = t["moderate_lighting_within_1_day"]
    assert light["reached_first_drift"] and not light["reached_episode"] and light["frames_per_day"] == 300
    fa = t["false_alarms_le_5pct"]
    assert not fa["reached_days"] and fa["reached_episodes"]
    assert t["label_free_within_0.05_ge_80pct"] == {"estimator": "flip", "within": 0.85, "reached": True}
    # judged on the monitor's estimator, not the best of several
    t2 = targets(groups, {}, lf, BenchConfig(), "atc")
    assert t2["label_free_within_0.05_ge_80pct"] == {"estimator": "atc", "within": 0.5, "reached": False}
    assert "label_free_within_0.05_ge_80pct" not in targets(groups, {}, lf, BenchConfig(), "combined")
    assert t["lowering_drifts"] == ["x"]


def test_truth_frames_are_scored_tiled_where_the_camera_is_tiled() -> None:
    """The truth of a tiled camera is measured as production scores it (every tile through the model) and cached
    apart from its whole-frame truth; untiled cameras keep their old cache keys."""
    import numpy as np

    from benchmarks.drift import render_and_score, tiling_tag
    from detloop.settings import load_settings

    class Counting:
        meta = type("M", (), {"stride": 32, "input_size": 320, "head": "one2many"})()
        name, concurrent = "count", True

        def __init__(self) -> None:
            self.images = 0

        def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            self.images += len(batch)
            return np.zeros((len(batch), 4 + len(CLASSES), 2100), np.float32), np.zeros((len(batch), 8), np.float32)

    world = load_world_config(CONFIGS / "world.yaml")
    settings = load_settings(CONFIGS / "soak.yaml", env={},
                             overrides={"model": {"tiling": {"cameras": {"cam2": {"enabled": True}}}}})
    day = date(2026, 2, 10)
    counts = {}
    for cam in ("cam1", "cam2"):
        scorer = Counting()
        scored, truths = render_and_score(world, CLASSES, cam, day, 2, scorer, settings, 0)
        assert len(scored) == len(truths) == 2
        counts[cam] = scorer.images
    assert counts["cam1"] == 2  # whole frames
    assert counts["cam2"] == 2 * 7  # 640x480 in 320-px tiles with 64 px overlap: 3 x 2 tiles + the whole frame
    assert tiling_tag(settings, "cam1") == "" and tiling_tag(settings, "cam2").startswith("-tiled320o64")


def test_a_tiny_run_judges_every_group_and_calibrates_label_free_as_the_monitor_does(
        tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """``run`` end to end on 2 cameras x (2 reference + 2 monitored) days of 6 frames, with a stand-in scorer whose
    one box per frame is as confident as the frame is bright: every signal group is judged, the label-free rows
    carry the pooled calibration (with ATC's cross-validated weight) beside the per-camera one, and the target is
    judged on the monitor's estimator."""
    import numpy as np

    import tasks.scoring
    from benchmarks.drift import GROUPS, run
    from tasks.label_free import ESTIMATORS

    class Bright:
        meta = type("M", (), {"stride": 32, "input_size": 320, "head": "one2many"})()
        name, concurrent = "bright", True

        def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            raw = np.zeros((len(batch), 4 + len(CLASSES), 2100), np.float32)
            raw[:, :4, 0] = [160, 160, 60, 60]
            raw[:, 4, 0] = np.clip(batch.reshape(len(batch), -1).mean(axis=1) / (255.0 if batch.max() > 1 else 1.0)
                                   + 0.3, 0.3, 0.95)
            return raw, np.tile(batch.reshape(len(batch), -1)[:, :8].astype(np.float32), 1)

    model = tmp_path / "model"
    model.mkdir()
    (model / "model.onnx").write_bytes(b"stand-in")
    monkeypatch.setattr(tasks.scoring, "load_scorer", lambda *a, **k: Bright())
    cfg = BenchConfig(model=str(model), reference_days=2, days=2, frames_per_day=6, flip_frames=2, control_frames=3,
                      cameras=["cam0", "cam1"], work_dir=str(tmp_path / "work"), permutations=99,
                      start=date(2026, 3, 6))
    res = run(cfg, log=lambda _: None)
    assert set(res["groups"]) == set(GROUPS)
    rows = res["label_free"]["rows"]
    assert len(rows) == 2 * 2 and {r["camera"] for r in rows} == {"cam0", "cam1"}
    for r in rows:
        assert set(ESTIMATORS) <= set(r) and all(f"{e}_per_camera" in r for e in ESTIMATORS)
        assert r["calibration"]["n_frames"] == 2 * 2 * 3  # both cameras' reference control frames, pooled
        assert r["calibration_per_camera"]["n_frames"] == 2 * 3
        assert 0.0 <= r["calibration"]["atc_weight"] <= 1.0  # two cameras: cross-validated
    assert {"moved", "stationary"} <= set(res["label_free"]["summary"])
    t = res["targets"]["label_free_within_0.05_ge_80pct"]
    assert t["estimator"] == "weighted"
    assert t["within"] == res["label_free"]["summary"]["weighted"]["within"]
    assert res["seconds"]["camera_days_scored"] == 2 * 4
    assert run(cfg, log=lambda _: None)["seconds"]["camera_days_scored"] == 0  # all from the cache


def test_label_free_pool_counts_per_champion_and_pooled(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``benchmarks.label_free_pool``: within-0.05 counts per estimator, split by camera-days that moved, NaN left
    out, the calibration carried forward as ``naive``; the command writes the JSON and the scatter."""
    import json

    from benchmarks.label_free_pool import main, pool, within

    def row(truth: float, atc: float, weighted: float, moved: bool) -> dict:
        return {"true_map50": truth, "atc": atc, "weighted": weighted, "moved": moved,
                "calibration": {"atc_weight": 0.4}, "calibration_per_camera": {"map50": 0.7}}

    a = {"model": {"path": "a"}, "label_free": {"rows": [row(0.7, 0.72, 0.69, False), row(0.5, 0.7, 0.52, True)]}}
    b = {"model": {"path": "b"}, "label_free": {"rows": [row(0.6, float("nan"), 0.66, False)]}}
    assert within(a["label_free"]["rows"], "atc") == (1, 2)
    got = pool({"a": a, "b": b})
    assert got["camera_days"] == 3 and got["champions"]["a"]["atc_weight"] == 0.4
    assert got["pooled"]["atc"] == {"all": [1, 2], "moved": [0, 1], "stationary": [1, 1]}  # b's NaN left out
    assert got["pooled"]["weighted"] == {"all": [2, 3], "moved": [1, 1], "stationary": [1, 2]}
    assert got["pooled"]["naive"]["all"] == [1, 3]  # 0.7 carried forward: right only where nothing moved
    assert got["champions"]["b"]["weighted"]["all"] == [0, 1]
    paths = []
    for name, res in (("a", a), ("b", b)):
        paths.append(tmp_path / f"drift_{name}.json")
        paths[-1].write_text(json.dumps(res))
    out = main([*map(str, paths), "--out", str(tmp_path / "pooled.json"), "--plot", str(tmp_path / "s.png")])
    assert out["headline"]["weighted"] == [2, 3] and (tmp_path / "s.png").stat().st_size > 0
    assert json.loads((tmp_path / "pooled.json").read_text())["pooled"]["atc"]["all"] == [1, 2]


def test_the_release_rule_is_replayed_on_each_drift_and_judged_by_the_truth() -> None:
    """``benchmarks.label_free_pool.release``: the camera-days before a drift's onset stand for the carried
    reference; each later camera-day is released when its estimate is within the tolerance of theirs, and judged
    by whether its true mAP50 is within the tolerance of theirs."""
    from benchmarks.label_free_pool import release

    def row(cam: str, day: str, truth: float, est: float) -> dict:
        return {"camera": cam, "day": day, "true_map50": truth, "atc": est}

    rows = [row("cam1", "2026-03-06", 0.70, 0.70), row("cam1", "2026-03-07", 0.72, 0.72),  # reference 0.71 / 0.71
            row("cam1", "2026-03-08", 0.70, 0.69),   # released, truth back: right
            row("cam1", "2026-03-09", 0.50, 0.68),   # released, truth down: a false release
            row("cam1", "2026-03-10", 0.69, 0.60),   # held, truth back: a round paid for nothing
            row("cam1", "2026-03-11", 0.40, 0.30),   # held, truth down: right
            row("cam1", "2026-03-12", 0.40, float("nan")),  # no estimate: left out
            row("cam2", "2026-03-08", 0.10, 0.10)]   # no drift on cam2 (and no day before any onset): left out
    res = {"label_free": {"rows": rows},
           "drifts": {"cam1-dim": {"camera": "cam1", "onset": "2026-03-08", "kind": "lowers_map"},
                      "cam2-x": {"camera": "cam2", "onset": "2026-03-08", "kind": "inputs_only"},
                      "odd": {"camera": "cam1", "onset": "2026-03-08", "kind": None}}}
    got = release({"a": res, "b": {"label_free": {"rows": []}}}, columns=("atc",), tolerance=0.05)
    want = {"released_back": 1, "held_down": 1, "released_down": 1, "held_back": 1}
    assert got["pooled"]["atc"]["lowers_map"] == want
    assert got["pooled"]["atc"]["inputs_only"] == dict.fromkeys(want, 0)
    assert got["champions"]["a"]["atc"]["lowers_map"] == want and got["by_drift"]["atc"] == {"cam1-dim": want}
    assert got["champions"]["b"]["atc"]["lowers_map"] == dict.fromkeys(want, 0)
    # a wider tolerance releases the held camera-day whose truth is back
    assert release({"a": res}, columns=("atc",), tolerance=0.12)["pooled"]["atc"]["lowers_map"]["held_back"] == 0
    # the camera is let go after clean_days released days in a row: never in 3 (days 8-9, then held); in 2 it is,
    # on a run whose second day had lost accuracy
    assert got["cameras"]["atc"]["cam1-dim"] == {"champions": 1, "released": 0, "released_down": 0}
    two = release({"a": res}, columns=("atc",), clean_days=2)["cameras"]["atc"]["cam1-dim"]
    assert two == {"champions": 1, "released": 1, "released_down": 1}


def test_the_labelled_check_holds_a_camera_whose_earlier_days_the_estimate_over_read() -> None:
    """``release(check=True)``: the camera-days since the onset before a day stand for its labelled frames; the
    estimate read 0.70 on the 8th where the truth was 0.50, so the 9th (estimate back, truth down) is held; with
    no earlier day (the 8th itself) the estimate alone decides."""
    from benchmarks.label_free_pool import release

    def row(day: str, truth: float, est: float) -> dict:
        return {"camera": "cam3", "day": day, "true_map50": truth, "atc": est}

    rows = [row("2026-03-06", 0.70, 0.70), row("2026-03-07", 0.72, 0.72),  # reference 0.71 / 0.71
            row("2026-03-08", 0.50, 0.70), row("2026-03-09", 0.52, 0.69), row("2026-03-10", 0.51, 0.70)]
    res = {"a": {"label_free": {"rows": rows},
                 "drifts": {"cam3-repaint": {"camera": "cam3", "onset": "2026-03-08", "kind": "lowers_map"}}}}
    plain = release(res, columns=("atc",), tolerance=0.05)["pooled"]["atc"]["lowers_map"]
    assert plain["released_down"] == 3 and plain["held_down"] == 0
    checked = release(res, columns=("atc",), tolerance=0.05, check=True)
    assert checked["pooled"]["atc"]["lowers_map"] == {"released_back": 0, "held_down": 2, "released_down": 1,
                                                       "held_back": 0}
    assert checked["cameras"]["atc"]["cam3-repaint"] == {"champions": 1, "released": 0, "released_down": 0}
    assert release(res, columns=("atc",), clean_days=3)["cameras"]["atc"]["cam3-repaint"]["released_down"] == 1


def test_the_release_check_replay_sees_the_store_as_it_was_and_writes_nothing() -> None:
    """``benchmarks.release_check``: inside ``as_of_rounds`` only the allowed rounds and the dataset versions
    holding nothing else are listed (restored after); the read-only store drops writes and hides live records."""
    from datetime import UTC, datetime, timedelta

    import detloop.datasets as ds
    import tasks.rounds as tr
    from benchmarks.release_check import ReadOnly, as_of_rounds
    from detloop.datasets import DatasetManifest
    from detloop.settings import Settings
    from tests.fakes import FakeStore

    s, store = Settings(classes=["a"]), FakeStore()
    t0 = datetime(2026, 2, 1, tzinfo=UTC)
    for k in (1, 2):
        tr.open_round(store, s, f"r{k}", f"2026-02-0{k}", "1", 1, 1, now=t0 + timedelta(hours=k))
        ds.save_manifest(store, s, DatasetManifest(kind="train", classes=["a"], entries=[],
                                                   rounds=[f"r{j}" for j in range(1, k + 1)]))
    with as_of_rounds({"r1"}):
        assert [r.round_id for r in tr.list_rounds(store, s)] == ["r1"]
        assert [v["rounds"] for v in ds.list_versions(store, s, "train")] == [["r1"]]
    assert [r.round_id for r in tr.list_rounds(store, s)] == ["r1", "r2"] and len(ds.list_versions(store, s)) == 2
    ro = ReadOnly(store)
    store.put_json(s.s3.data_bucket, "models/x/live/a.json", {"a": 1})
    ro.put_json(s.s3.data_bucket, "models/x/other.json", {"b": 2})
    assert not store.exists(s.s3.data_bucket, "models/x/other.json")
    assert not ro.exists(s.s3.data_bucket, "models/x/live/a.json") and store.exists(s.s3.data_bucket, "models/x/live/a.json")
