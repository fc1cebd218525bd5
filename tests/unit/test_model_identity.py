"""A registry version number belongs to one model: its local copy and its cached predictions are the model's.

Version numbers restart with every registered model: a demo's ``drift-demo`` v1 and a test's ``flowtest-...`` v1
sharing a data dir once shared ``<data_dir>/champion/v1`` (the second model was scored, fine-tuned and monitored
with the first one's files: found when the drift demo's fine-tuning loaded a test's stub checkpoint), and the
predictions cached for "v1" on a frame set were read back for either model.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from types import SimpleNamespace

from detloop.settings import load_settings
from flows.selection import predictions_cache_prefix
from tasks.registry import champion_dir, fetch_champion, load_champion
from tasks.scoring import ModelRef
from tests.fakes import FakeRegistry


def _version_files(root: Path, body: bytes) -> Path:
    (root / "weights").mkdir(parents=True)
    (root / "scoring").mkdir()
    (root / "weights" / "best.pt").write_bytes(body)
    (root / "scoring" / "meta.json").write_text("{}")
    return root


def test_two_models_with_the_same_version_number_get_their_own_local_copy(tmp_path: Path) -> None:
    settings = load_settings("configs/test.yaml", env={}, overrides={"data_dir": str(tmp_path / "data")})
    first, second = FakeRegistry("flowtest-a", tmp_path / "ra"), FakeRegistry("drift-demo", tmp_path / "rb")
    first.add_model(_version_files(tmp_path / "a", b"weights of flowtest-a"))
    second.add_model(_version_files(tmp_path / "b", b"weights of drift-demo"))

    a = fetch_champion(settings, first)
    b = fetch_champion(settings, second)
    assert a is not None and b is not None and a.version == b.version == "1"
    assert a.local_dir != b.local_dir
    assert a.weights.read_bytes() == b"weights of flowtest-a"
    assert b.weights.read_bytes() == b"weights of drift-demo"
    assert json.loads((b.local_dir / "champion.json").read_text())["model"] == "drift-demo"
    assert b.local_dir == champion_dir(settings, "drift-demo", "1")
    # the first model again: its own copy, not the one downloaded last
    assert load_champion(settings, first).joinpath("weights", "best.pt").read_bytes() == b"weights of flowtest-a"


def test_a_copy_of_another_model_in_the_folder_is_replaced(tmp_path: Path) -> None:
    """A folder given explicitly (or left by an older layout) holding another model's version is downloaded again."""
    settings = load_settings("configs/test.yaml", env={}, overrides={"data_dir": str(tmp_path / "data")})
    first, second = FakeRegistry("flowtest-a", tmp_path / "ra"), FakeRegistry("drift-demo", tmp_path / "rb")
    first.add_model(_version_files(tmp_path / "a", b"weights of flowtest-a"))
    second.add_model(_version_files(tmp_path / "b", b"weights of drift-demo"))
    shared = tmp_path / "shared"
    load_champion(settings, first, shared)
    load_champion(settings, second, shared)
    assert (shared / "weights" / "best.pt").read_bytes() == b"weights of drift-demo"


def test_a_model_name_is_a_safe_folder_name(tmp_path: Path) -> None:
    settings = load_settings("configs/test.yaml", env={}, overrides={"data_dir": str(tmp_path / "data")})
    d = champion_dir(settings, "team/det ector", "3")
    assert d == tmp_path / "data" / "champion" / "team_det_ector" / "v3"


def test_cached_predictions_of_a_registry_version_are_keyed_by_the_model_name(tmp_path: Path) -> None:
    settings = load_settings("configs/test.yaml", env={}, overrides={"data_dir": str(tmp_path / "data")})
    other = settings.model_copy(update={"mlflow": settings.mlflow.model_copy(update={"model_name": "drift-demo"})})
    frames = [SimpleNamespace(key=f"frames/cam0/{i}.jpg", etag=f"e{i}") for i in range(3)]
    sample = SimpleNamespace(frames=frames, window=(date(2026, 1, 5), date(2026, 1, 12)))
    v1 = ModelRef(version="1")
    assert predictions_cache_prefix(settings, sample, v1) != predictions_cache_prefix(other, sample, v1)
    assert predictions_cache_prefix(settings, sample, v1) == predictions_cache_prefix(settings, sample, v1)
    # a file is its content: the same file scores the same for any configured model
    art = tmp_path / "model.onnx"
    art.write_bytes(b"onnx bytes")
    f = ModelRef(path=str(art))
    assert predictions_cache_prefix(settings, sample, f) == predictions_cache_prefix(other, sample, f)
