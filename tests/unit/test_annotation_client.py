"""Label Studio client error handling and the simulated annotator's noise (no services)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from label_studio_sdk.core.api_error import ApiError
from pydantic import SecretStr

from detloop.clients.labelstudio import LabelStudioClient
from detloop.detections import Detections
from detloop.errors import DataError, ServiceError
from detloop.settings import REPO_ROOT, load_settings
from detloop.sim.annotator import AnnotatorProfile, annotation_for, degrade, parse_truth


@pytest.fixture()
def client():  # type: ignore[no-untyped-def]
    s = load_settings(REPO_ROOT / "configs" / "test.yaml", env={})
    s.label_studio.api_token = SecretStr("f" * 40)
    sleeps: list[float] = []
    c = LabelStudioClient(s, sdk=object(), retries=3, backoff_s=0.5, sleep=sleeps.append)
    return c, sleeps


def test_network_errors_retry_with_backoff_then_one_line(client) -> None:  # type: ignore[no-untyped-def]
    c, sleeps = client
    calls = []

    def down() -> None:
        calls.append(1)
        raise httpx.ConnectError("refused")

    with pytest.raises(ServiceError) as err:
        c._call("list tasks", down)
    assert len(calls) == 4 and sleeps == [0.5, 1.0, 2.0]
    msg = str(err.value)
    assert "http://127.0.0.1:8180" in msg and "not reachable" in msg and "list tasks" in msg and "\n" not in msg


def test_transient_5xx_recovers(client) -> None:  # type: ignore[no-untyped-def]
    c, sleeps = client
    answers = [ApiError(status_code=502, body="bad gateway"), httpx.ReadTimeout("slow"), "ok"]

    def flaky() -> str:
        a = answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a

    assert c._call("x", flaky) == "ok" and sleeps == [0.5, 1.0]


def test_wrong_token_is_one_line_without_retry_or_secret(client) -> None:  # type: ignore[no-untyped-def]
    c, sleeps = client

    def unauthorized() -> None:
        raise ApiError(status_code=401, body={"detail": "Invalid token."})

    with pytest.raises(ServiceError) as err:
        c._call("whoami", unauthorized)
    msg = str(err.value)
    assert sleeps == [] and "token is wrong" in msg and "f" * 40 not in msg and "\n" not in msg


def test_client_errors_are_not_retried(client) -> None:  # type: ignore[no-untyped-def]
    c, sleeps = client

    def bad() -> None:
        raise ApiError(status_code=400, body={"validation_errors": {"label_config": ["bad"]}})

    with pytest.raises(ServiceError, match="HTTP 400 on import"):
        c._call("import", bad)
    assert sleeps == []


def test_missing_token_names_the_variable() -> None:
    s = load_settings(REPO_ROOT / "configs" / "test.yaml", env={})
    s.label_studio.api_token = None
    s.data_dir = s.data_dir / "nonexistent-for-test"
    with pytest.raises(ServiceError, match="DETLOOP_LABEL_STUDIO__API_TOKEN"):
        LabelStudioClient(s).sdk  # noqa: B018


# ---- simulated annotator ---------------------------------------------------------------------------
CLASSES = ["a", "b", "c"]


def test_parse_truth_formats() -> None:
    d, w, h = parse_truth({"width": 10, "height": 8, "boxes": [[1, 1, 4, 4]], "class_names": ["b"]}, CLASSES)
    assert (w, h) == (10, 8) and d.class_id.tolist() == [1]
    d, _, _ = parse_truth({"width": 10, "height": 8, "boxes": [[1, 1, 4, 4]], "class_ids": [2]}, CLASSES)
    assert d.class_id.tolist() == [2]
    d, w, _ = parse_truth({"width": 10, "boxes": [{"xyxy": [1, 1, 4, 4], "class": "c"}]}, CLASSES)
    assert w == 10 and d.class_id.tolist() == [2] and d.xyxy.tolist() == [[1, 1, 4, 4]]
    with pytest.raises(DataError, match="zebra"):
        parse_truth({"boxes": [[1, 1, 4, 4]], "class_names": ["zebra"]}, CLASSES)


def test_profile_validation() -> None:
    with pytest.raises(DataError, match="p_skip"):
        AnnotatorProfile(p_skip=1.5)


def test_degrade_noise_rates() -> None:
    rng = np.random.default_rng(0)
    n = 4000
    xy = np.c_[rng.uniform(0, 500, n), rng.uniform(0, 500, n)]
    side = np.where(np.arange(n) % 2 == 0, 10.0, 80.0)  # half small (100 px^2), half large
    truth = Detections(xyxy=np.c_[xy, xy + side[:, None]], confidence=np.ones(n), class_id=np.zeros(n, int))
    prof = AnnotatorProfile(p_miss_small=0.5, small_area_px=32 * 32, p_flip=0.2, jitter=0.05)
    out = degrade(truth, prof, np.random.default_rng(1), 3, 600, 600)
    kept_small = (out.area < 32 * 32 * 1.5).sum()
    assert abs(kept_small / (n / 2) - 0.5) < 0.05  # half of the small boxes were missed
    assert abs((out.class_id != 0).mean() - 0.2) < 0.03
    assert set(np.unique(out.class_id)) <= {0, 1, 2}
    clean = degrade(truth, AnnotatorProfile(), np.random.default_rng(1), 3, 600, 600)
    np.testing.assert_allclose(clean.xyxy, truth.xyxy, atol=1e-3)


def test_annotation_for_is_deterministic_and_skips() -> None:
    truth = Detections(xyxy=[[10, 10, 50, 50]], confidence=[1.0], class_id=[1])
    t = {"id": 1, "data": {"round_id": "r", "s3_key": "k"}}
    a = annotation_for(t, truth, AnnotatorProfile(jitter=0.1, seed=4), CLASSES, 100, 100)
    b = annotation_for(t, truth, AnnotatorProfile(jitter=0.1, seed=4), CLASSES, 100, 100)
    assert a == b and a[0] is False and a[1][0]["value"]["rectanglelabels"] == ["b"]
    skips = sum(annotation_for({"data": {"round_id": "r", "s3_key": f"k{i}"}}, truth, AnnotatorProfile(p_skip=0.3),
                               CLASSES, 100, 100)[0] for i in range(1000))
    assert 250 < skips < 350
