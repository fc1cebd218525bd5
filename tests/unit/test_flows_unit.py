from __future__ import annotations

from datetime import date

import pytest
from pydantic import ValidationError

from detloop.errors import DataError, ServiceError
from flows.common import is_transient, md_table
from flows.loop import round_id_for
from flows.params import RetrainParams, SelectParams


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


def test_only_service_failures_are_transient() -> None:
    assert is_transient(ServiceError("S3 at http://x is down"))
    assert not is_transient(DataError("bad input"))
    assert not is_transient(RuntimeError("bug"))
    try:
        try:
            raise ConnectionError("refused")
        except ConnectionError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert is_transient(outer)


def test_md_table() -> None:
    out = md_table([{"a": 1, "b": 0.123456, "c": None, "d": "x|y"}])
    assert out.splitlines()[0] == "| a | b | c | d |"
    assert "0.1235" in out and "| - |" in out and "x\\|y" in out
    assert md_table([]) == "_(none)_\n"
