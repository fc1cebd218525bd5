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
    assert r.overrides() == {"training": {"finetune_epochs": 3, "finetune_max_images": None}, "gate": {"min_delta": 0.01}}
    with pytest.raises(ValidationError):
        RetrainParams()


def test_flow_parameter_schema_has_ranges_and_descriptions() -> None:
    from flows.loop import select_for_labeling

    schema = select_for_labeling.parameters.model_dump()
    props = schema["definitions"]["SelectParams"]["properties"]
    budget = props["budget"]
    assert budget["type"] == "integer" and budget["minimum"] == 1 and "description" in budget
    assert "ge" not in budget  # a constraint the server would not enforce


def test_forms_offer_enums_and_no_none_branch() -> None:
    """What the Prefect UI renders: a drop-down for names from a fixed list, no "Property is type None"."""
    import json
    from typing import get_args

    from detloop.settings import StrategyName
    from flows.loop import bootstrap, retrain_and_promote, select_for_labeling, watch_rounds

    props = select_for_labeling.parameters.model_dump()["definitions"]["SelectParams"]["properties"]
    assert props["strategy"]["enum"] == list(get_args(StrategyName))
    assert {"max", "mean", "sum", "topk"} == set(props["aggregation"]["enum"])
    assert "kcenter" in props["diversity"]["enum"]
    for f in (select_for_labeling, watch_rounds, retrain_and_promote, bootstrap):
        text = json.dumps(f.parameters.model_dump())
        assert '"null"' not in text, f.name  # optional fields carry no None type


def test_deployments_prefill_the_configured_values() -> None:
    from detloop.settings import REPO_ROOT, load_settings
    from flows.params import SelectParams, configured_defaults

    s = load_settings(REPO_ROOT / "configs" / "test.yaml")
    d = configured_defaults("select-for-labeling", s)["params"]
    assert d["budget"] == s.selection.budget == 24 and d["strategy"] == s.selection.strategy
    SelectParams(**d)  # valid parameters
    assert configured_defaults("promote", s) == {}
    from flows.params import DriftParams

    drift = DriftParams(**configured_defaults("drift-monitor", s)["params"])
    assert drift.overrides()["drift"]["pool_days"] == s.drift.pool_days == 2
    assert drift.overrides()["drift"]["alarm_strong_alpha"] == s.drift.alarm_strong_alpha
    off = s.model_copy(update={"drift": s.drift.model_copy(update={"alarm_strong_alpha": None})})
    assert "alarm_strong_alpha" not in configured_defaults("drift-monitor", off)["params"]


def test_flow_run_names_say_which_week_or_round(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.runtime import flow_run

    from flows.common import run_name

    monkeypatch.setattr(flow_run, "parameters", {"params": {"round_id": "detloop-2026-01-12", "config": None}})
    assert run_name("retrain", "round_id")() == "retrain detloop-2026-01-12"
    monkeypatch.setattr(flow_run, "parameters", {"params": {"as_of": None}})
    assert run_name("select", "as_of", default=lambda: "2026-01-19")() == "select 2026-01-19"
    assert run_name("rollback")() == "rollback"


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


def test_md_fields_keeps_a_wide_record_two_columns_wide() -> None:
    from flows.common import md_fields

    rec = {f"field_{i}": i / 3 for i in range(16)}
    lines = md_fields(rec).splitlines()
    assert len(lines) == 2 + 16 and all(line.count("|") == 3 for line in lines)
    assert lines[3] == "| field_1 | 0.3333 |"


def test_demo_prints_one_fixed_width_row_per_week() -> None:
    from datetime import date

    from flows.demo import table_header, table_row, week_row

    result = {"labelled_frames": 58, "labelled_boxes": 140, "golden_map_champion": 0.4301234567891234,
              "golden_map_challenger": 0.45912345678, "outcome": "passed", "version": "2",
              "slices": [{"slice": "golden", "frames": 200}, {"slice": "control", "frames": 6,
                                                             "champion_map": 0.3, "challenger_map": 0.35}]}
    row = week_row(1, date(2026, 1, 12), "r1", result, 95.0)
    line = table_row(row)
    assert len(line) == len(table_header())
    assert "0.430" in line and "0.459" in line and "0.350" in line and "1.6" in line
    assert "0.43012" not in line and "{" not in line


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
