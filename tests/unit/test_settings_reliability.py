"""Settings added for reliability (locks, the pixel cap, the unknown-label policy) and a one-line invalid YAML."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from detloop.settings import ConfigError, load_settings

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def _base() -> dict:
    return yaml.safe_load((REPO / "configs" / "local.yaml").read_text())


@pytest.mark.parametrize(("section", "field", "bad", "bound"), [
    ("locks", "lease_seconds", 1, "2"),
    ("sampling", "max_image_pixels", 0, "64"),
    ("label_studio", "unknown_labels", "ignore", "'quarantine'"),
])
def test_reliability_settings_are_range_checked(tmp_path: Path, section: str, field: str, bad: object,
                                                bound: str) -> None:
    data = _base()
    data.setdefault(section, {})[field] = bad
    with pytest.raises(ConfigError) as exc:
        load_settings(_write(tmp_path, data), env={})
    msg = str(exc.value)
    assert f"{section}.{field}" in msg and bound in msg and "\n" not in msg
    s = load_settings(REPO / "configs" / "local.yaml", env={})
    assert (s.locks.lease_seconds, s.sampling.max_image_pixels, s.label_studio.unknown_labels) == (
        120.0, 50_000_000, "quarantine")


def test_invalid_yaml_is_one_line_with_its_position(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("classes: [a, b]\nselection: {budget: [1, 2\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(p, env={})
    msg = str(exc.value)
    assert "\n" not in msg and "not valid YAML (line 3, column 1)" in msg, msg
