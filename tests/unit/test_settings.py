from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from detloop.settings import ConfigError, load_settings, parse_as_of

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def _base() -> dict:
    return yaml.safe_load((REPO / "configs" / "local.yaml").read_text())


@pytest.mark.parametrize("name", ["local.yaml", "test.yaml", "production.example.yaml"])
def test_shipped_configs_validate(name: str) -> None:
    s = load_settings(REPO / "configs" / name, env={})
    assert s.classes[-1] == "star"
    assert s.source and s.source.endswith(name)


def test_unknown_key_is_rejected_with_path(tmp_path: Path) -> None:
    data = _base()
    data["selection"]["budgett"] = 5
    with pytest.raises(ConfigError, match=r"selection\.budgett: unknown key"):
        load_settings(_write(tmp_path, data), env={})


def test_out_of_range_names_field_and_bound(tmp_path: Path) -> None:
    data = _base()
    data["selection"]["control_share"] = 0.9
    with pytest.raises(ConfigError) as exc:
        load_settings(_write(tmp_path, data), env={})
    msg = str(exc.value)
    assert "selection.control_share" in msg and "0.5" in msg and "0.9" in msg


def test_wrong_type_and_literal(tmp_path: Path) -> None:
    data = _base()
    data["model"]["input_size"] = "big"
    data["selection"]["aggregation"] = "median"
    with pytest.raises(ConfigError) as exc:
        load_settings(_write(tmp_path, data), env={})
    msg = str(exc.value)
    assert "model.input_size" in msg
    assert "selection.aggregation: must be one of" in msg and "'topk'" in msg


def test_config_check_refuses_unknown_selection_names_listing_the_valid_ones(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    data = _base()
    data["selection"]["strategy"] = "entropee"
    data["selection"]["diversity"] = "kcentre"
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as exc:
        load_settings(path, env={})
    msg = str(exc.value)
    assert "selection.strategy: must be one of" in msg and "'entropy'" in msg and "'committee'" in msg
    assert "'entropee'" in msg and "selection.diversity: must be one of" in msg and "'filter_kcenter'" in msg
    res = CliRunner().invoke(app, ["config", "check", "--config", str(path)])
    assert res.exit_code != 0 and isinstance(res.exception, ConfigError)


def test_secret_blocks_fill_only_missing_secrets(tmp_path: Path) -> None:
    # a data dir without the secrets.env a running stack writes (`make demo` leaves one in .detloop)
    s = load_settings(REPO / "configs" / "local.yaml", env={"AWS_ACCESS_KEY_ID": "from-env"},
                      overrides={"data_dir": str(tmp_path)})
    s.s3.secret_block = "s3-keys"
    s.label_studio.secret_block = "ls-token"
    s.label_studio.api_token = None
    asked: list[str] = []

    def load(name: str) -> object:
        asked.append(name)
        return {"access_key_id": "from-block", "secret_access_key": "sk"} if name == "s3-keys" else "tok"

    s.fill_secret_blocks(load)
    assert s.s3_credentials() == ("from-env", "sk") and s.label_studio_token() == "tok"
    assert asked == ["s3-keys", "ls-token"]
    s.fill_secret_blocks(lambda n: pytest.fail("all secrets are set: no block is read"))


def test_env_overrides_are_typed(tmp_path: Path) -> None:
    s = load_settings(
        REPO / "configs" / "local.yaml",
        env={"DETLOOP_SELECTION__BUDGET": "80", "DETLOOP_GATE__AUTO_PROMOTE": "false", "DETLOOP_DATA_DIR": str(tmp_path)},
    )
    assert s.selection.budget == 80
    assert s.gate.auto_promote is False
    assert s.data_dir == tmp_path
    t = load_settings(REPO / "configs" / "local.yaml", env={
        "DETLOOP_PREFECT__DASK_ADDRESS": "null", "DETLOOP_PREFECT__RETRY_DELAYS_SECONDS": "[1, 5]",
        "DETLOOP_CONFIG": "ignored.yaml", "DETLOOP_TEST_KEEP_STACK": "1"},
        overrides={"prefect": {"retries": 7}, "selection": {"budget": 3}})
    assert t.prefect.dask_address is None and t.prefect.retry_delays_seconds == [1.0, 5.0]
    assert t.prefect.retries == 7 and t.selection.budget == 3  # a run's overrides win over env and file
    assert t.selection.strategy == s.selection.strategy  # the rest of the section is the file's
    with pytest.raises(ConfigError, match=r"prefect\.retry_delays_seconds"):
        load_settings(REPO / "configs" / "local.yaml", env={"DETLOOP_PREFECT__RETRY_DELAYS_SECONDS": "[-1]"})


def test_env_override_out_of_range_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"selection\.budget"):
        load_settings(REPO / "configs" / "local.yaml", env={"DETLOOP_SELECTION__BUDGET": "0"})


def test_secrets_refused_in_file(tmp_path: Path) -> None:
    data = _base()
    data["label_studio"]["api_token"] = "abc"
    with pytest.raises(ConfigError, match="secrets are not allowed"):
        load_settings(_write(tmp_path, data), env={})


def test_secrets_from_env_are_masked() -> None:
    s = load_settings(
        REPO / "configs" / "local.yaml",
        env={"AWS_ACCESS_KEY_ID": "AKIAXXX", "AWS_SECRET_ACCESS_KEY": "shh", "LABEL_STUDIO_API_KEY": "tok123"},
    )
    assert s.s3_credentials() == ("AKIAXXX", "shh")
    assert s.label_studio_token() == "tok123"
    dumped = str(s.masked_dump())
    assert "shh" not in dumped and "tok123" not in dumped and "********" in dumped
    assert "shh" not in repr(s)


def test_secrets_file_in_data_dir(tmp_path: Path) -> None:
    (tmp_path / "secrets.env").write_text("DETLOOP_S3__ACCESS_KEY_ID=k1\nDETLOOP_S3__SECRET_ACCESS_KEY=s1\n")
    s = load_settings(REPO / "configs" / "local.yaml", env={"DETLOOP_DATA_DIR": str(tmp_path)})
    assert s.s3_credentials() == ("k1", "s1")


def test_duplicate_classes_rejected(tmp_path: Path) -> None:
    data = _base()
    data["classes"] = ["a", "b", "a"]
    with pytest.raises(ConfigError, match="repeated"):
        load_settings(_write(tmp_path, data), env={})


def test_missing_file_and_bad_band(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.yaml", env={})
    data = _base()
    data["selection"]["ambiguous_band"] = [0.7, 0.2]
    with pytest.raises(ConfigError, match="ambiguous_band"):
        load_settings(_write(tmp_path, data), env={})


def test_parse_as_of() -> None:
    assert parse_as_of("2026-01-12").isoformat() == "2026-01-12"
    with pytest.raises(ConfigError, match="as_of"):
        parse_as_of("last monday")


def test_nms_and_tiling_settings_are_validated_with_the_field_and_range() -> None:
    with pytest.raises(ConfigError, match=r"model\.nms\.sigma: Input should be greater than 0"):
        load_settings(REPO / "configs" / "local.yaml", env={}, overrides={"model": {"nms": {"sigma": 0}}})
    with pytest.raises(ConfigError, match=r"model\.tiling\.tile: Input should be greater than or equal to 32"):
        load_settings(REPO / "configs" / "local.yaml", env={}, overrides={"model": {"tiling": {"tile": 16}}})
    with pytest.raises(ConfigError, match=r"overlap must be in \[0, tile\) = \[0, 256\), got 300"):
        load_settings(REPO / "configs" / "local.yaml", env={},
                      overrides={"model": {"tiling": {"cameras": {"cam2": {"tile": 256, "overlap": 300}}}}})
    with pytest.raises(ConfigError, match=r"model\.nms\.method: must be one of"):
        load_settings(REPO / "configs" / "local.yaml", env={}, overrides={"model": {"nms": {"method": "softer"}}})
    s = load_settings(REPO / "configs" / "local.yaml", env={},
                      overrides={"model": {"tiling": {"cameras": {"cam2": {"enabled": True, "tile": 256}}}}})
    cam2, cam1 = s.model.tiling.for_camera("cam2"), s.model.tiling.for_camera("cam1")
    assert (cam2.enabled, cam2.tile, cam2.overlap) == (True, 256, s.model.tiling.overlap)
    assert cam1 == s.model.tiling and not cam1.enabled


# ---- reliability settings (locks, the pixel cap, the unknown-label policy), invalid YAML ----------------------
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


def test_config_check_notes_a_control_arm_too_small_for_live_accuracy(tmp_path: Path) -> None:
    """:func:`tasks.live_accuracy.calibration_advisory`: the weekly control frames of ``drift.live_rounds`` rounds
    against ``drift.live_min_frames`` (no live mAP, no label-free calibration, no release of carried cameras)."""
    from typer.testing import CliRunner

    from cli.main import app
    from tasks.live_accuracy import calibration_advisory

    assert calibration_advisory(load_settings(REPO / "configs" / "local.yaml", env={})) is None
    small = {"selection": {"budget": 24, "control_share": 0.1, "control_min": 4, "control_pool_rounds": 1},
             "drift": {"live_rounds": 4, "live_min_frames": 20}}
    note = calibration_advisory(load_settings(REPO / "configs" / "local.yaml", overrides=small, env={}))
    assert note is not None and "draws 4 control frame(s)" in note and "at most 16" in note
    assert "drift.live_min_frames 20" in note
    enough = {**small, "drift": {"live_rounds": 5, "live_min_frames": 20}}  # 4 x 5 = 20: reached
    assert calibration_advisory(load_settings(REPO / "configs" / "local.yaml", overrides=enough, env={})) is None
    data = _base()
    data["selection"].update(small["selection"])
    data["drift"] = small["drift"]
    res = CliRunner().invoke(app, ["config", "check", "--config", str(_write(tmp_path, data))])
    assert res.exit_code == 0 and "note: no live accuracy" in res.output


def test_the_live_accuracy_record_carries_the_advisory_until_a_calibration_exists() -> None:
    from tasks.live_accuracy import live_accuracy
    from tests.fakes import FakeStore

    small = {"selection": {"budget": 24, "control_min": 4, "control_pool_rounds": 1}}
    got = live_accuracy(load_settings(REPO / "configs" / "local.yaml", overrides=small, env={}), FakeStore(), "1",
                        None, None)
    assert got.atc_threshold is None and got.notes[0].startswith("no labelled control frames yet")
    assert len(got.notes) == 2 and "drift.live_min_frames" in got.notes[1]
    ok = live_accuracy(load_settings(REPO / "configs" / "local.yaml", env={}), FakeStore(), "1", None, None)
    assert len(ok.notes) == 1  # the shipped control arm reaches a live mAP: no advisory
