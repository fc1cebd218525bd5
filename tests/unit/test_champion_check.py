"""The champion alias against the promotion log: detloop's own promotion whose log line an outage lost is
logged on the next check, not reported as a move in MLflow's UI; a real UI move still is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tasks.registry import promoted_after_log


def test_promoted_after_log_reads_the_versions_own_promotion_tags() -> None:
    log = [{"at": "2026-01-05T10:00:00+00:00", "action": "promote", "version": "1"}]
    tagged = {"detloop.promotion": "promote", "detloop.promoted_at": "2026-01-12T10:00:00+00:00"}
    assert promoted_after_log(tagged, log)
    assert not promoted_after_log({}, log)  # the UI's alias buttons tag nothing
    assert not promoted_after_log({**tagged, "detloop.promoted_at": "2026-01-01T10:00:00+00:00"}, log)  # old
    assert not promoted_after_log({**tagged, "detloop.promotion": "rolled-back"}, log)
    assert promoted_after_log(tagged, [])


@pytest.fixture
def world(tmp_path: Path) -> Any:
    from detloop.settings import load_settings
    from tests.fakes import fake_clients

    s = load_settings("configs/test.yaml", env={}, overrides={"data_dir": str(tmp_path / "data")})
    c = fake_clients(s.mlflow.model_name, tmp_path / "reg")
    files = tmp_path / "files"
    (files / "scoring").mkdir(parents=True)
    (files / "scoring" / "model.onnx").write_bytes(b"onnx")
    return s, c, files


def test_an_outage_after_the_alias_moved_is_not_mistaken_for_a_move_in_mlflows_ui(
        world: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import tasks.registry as registry
    from detloop.errors import ServiceUnavailable
    from flows import steps
    from tasks.registry import check_champion, promote, read_promotion_log

    s, c, files = world
    v1 = c.registry.add_model(files, run_id="r1", alias=None)
    promote(s, c.registry, c.store, v1, override=True, reason="first", actor="test")
    v2 = c.registry.add_model(files, run_id="r2", alias=None)
    real_append = registry._append_log

    def store_down(*a: Any, **k: Any) -> None:
        raise ServiceUnavailable("s3 at http://127.0.0.1:8333 is down")

    import time

    time.sleep(1.1)  # promotion times are kept to the second
    monkeypatch.setattr(registry, "_append_log", store_down)
    with pytest.raises(ServiceUnavailable):
        promote(s, c.registry, c.store, v2, override=True, reason="second", actor="ops")
    monkeypatch.setattr(registry, "_append_log", real_append)

    got = check_champion(s, c.registry, c.store)
    assert (got.alias_version, got.logged_version, got.unlogged, got.drifted) == (v2, v1, True, False)
    fixed = steps.check_champion.fn(s, c)  # the flows' check logs the lost line
    assert (fixed.logged_version, fixed.drifted) == (v2, False)
    entry = read_promotion_log(c.store, s)[-1]
    assert entry["version"] == v2 and entry["actor"] == "ops" and "lost to an outage" in entry["reason"]
    assert steps.check_champion.fn(s, c).logged_version == v2 and len(read_promotion_log(c.store, s)) == 2

    # MLflow's alias buttons back to v1 (promoted before the log's last line): a real drift, reported
    c.registry.set_alias("champion", v1)
    moved = check_champion(s, c.registry, c.store)
    assert moved.drifted and not moved.unlogged and "MOVED OUTSIDE DETLOOP" in moved.message()
    assert len(read_promotion_log(c.store, s)) == 2
