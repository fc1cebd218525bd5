"""The recovery-ceiling benchmark's pieces: variants, drifted cameras, label days, the extra frames and the data.yaml
(the fine-tunes themselves need a finished soak's stack)."""

from datetime import date
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from benchmarks.soak_ceiling import (
    drifted_cameras,
    label_days,
    parse_variant,
    pre_onset,
    render_extra,
    table,
    with_extra,
)
from detloop.detections import Detections


def test_variants_parse_and_bad_spellings_are_named() -> None:
    assert parse_variant("as-run") == (0, 1, False, None)
    assert parse_variant("+50") == (50, 1, False, None)
    assert parse_variant("+200-x3") == (200, 3, False, None)
    assert parse_variant("+200-x3-sim") == (200, 3, True, None)
    assert parse_variant("+50-sim") == (50, 1, True, None)
    assert parse_variant("+50-sel-sim") == (50, 1, True, "sel") and parse_variant("+50-x2-rnd").pick == "rnd" == parse_variant("+5-rnd-sim").pick
    assert parse_variant("+50-selc-sim").pick == "selc"
    for bad in ("50", "+50x3", "+-1", "+200-x0", "as-run-sim", "+50-sim-x3", "+50-sim-sel", "+50-pick"):
        with pytest.raises(ValueError, match="variant"):
            parse_variant(bad)


def test_drifted_cameras_are_the_recent_onsets_only() -> None:
    onsets = [{"camera": "cam1", "onset": "2026-01-20"}, {"camera": "cam0", "onset": "2026-01-18"},
              {"camera": "cam3", "onset": "2026-01-26"}, {"camera": "cam4", "onset": "2026-01-26"},
              {"camera": "cam3", "onset": "2026-02-02"}, {"camera": "cam2", "onset": "2026-02-02"},
              {"camera": "cam2", "onset": "2026-02-09"}]  # cam0: 15 days before; cam2: on and after the round's day
    got = drifted_cameras(onsets, date(2026, 2, 2))
    assert got == {"cam1": date(2026, 1, 20), "cam3": date(2026, 1, 26), "cam4": date(2026, 1, 26)}
    assert drifted_cameras(onsets, date(2026, 2, 2), days=7) == {"cam3": date(2026, 1, 26), "cam4": date(2026, 1, 26)}
    # cam2 changed on 02-02 and again on 02-09: a round on 02-11 sees its second look
    assert drifted_cameras(onsets, date(2026, 2, 11))["cam2"] == date(2026, 2, 9)
    assert drifted_cameras(onsets, date(2026, 2, 11))["cam3"] == date(2026, 2, 2)


def test_label_days_run_from_the_onset_to_the_day_before_the_round() -> None:
    days = label_days(date(2026, 1, 26), date(2026, 2, 2))
    assert days[0] == date(2026, 1, 26) and days[-1] == date(2026, 2, 1) and len(days) == 7
    assert label_days(date(2026, 1, 1), date(2026, 2, 2))[0] == date(2026, 1, 26)  # at most 7 days back
    assert label_days(date(2026, 2, 2), date(2026, 2, 2)) == [date(2026, 2, 2)]  # onset on the round's day


def test_extra_frames_are_rendered_with_their_truth_and_join_the_train_list(tmp_path: Path) -> None:
    from detloop.world.config import load_world_config

    world = load_world_config(Path(__file__).resolve().parents[2] / "configs" / "world.yaml")
    classes = ["disc", "square", "triangle", "ring", "star"]
    cam = world.cameras[0].id
    imgs = render_extra(world, classes, {cam: date(2026, 1, 26)}, date(2026, 1, 29), 4, 0, tmp_path / "frames")
    assert len(imgs) == 4 and len(set(imgs)) == 4
    for p in imgs:
        lbl = Path(p).parent.parent / "labels" / (Path(p).stem + ".txt")
        assert Path(p).stat().st_size > 0
        assert len(Detections.from_yolo_txt(lbl.read_text(), 640, 480, num_classes=5)) >= 0
    assert any((Path(p).parent.parent / "labels" / (Path(p).stem + ".txt")).read_text() for p in imgs)
    from flows.demo import default_annotators

    sim = render_extra(world, classes, {cam: date(2026, 1, 26)}, date(2026, 1, 29), 4, 0, tmp_path / "sim",
                       default_annotators(SimpleNamespace(world=SimpleNamespace(seed=0))))
    labels = [(Path(p).parent.parent / "labels" / (Path(p).stem + ".txt")).read_text() for p in imgs]
    sim_labels = [(Path(p).parent.parent / "labels" / (Path(p).stem + ".txt")).read_text() for p in sim]
    assert [Path(p).name for p in sim] == [Path(p).name for p in imgs]  # the same frames
    assert sim_labels != labels  # labelled with the annotators' jitter
    stamp = Path(imgs[0]).stat().st_mtime_ns
    assert render_extra(world, classes, {cam: date(2026, 1, 26)}, date(2026, 1, 29), 4, 0,
                        tmp_path / "frames") == imgs
    assert Path(imgs[0]).stat().st_mtime_ns == stamp  # kept, not rendered again

    train = tmp_path / "train_x2.txt"
    train.write_text("/a.jpg\n/b.jpg\n")
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(tmp_path), "train": str(train), "val": "/v.txt",
                                    "names": {0: "disc"}, "nc": 1}))
    got = yaml.safe_load(with_extra(data, imgs[:2], 2, tmp_path / "n2").read_text())
    assert got["val"] == "/v.txt" and got["nc"] == 1
    assert Path(got["train"]).read_text().split() == ["/a.jpg", "/b.jpg", imgs[0], imgs[0], imgs[1], imgs[1]]


def test_table_and_pre_onset_values() -> None:
    soak = {"truth": {"recovery": [{"camera": "cam3", "onset": "2026-01-26", "pre": 0.689},
                                   {"camera": "cam2", "onset": "2026-02-09", "pre": 0.732}]}}
    r = {"champion": "4", "drifted": {"cam3": "2026-01-26", "cam4": "2026-01-26"}, "epochs": 3,
         "champion_true": {"cam3": 0.378, "cam4": 0.70},
         "run": {"version": "6", "golden_delta": -0.0025, "outcome": "rejected", "true": {"cam3": 0.513}},
         "variants": {"+200": {"extra_per_camera": 200, "epochs": 3, "golden_delta": 0.004, "outcome": "passed",
                               "true": {"cam3": 0.65, "cam4": 0.78}}}}
    pre = pre_onset(soak, r["drifted"])
    assert pre == {"cam3": 0.689}
    md = table(r, pre)
    assert "| before the onset | - | - | - | - | 0.689 | - |" in md
    assert "| the run's challenger v6 | 0 | 3 | -0.0025 | rejected | 0.513 | - |" in md
    assert "| +200 | 200 | 3 | +0.0040 | passed | 0.650 | 0.780 |" in md


def test_frames_picked_from_a_pool_n_per_camera_by_the_selection_or_at_random(tmp_path: Path) -> None:
    from benchmarks.soak_ceiling import pick_from_pool
    from detloop.settings import load_settings
    from detloop.world.config import load_world_config
    from tasks.export import make_random_artifact

    repo = Path(__file__).resolve().parents[2]
    s = load_settings(repo / "configs" / "test.yaml")
    world = load_world_config(repo / "configs" / "world.yaml")
    cams = {world.cameras[0].id: date(2026, 1, 26), world.cameras[1].id: date(2026, 1, 27)}
    pool = render_extra(world, list(s.classes), cams, date(2026, 1, 29), 6, 0, tmp_path / "pool")
    art = make_random_artifact(tmp_path / "model", list(s.classes), s.model.input_size)

    sel, summary = pick_from_pool(s, Path(art), pool, 2, "sel", [10] * len(s.classes))
    assert len(sel) == 4 and set(sel) <= set(pool)
    assert sorted(Path(p).stem.split("-")[0] for p in sel) == sorted([*cams, *cams])
    assert summary["pool_per_camera"] == dict.fromkeys(cams, 6) and summary["notes"][0].startswith("cameras balanced")
    selc, summary_c = pick_from_pool(s, Path(art), pool, 2, "selc", [10] * len(s.classes))
    assert len(selc) == 4 and summary_c["notes"][0].startswith("cameras balanced")
    rnd, _ = pick_from_pool(s, Path(art), pool, 2, "rnd", None, seed=1)
    assert rnd == pick_from_pool(s, Path(art), pool, 2, "rnd", None, seed=1)[0]  # seeded
    assert sorted(Path(p).stem.split("-")[0] for p in rnd) == sorted([*cams, *cams])
    assert len({tuple(pick_from_pool(s, Path(art), pool, 2, "rnd", None, seed=k)[0]) for k in range(6)}) > 1
