from __future__ import annotations

from datetime import date

import pytest
from pydantic import ValidationError

from detloop.errors import DataError, LockBusy, NotFound, ServiceRejected, ServiceUnavailable
from flows.common import md_table, retry_on_network
from flows.params import RetrainParams, SelectParams
from tasks.rounds import round_id_for


def test_round_ids_are_deterministic_and_scoped() -> None:
    a = round_id_for("detloop", date(2026, 1, 12))
    assert a == "detloop-2026-01-12" and a == round_id_for("detloop", date(2026, 1, 12))
    assert round_id_for("Acme Cams!", date(2026, 1, 12)).startswith("acme-cams-2026-01-12")
    focused = round_id_for("detloop", date(2026, 1, 12), cameras=["cam2", "cam1"])
    assert focused != a and focused == round_id_for("detloop", date(2026, 1, 12), cameras=["cam1", "cam2"])
    assert round_id_for("detloop", date(2026, 1, 12), attempt=1) == a + "-2"


def test_params_validate_and_map_to_overrides() -> None:
    p = SelectParams(as_of="2026-01-12", budget=40, strategy="margin", window_days=14)
    assert p.overrides() == {"sampling": {"window_days": 14}, "selection": {"budget": 40, "strategy": "margin"}}
    with pytest.raises(ValidationError):
        SelectParams(budget=0)
    with pytest.raises(ValidationError):
        SelectParams(bogus=1)
    r = RetrainParams(round_id="x", epochs=3, gate={"min_delta": 0.01})
    assert r.overrides() == {"training": {"finetune_epochs": 3}, "gate": {"min_delta": 0.01}}
    with pytest.raises(ValidationError):
        RetrainParams()


def test_flow_parameter_schema_has_ranges_and_descriptions() -> None:
    from flows.loop import select_for_labeling

    schema = select_for_labeling.parameters.model_dump()
    props = schema["definitions"]["SelectParams"]["properties"]
    budget = next(x for x in props["budget"]["anyOf"] if x.get("type") == "integer")
    assert budget["minimum"] == 1 and "description" in props["budget"]


def test_flows_retry_only_unavailable_services() -> None:
    """The one retry layer: a Prefect task retries on ServiceUnavailable and on nothing else."""
    from prefect.states import Failed

    def retried(exc: BaseException) -> bool:
        return retry_on_network(None, None, Failed(data=exc))

    assert retried(ServiceUnavailable("S3 at http://x is not reachable"))
    for exc in (ServiceRejected("Label Studio at http://x: HTTP 400"), NotFound("no such key"), LockBusy("held"),
                DataError("bad input"), RuntimeError("bug"), ConnectionError("raw, unclassified")):
        assert not retried(exc), exc


def test_md_table() -> None:
    out = md_table([{"a": 1, "b": 0.123456, "c": None, "d": "x|y"}])
    assert out.splitlines()[0] == "| a | b | c | d |"
    assert "0.1235" in out and "| - |" in out and "x\\|y" in out
    assert md_table([]) == "_(none)_\n"


def test_scoring_chunks_follow_the_task_runner() -> None:
    from detloop.settings import load_settings
    from flows.common import chunks

    s = load_settings("configs/test.yaml", env={})
    items = list(range(25))
    assert chunks(items, s) == [items]  # threads: one task, the scorer uses every core
    s.prefect.task_runner = "dask"
    s.prefect.score_chunk_frames = 10
    got = chunks(items, s)
    assert [len(c) for c in got] == [10, 10, 5] and [x for c in got for x in c] == items
    assert chunks([], s) == [[]]


def test_task_runner_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from prefect.task_runners import ThreadPoolTaskRunner

    from detloop.settings import ConfigError, load_settings
    from flows.common import make_task_runner

    s = load_settings("configs/test.yaml", env={})
    assert isinstance(make_task_runner(s), ThreadPoolTaskRunner)
    s.prefect.task_runner = "dask"
    s.prefect.dask_address = "tcp://10.0.0.5:8786"
    runner = make_task_runner(s)
    assert type(runner).__name__ == "DaskTaskRunner" and runner.address == "tcp://10.0.0.5:8786"
    monkeypatch.setitem(sys.modules, "prefect_dask", None)  # the extra not installed
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[dask\]'"):
        make_task_runner(s)


def test_demo_stops_with_the_gate_reason_when_the_bootstrap_promotes_nothing(monkeypatch):  # type: ignore[no-untyped-def]
    """Error path (fake registry): the demo names the rejected bootstrap and why, instead of failing a week later."""
    import pytest

    import tasks.registry as reg
    from detloop.errors import DetloopError
    from detloop.settings import Settings
    from flows.demo import SIZES, _require_champion

    versions = [{"version": "1", "gate": "rejected", "dataset_version": "0ef2",
                 "reasons": "golden mAP50-95 0.0040 vs floor 0.0100"}]
    monkeypatch.setattr(reg, "list_models", lambda r: versions)
    monkeypatch.setattr(reg, "champion_version", lambda r: None)
    with pytest.raises(DetloopError) as err:
        _require_champion(Settings(classes=["a"]), "tiny", SIZES["tiny"])
    msg = str(err.value)
    assert "version 1 was rejected: golden mAP50-95 0.0040 vs floor 0.0100" in msg and "--size tiny" in msg
    monkeypatch.setattr(reg, "champion_version", lambda r: object())
    _require_champion(Settings(classes=["a"]), "tiny", SIZES["tiny"])  # a champion: nothing to say
