"""On the real S3: a drift round's gate slices include the drifted cameras' held-out frames since the drift."""

from __future__ import annotations

import uuid

from tests.unit.test_drift_gate import drift_round_scenario, drifted_shas


def test_a_drift_rounds_drifted_slice_on_s3(stack_settings):  # type: ignore[no-untyped-def]
    from detloop.clients.s3 import S3Store
    from tasks.slices import build_slices, drift_focus

    tag = uuid.uuid4().hex[:8]
    s = stack_settings.model_copy(deep=True)
    s.label_studio.project_title = f"detloop-it-drifted-{tag}"
    store = S3Store(s)
    sc = drift_round_scenario(store, s, tag)
    focus = drift_focus(store, s, sc["round_id"])
    assert focus is not None and focus.episode_id == sc["episode"] and focus.cameras == ("cam2",)
    assert drift_focus(store, s, sc["weekly_id"]) is None
    slices = build_slices(store, s, sc["golden"], sc["version"], sc["round_id"], focus)
    assert drifted_shas(slices) == sc["want"]
    assert [sl.name for sl in slices][:1] == ["golden"] and "round" in [sl.name for sl in slices]
