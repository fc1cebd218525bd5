"""Sample and score a published synthetic world through the real S3 of the test stack, then select.

Isolation: every run publishes the world under its own production prefix (``it-sel-<uuid>/frames/``)
and writes runs/predictions under unique ids, so parallel sessions never see each other's frames.
The model is a randomly initialised YOLO11n exported as a scoring artifact (no training needed):
these tests check the plumbing and the contracts, not accuracy.
"""

from __future__ import annotations

import json
import uuid
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pytest

START = date(2026, 2, 2)
DAYS = 3
PER_DAY = 4
AS_OF = date(2026, 2, 5)  # window of 7 days ends here: covers START .. START + 2


def run_selection(settings: Any, as_of: date, model: Path, run_id: str | None = None,
                  labelled_counts: list[int] | None = None, write: bool = True) -> Any:
    """The selection subflow (a real Prefect flow run) with this module's settings as overrides."""
    from flows.selection import select_frames
    from tests.integration.conftest import TEST_CONFIG

    overrides = {"data_dir": str(settings.data_dir), "s3": {"production_prefix": settings.s3.production_prefix},
                 "selection": {"budget": settings.selection.budget, "control_min": settings.selection.control_min}}
    return select_frames(as_of, run_id or f"it-sel-{uuid.uuid4().hex[:8]}", str(TEST_CONFIG), overrides,
                         model_path=str(model), labelled_counts=labelled_counts, write=write)


@pytest.fixture(scope="module")
def world(stack_settings: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from detloop.clients.s3 import S3Store
    from detloop.world.publish import publish_world

    settings = stack_settings.model_copy(deep=True)
    tag = uuid.uuid4().hex[:8]
    settings.s3.production_prefix = f"it-sel-{tag}/frames/"
    store = S3Store(settings)
    rep = publish_world(settings, START, DAYS, PER_DAY, corrupt=3, store=store)
    # one exact duplicate of a real frame (same camera/day, new key) and one frame outside the window
    first = next(iter(store.list(settings.s3.production_bucket, settings.s3.production_prefix)))
    body = store.get_bytes(settings.s3.production_bucket, first.key)
    dup_key = first.key.rsplit("/", 1)[0] + "/235959-dup.jpg"
    store.put_bytes(settings.s3.production_bucket, dup_key, body, "image/jpeg")
    outside = f"{settings.s3.production_prefix}camera=cam0/date={AS_OF.isoformat()}/000001-out.jpg"
    store.put_bytes(settings.s3.production_bucket, outside, body, "image/jpeg")

    from tasks.export import make_random_artifact

    art = make_random_artifact(tmp_path_factory.mktemp("model") / "rand", list(settings.classes),
                               settings.model.input_size)
    return {"settings": settings, "store": store, "report": rep, "dup_key": dup_key, "outside": outside,
            "first": first.key, "artifact": Path(art), "tag": tag}


def test_sample_window_quarantine_dedup_and_manifest(world: dict[str, Any]) -> None:
    from tasks.sampling import read_manifest, sample

    s, store = world["settings"], world["store"]
    run_id = f"it-sel-{world['tag']}-a"
    res = sample(s, AS_OF, store, run_id=run_id)
    n_real = world["report"].frames  # 5 cameras x 3 days x 4 frames
    keys = {f.key for f in res.frames}
    assert res.stats["eligible"] == n_real + 3 + 1  # real + corrupt + duplicate (outside excluded)
    assert world["outside"] not in keys
    assert {f.date for f in res.frames} <= {"2026-02-02", "2026-02-03", "2026-02-04"}
    # every corrupt object is quarantined with a reason; none is sampled
    q = {x.key: x.reason for x in res.quarantined}
    assert set(world["report"].corrupt_keys) == set(q)
    assert any("zero-byte" in r for r in q.values()) and any("truncated" in r for r in q.values())
    assert not set(q) & keys
    # the exact duplicate is removed (one of the pair stays)
    assert len({world["dup_key"], world["first"]} & keys) == 1 and len(res.duplicates) >= 1
    assert res.stats["sampled"] == len(res.frames) <= n_real
    # manifests in S3 round-trip
    back = read_manifest(store, s, res.manifest_key)
    assert [f.key for f in back] == [f.key for f in res.frames]
    qm = store.get_json(s.s3.data_bucket, res.quarantine_key)
    assert len(qm["quarantined"]) == 3


def test_sample_caps_and_focus(world: dict[str, Any]) -> None:
    from tasks.sampling import sample

    s = world["settings"].model_copy(deep=True)
    s.sampling.max_per_camera_per_day = 2
    s.sampling.max_frames = 1000
    res = sample(s, AS_OF, world["store"], cameras=["cam1", "cam2"], dates=[date(2026, 2, 3)])
    assert {f.camera for f in res.frames} == {"cam1", "cam2"}
    assert {f.date for f in res.frames} == {"2026-02-03"}
    assert len(res.frames) == 4  # 2 cameras x 1 day x cap 2


def test_empty_window_selects_nothing_with_a_message(world: dict[str, Any]) -> None:
    run = run_selection(world["settings"], date(2020, 1, 1), model=world["artifact"], write=False)
    assert run.result is None and run.scoring is None
    assert any("empty window" in n for n in run.notes)


def test_missing_champion_is_a_clear_error(world: dict[str, Any]) -> None:
    from detloop.clients.registry import RegistryClient
    from detloop.errors import NotFound
    from tasks.scoring import resolve_model

    s = world["settings"].model_copy(deep=True)
    s.mlflow.model_name = f"it-sel-none-{world['tag']}"
    with pytest.raises(NotFound, match="no champion model"):
        resolve_model(s, RegistryClient(s), "champion")


def test_score_store_predictions_and_select(world: dict[str, Any]) -> None:
    from tasks.scoring import read_predictions

    s = world["settings"].model_copy(deep=True)
    s.selection.budget = 12
    s.selection.control_min = 2
    run = run_selection(s, AS_OF, model=world["artifact"], run_id=f"it-sel-{world['tag']}-b",
                        labelled_counts=[50, 40, 30, 20, 1])
    frames = run.scoring.frames
    assert len(frames) == run.sample.stats["sampled"] > 0
    meta_dim = json.loads((world["artifact"] / "meta.json").read_text())["embedding_dim"]
    for f in frames:
        assert f.embedding is not None and f.embedding.shape == (meta_dim,)
        assert 0.0 < f.brightness < 1.0 and 0.0 < f.contrast < 1.0
        assert f.detections.class_scores is not None and f.detections.class_scores.shape[1] == 5
        assert (f.width, f.height) == (640, 480)
        if len(f.detections):
            assert f.detections.xyxy[:, 2].max() <= 640 and f.detections.xyxy[:, 3].max() <= 480
            np.testing.assert_allclose(f.detections.confidence, f.detections.class_scores.max(1), atol=1e-6)
    # selection: exact budget, both arms, report in S3
    res = run.result
    assert len(res.frames) == 12 and len(res.control) == 2
    bucket = s.s3.data_bucket
    report = world["store"].get_json(bucket, run.keys["report"])
    assert report["counts"] == {"pool": len(frames), "selected": 10, "control": 2,
                                "no_detection": report["counts"]["no_detection"]}
    assert set(report["pool"]["arm"]) == {"selected", "control", None}
    assert len(report["pool"]["key"]) == len(frames) and len(report["chosen"]) == 12
    assert world["store"].get_bytes(bucket, run.keys["plot"])[:4] == b"\x89PNG"
    # stored production predictions read back identical
    prefix = run.keys["predictions_predictions"].rsplit("/", 1)[0] + "/"
    back = read_predictions(world["store"], bucket, prefix)
    assert [b.frame.key for b in back] == [f.frame.key for f in frames]
    for a, b in zip(frames, back, strict=True):
        assert b.detections.equals(a.detections, atol=1e-2)
        np.testing.assert_allclose(b.embedding, a.embedding, rtol=1e-2, atol=1e-2)  # stored as float16


def test_cli_run_prints_report(world: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    s = world["settings"]
    monkeypatch.setenv("DETLOOP_S3__PRODUCTION_PREFIX", s.s3.production_prefix)
    result = CliRunner().invoke(app, ["select", "run", "--as-of", AS_OF.isoformat(), "--model", str(world["artifact"]),
                                      "--budget", "6", "--no-write", "--camera", "cam3"])
    assert result.exit_code == 0, result.output
    assert "| rank | arm |" in result.output and "cam3" in result.output
    bad = CliRunner().invoke(app, ["select", "run", "--as-of", AS_OF.isoformat(), "--strategy", "nope", "--no-write"])
    assert bad.exit_code != 0
    assert "entropy" in str(bad.exception) or "entropy" in bad.output


def test_read_frame_presigned_matches_boto_and_errors_alike(world: dict[str, Any]) -> None:
    """The scoring reader's presigned GET returns the same bytes as boto3, and a missing key fails the same way."""
    from detloop.clients.s3 import S3Store
    from detloop.errors import NotFound

    s = world["settings"]
    store = world["store"]
    bucket = s.s3.production_bucket
    odd = f"{s.s3.production_prefix}odd key/ä+%20 frame.jpg"  # needs URL quoting in the presigned URL
    body = store.get_bytes(bucket, world["first"])
    store.put_bytes(bucket, odd, body, "image/jpeg")
    boto_only = s.model_copy(deep=True)
    boto_only.s3.presigned_reads = False
    plain = S3Store(boto_only)
    for key in (world["first"], odd):
        assert store.read_frame(bucket, key) == plain.read_frame(bucket, key) == store.get_bytes(bucket, key)
        # the server accepts detloop's own SigV4 signature (no silent fallback to boto3)
        assert store._get_url(store.presigned_get_url(bucket, key)) == (200, body if key == odd else
                                                                       store.get_bytes(bucket, key))
    # the fast path was taken (and only when enabled): this thread holds a keep-alive connection
    conns = getattr(store._local, "conns", {})
    assert len(conns) == 1 and getattr(plain._local, "conns", None) is None
    # a connection the server has dropped is replaced once, transparently, and the bytes are still right
    import socket

    (conn,) = conns.values()
    conn.sock.shutdown(socket.SHUT_RDWR)
    assert store.read_frame(bucket, odd) == body
    assert next(iter(getattr(store._local, "conns", {}).values())) is not conn
    missing = f"{s.s3.production_prefix}no-such-frame.jpg"
    with pytest.raises(NotFound) as fast_err:
        store.read_frame(bucket, missing)
    with pytest.raises(NotFound) as boto_err:
        store.get_bytes(bucket, missing)
    assert str(fast_err.value) == str(boto_err.value)


def test_s3_outage_while_scoring_fails_caches_nothing_and_a_rerun_scores_every_frame(
        world: dict[str, Any], stack_settings: Any) -> None:
    """The real S3 stops as scoring reads its first frame: the flow fails with ServiceUnavailable naming the URL
    (after the configured retries), nothing is cached and nothing is quarantined; with S3 back, a re-run scores
    them all."""
    from prefect import flow

    from detloop.clients import Clients
    from detloop.clients.s3 import S3Store
    from detloop.errors import ServiceUnavailable
    from flows.selection import predictions_cache_prefix, score_sample
    from infra.stack import down, ensure_up
    from tasks.sampling import sample
    from tasks.scoring import ModelRef

    s, store = world["settings"], world["store"]
    smp = sample(s, AS_OF, store, cameras=["cam1", "cam4"])  # a frame set of its own: no cache from other tests
    assert smp.frames
    class OutageOnFirstRead(S3Store):
        """The real store; the first frame read first stops the real S3 server."""

        stopped = False

        def read_frame(self, bucket: str, key: str) -> bytes:
            if not OutageOnFirstRead.stopped:
                OutageOnFirstRead.stopped = True
                down(stack_settings, services=("s3",))
            return super().read_frame(bucket, key)

    real = Clients.from_settings(s)
    model = ModelRef(path=str(world["artifact"]))
    prefix = predictions_cache_prefix(s, smp, model)

    run_with: dict[str, Any] = {}  # the clients are not flow parameters (nothing of them goes to the API)

    @flow(name="test-scoring-during-s3-outage")
    def scoring() -> Any:
        return score_sample(s, run_with["clients"], smp, model)

    run_with["clients"] = Clients(OutageOnFirstRead(s), real.labels, real.registry)
    try:
        with pytest.raises(ServiceUnavailable) as err:
            scoring()
    finally:
        ensure_up(stack_settings)
    assert OutageOnFirstRead.stopped
    msg = str(err.value)
    assert s.s3.endpoint_url in msg and "not reachable" in msg and "\n" not in msg
    assert not list(store.list(s.s3.data_bucket, prefix))  # nothing cached

    run_with["clients"] = real
    again = scoring()
    assert not again.quarantined and "cached" not in again.timings
    assert [f.frame.key for f in again.frames] == [f.key for f in smp.frames]
    assert store.exists(s.s3.data_bucket, prefix + "meta.json")


def test_rare_class_exemplars_are_labelled_frames_read_from_s3_and_embedded_by_the_model(
        world: dict[str, Any]) -> None:
    """The rare-class search's examples: a labelled version's frames of the asked classes, read from the real S3
    as blobs, scored by the same model as the sample (its embeddings), capped per class."""
    from detloop.clients import Clients
    from detloop.datasets import load_manifest
    from detloop.world.publish import publish_labelled_set
    from flows.selection import LabelledSet, rare_class_exemplars
    from tasks.scoring import ModelRef

    s = world["settings"].model_copy(deep=True)
    s.s3.data_bucket = f"it-rare-{world['tag']}"  # its own versions: "latest" elsewhere is not moved
    s.selection.rare_search.exemplars_per_class = 3
    vid = publish_labelled_set(s, "seed", frames=12, store=world["store"])
    manifest = load_manifest(world["store"], s, vid)
    holding = {c: sum(1 for e in manifest.entries if e.class_counts[c] > 0) for c in range(len(s.classes))}
    classes = [c for c, n in holding.items() if n > 0]
    assert classes
    notes: list[str] = []
    out = rare_class_exemplars(s, Clients.from_settings(s), ModelRef(path=str(world["artifact"])),
                               LabelledSet(vid, manifest), classes, notes)
    dim = json.loads((world["artifact"] / "meta.json").read_text())["embedding_dim"]
    assert out is not None and sorted(out) == classes
    for c in classes:
        assert out[c].shape == (min(3, holding[c]), dim) and np.isfinite(out[c]).all()
    assert any(vid in n and "embedded" in n for n in notes)
    # a version holding none of the asked classes says so instead of searching blind
    empty = [c for c, n in holding.items() if n == 0]
    if empty:
        notes.clear()
        assert rare_class_exemplars(s, Clients.from_settings(s), ModelRef(path=str(world["artifact"])),
                                    LabelledSet(vid, manifest), empty, notes) is None
        assert any("holds no usable frame" in n for n in notes)
