"""The gate's drift allowance: a drift round's challenger that mends the drifted cameras may cost golden a little.

The slice it reads (``drifted``) holds only held-out frames (the round's val, the control arm) of the episode's
cameras since its first drifted day; the rule is bounded by ``gate.drift_golden_tol`` and off by default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from detloop.settings import GateSettings, load_settings
from tasks.promotion import ModelScores, decide
from tests.fakes import FakeStore

CLASSES = ["disc", "square"]
ON = GateSettings(drift_golden_tol=0.005, drift_min_gain=0.02)


def _scores(golden: float, drifted: float | None, disc: float = 0.5) -> ModelScores:
    return ModelScores(golden, {"disc": disc, "square": 0.5}, 0.3, 10.0, 0.4, drifted_ap=drifted)


def test_off_by_default_a_golden_drop_rejects_whatever_the_drifted_slice_says() -> None:
    d = decide(_scores(0.4849, 0.70), _scores(0.4868, 0.60), GateSettings())
    assert not d.passed and [c.name for c in d.checks if c.status == "fail"] == ["golden_map_delta"]
    assert "drifted_gain" not in [c.name for c in d.checks]


def test_a_drift_round_challenger_that_mends_its_cameras_passes_a_golden_drop_within_the_allowance() -> None:
    # the zoom soak's v6: golden -0.0019, the drifted camera better
    d = decide(_scores(0.4849, 0.65), _scores(0.4868, 0.62), ON)
    assert d.passed, d.reasons
    gain = next(c for c in d.checks if c.name == "drifted_gain")
    assert gain.status == "pass" and gain.value == pytest.approx(0.03)
    golden = next(c for c in d.checks if c.name == "golden_map_delta")
    assert golden.limit == pytest.approx(-0.005) and "drift allowance" in golden.detail


@pytest.mark.parametrize(("golden", "drifted", "disc", "failed"), [
    (0.4800, 0.65, 0.5, ["golden_map_delta"]),  # golden dropped by more than the allowance
    (0.4849, 0.63, 0.5, ["golden_map_delta"]),  # drifted gain 0.01 < 0.02: no allowance
    (0.4849, None, 0.5, ["golden_map_delta"]),  # not a drift round (or too few boxes on its slice)
    (0.4849, 0.65, 0.40, ["class_ap[disc]"]),  # every other check still applies
])
def test_the_allowance_is_bounded(golden: float, drifted: float | None, disc: float, failed: list[str]) -> None:
    d = decide(_scores(golden, drifted, disc), _scores(0.4868, 0.62), ON)
    assert not d.passed and sorted(c.name for c in d.checks if c.status == "fail") == failed
    if drifted == 0.63:
        assert next(c for c in d.checks if c.name == "drifted_gain").status == "skipped"


def test_the_allowance_never_tightens_a_looser_min_delta() -> None:
    loose = GateSettings(min_delta=-0.01, drift_golden_tol=0.005)
    assert decide(_scores(0.4790, 0.65), _scores(0.4868, 0.62), loose).passed  # -0.0078 >= -0.01


def test_settings_range_is_named() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="drift_golden_tol"):
        GateSettings(drift_golden_tol=0.5)


# ---- the drifted slice --------------------------------------------------------------------------------------
def _frame(store: Any, s: Any, i: int, camera: str, day: str, split: str, source: str, arm: str | None = None) -> Any:
    from detloop.datasets import store_labelled_frame
    from detloop.detections import Detections

    det = Detections(xyxy=np.array([[2.0, 2.0, 20.0, 20.0]]), confidence=np.ones(1), class_id=np.array([0]))
    return store_labelled_frame(store, s.s3.data_bucket, f"{s.label_studio.project_title}-{i}".encode(), det,
                                width=64, height=64, classes=s.classes, camera=camera, date=day, hour=i % 24,
                                split=split, source=source, arm=arm, key=f"frames/{camera}/{day}/{i}.jpg", ext="jpg")


def drift_round_scenario(store: Any, s: Any, tag: str) -> dict[str, Any]:
    """A golden version and a drift round's version on ``store``: cam2 drifted from 2026-01-27 (episode
    ``drift-v3-2026-01-27-<tag>``); the round's val and control frames on cam2 on/after that day are the drifted
    slice, nothing else is (its train frames, cam1's, cam2's before the drift, another round's val)."""
    from detloop.datasets import build_version, save_manifest
    from tasks.drift import Episode
    from tasks.drift_records import save_episodes
    from tasks.rounds import mark_round, open_round

    rid, ep_id = f"{tag}-drift", f"drift-v3-2026-01-27-{tag}"
    src, old = f"round:{rid}", f"round:{tag}-earlier"
    golden = save_manifest(store, s, build_version("golden", s.classes, [
        _frame(store, s, i, "cam2", "2026-01-05", "golden", "golden") for i in range(3)]))
    frames = [
        ("want", _frame(store, s, 10, "cam2", "2026-01-27", "val", src)),
        ("want", _frame(store, s, 11, "cam2", "2026-01-29", "val", src)),
        ("want", _frame(store, s, 12, "cam2", "2026-01-28", "control", src, "control")),
        ("no", _frame(store, s, 13, "cam2", "2026-01-28", "train", src)),  # trained on
        ("no", _frame(store, s, 14, "cam1", "2026-01-28", "val", src)),  # not a drifted camera
        ("no", _frame(store, s, 15, "cam2", "2026-01-26", "control", old, "control")),  # before the drift
        ("no", _frame(store, s, 16, "cam2", "2026-01-28", "val", old)),  # another round's val
    ]
    version = save_manifest(store, s, build_version("train", s.classes, [f for _, f in frames], rounds=[rid]))
    open_round(store, s, rid, "2026-01-29", "3", 3, 1)
    mark_round(store, s, rid, reason="drift", focus_key=ep_id)
    save_episodes(store, s, [Episode(ep_id, "3", "2026-01-28", ["cam2"], ["2026-01-27", "2026-01-28"])])
    open_round(store, s, f"{tag}-weekly", "2026-02-02", "3", 3, 1)
    return {"round_id": rid, "weekly_id": f"{tag}-weekly", "golden": golden, "version": version, "episode": ep_id,
            "want": {f.frame_sha for w, f in frames if w == "want"}}


def drifted_shas(slices: list[Any]) -> set[str] | None:
    got = {sl.name: sl for sl in slices}.get("drifted")
    return None if got is None else {Path(it.image).stem for it in got.items}


def test_the_drifted_slice_holds_only_held_out_frames_of_the_drifted_cameras_since_the_drift(
        tmp_path: Path) -> None:
    from tasks.slices import build_slices, drift_focus

    s = load_settings("configs/test.yaml", env={}, overrides={"data_dir": str(tmp_path / "data")})
    store = FakeStore()
    sc = drift_round_scenario(store, s, "t")
    focus = drift_focus(store, s, sc["round_id"])
    assert focus is not None and focus.cameras == ("cam2",) and focus.since == "2026-01-27"
    assert drift_focus(store, s, sc["weekly_id"]) is None and drift_focus(store, s, None) is None
    slices = build_slices(store, s, sc["golden"], sc["version"], sc["round_id"], focus)
    assert drifted_shas(slices) == sc["want"]
    assert drifted_shas(build_slices(store, s, sc["golden"], sc["version"], sc["round_id"])) is None
