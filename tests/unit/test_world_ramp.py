"""Gradual drifts (``ramp_days``): interpolation, the step stays the step, bad values refused (pure, no S3)."""

from __future__ import annotations

import hashlib
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml

from detloop.settings import ConfigError
from detloop.world.config import WorldConfig, load_world_config
from detloop.world.render import conditions, render_frame

CLASSES = ["disc", "square", "triangle", "ring", "star"]
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
START = date(2026, 1, 10)


def _world(*drifts: dict) -> WorldConfig:
    raw = yaml.safe_load((CONFIGS / "world.yaml").read_text())
    raw["drift"] = list(drifts)
    return WorldConfig.model_validate(raw)


def _digest(cfg: WorldConfig, camera: str, day: date, n: int = 3) -> str:
    h = hashlib.sha256()
    for i in range(n):
        f = render_frame(cfg, CLASSES, camera, day, i, 50)
        h.update(f.image.tobytes())
        h.update(f.truth.xyxy.tobytes())
    return h.hexdigest()


def test_ramp_interpolates_every_knob_day_by_day() -> None:
    cfg = _world({"name": "r", "start": START.isoformat(), "cameras": ["cam0"], "ramp_days": 4, "brightness": -40,
                  "contrast": 0.5, "size_scale": 0.25, "class_weights": {"star": 0.43},
                  "class_colors": {"disc": [240, 40, 40]}})
    star = CLASSES.index("star")
    base = conditions(cfg, CLASSES, "cam0", START - timedelta(days=1))
    assert base.drifts == () and base.brightness == 0.0
    seen = []
    for k in range(1, 7):  # day k of the drift (1 = its start)
        c = conditions(cfg, CLASSES, "cam0", START + timedelta(days=k - 1))
        f = min(1.0, k / 4)
        assert c.drifts == ("r",)
        assert c.brightness == pytest.approx(-40 * f)
        assert c.contrast == pytest.approx(0.5**f) and c.size_scale == pytest.approx(0.25**f)
        w = (1 - f) * 0.03 + f * 0.43  # star weight interpolated, the other classes keep theirs
        assert c.class_probs[star] == pytest.approx(w / (0.97 + w))
        assert c.colors[0] == tuple(round((1 - f) * a + f * b) for a, b in zip((40, 40, 220), (240, 40, 40), strict=True))
        seen.append(c.brightness)
    assert seen[0] == pytest.approx(-10) and seen[3:] == [-40, -40, -40]  # strictly growing, then flat
    assert np.all(np.diff(seen[:4]) < 0)
    assert conditions(cfg, CLASSES, "cam1", START + timedelta(days=2)).drifts == ()  # other cameras untouched


def test_a_ramp_moves_the_pixels_gradually() -> None:
    cfg = _world({"name": "dim", "start": START.isoformat(), "cameras": ["cam0"], "ramp_days": 3, "brightness": -60})
    cfg = cfg.model_copy(update={"nuisance": cfg.nuisance.model_copy(update={"day_night": 0.0})})
    means = [np.mean([render_frame(cfg, CLASSES, "cam0", START + timedelta(days=d), i, 50).image.mean()
                      for i in range(8)]) for d in range(-1, 3)]
    steps = -np.diff(means)  # ~20 darker per day over 3 days (a little less where pixels saturate)
    assert np.all(steps > 12) and np.all(steps < 26)


def test_ramp_zero_and_a_completed_ramp_render_the_step_bit_identically() -> None:
    step = {"name": "s", "start": START.isoformat(), "cameras": ["cam1"], "brightness": -70, "contrast": 0.5,
            "size_scale": 0.45, "class_weights": {"star": 0.15}, "class_colors": {"square": [30, 200, 230]}}
    a, b = _world(step), _world({**step, "ramp_days": 0})
    ramped = _world({**step, "ramp_days": 5})
    day = START + timedelta(days=6)  # past the ramp: at full size
    assert _digest(a, "cam1", day) == _digest(b, "cam1", day) == _digest(ramped, "cam1", day)
    assert _digest(ramped, "cam1", START + timedelta(days=1)) != _digest(a, "cam1", START + timedelta(days=1))


def test_shipped_worlds_have_no_ramp_unless_named() -> None:
    cfg = load_world_config(CONFIGS / "world.yaml")
    assert all(d.ramp_days == 0 for d in cfg.drift)  # the demo world: steps, as before ramps existed


@pytest.mark.parametrize(("entry", "message"), [
    ({"ramp_days": -1}, r"drift\.0\.ramp_days: Input should be greater than or equal to 0"),
    ({"ramp_days": 400}, r"drift\.0\.ramp_days: Input should be less than or equal to 365"),
    ({"ramp_days": 1.5}, r"drift\.0\.ramp_days"),
    ({"ramp_days": 10, "end": "2026-01-12"}, r"ramp_days \(10\) is longer than the drift \(3 day"),
    ({"end": "2026-01-01"}, r"end \(2026-01-01\) is before start"),
])
def test_bad_ramps_are_refused_naming_the_field(tmp_path: Path, entry: dict, message: str) -> None:
    raw = yaml.safe_load((CONFIGS / "world.yaml").read_text())
    raw["drift"] = [{"name": "bad", "start": START.isoformat(), "brightness": -30, **entry}]
    p = tmp_path / "w.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=message):
        load_world_config(p)
