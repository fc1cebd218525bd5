"""Label Studio client error handling and the simulated annotator's noise (no services)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from label_studio_sdk.core.api_error import ApiError
from pydantic import SecretStr

from detloop.clients.labelstudio import LabelStudioClient
from detloop.detections import Detections
from detloop.errors import (
    DataError,
    NotFound,
    ServiceError,
    ServiceRejected,
    ServiceUnavailable,
    is_retryable,
)
from detloop.settings import REPO_ROOT, load_settings
from detloop.sim.annotator import AnnotatorProfile, annotation_for, degrade, parse_truth


@pytest.fixture()
def client():  # type: ignore[no-untyped-def]
    s = load_settings(REPO_ROOT / "configs" / "test.yaml", env={})
    s.label_studio.api_token = SecretStr("f" * 40)
    return LabelStudioClient(s, sdk=object())


def counting(*answers: object):  # type: ignore[no-untyped-def]
    """A call that raises (or returns) ``answers`` in turn, counting how often it was made."""
    calls: list[int] = []
    todo = list(answers)

    def fn() -> object:
        calls.append(1)
        a = todo.pop(0)
        if isinstance(a, Exception):
            raise a
        return a

    return fn, calls


def test_unreachable_is_unavailable_once_and_one_line(client) -> None:  # type: ignore[no-untyped-def]
    fn, calls = counting(httpx.ConnectError("refused"), "never")
    with pytest.raises(ServiceUnavailable) as err:
        client._call("list tasks", fn)
    assert len(calls) == 1  # the client never retries: the flows are the one retry layer
    msg = str(err.value)
    assert "http://127.0.0.1:8180" in msg and "not reachable" in msg and "list tasks" in msg and "\n" not in msg
    assert err.value.service == "Label Studio" and err.value.url == "http://127.0.0.1:8180"


@pytest.mark.parametrize("exc", [ApiError(status_code=502, body="bad gateway"), ApiError(status_code=429, body="slow"),
                                 httpx.ReadTimeout("slow")])
def test_5xx_429_and_timeouts_are_retryable(client, exc) -> None:  # type: ignore[no-untyped-def]
    fn, calls = counting(exc, "ok")
    with pytest.raises(ServiceUnavailable) as err:
        client._call("x", fn)
    assert is_retryable(err.value) and len(calls) == 1


def test_wrong_token_is_rejected_once_without_the_secret(client) -> None:  # type: ignore[no-untyped-def]
    fn, calls = counting(ApiError(status_code=401, body={"detail": "Invalid token."}))
    with pytest.raises(ServiceRejected) as err:
        client._call("whoami", fn)
    msg = str(err.value)
    assert len(calls) == 1 and "token is wrong" in msg and "f" * 40 not in msg and "\n" not in msg
    assert not is_retryable(err.value)


def test_4xx_is_rejected_with_the_servers_reason_and_never_retried(client) -> None:  # type: ignore[no-untyped-def]
    fn, calls = counting(ApiError(status_code=400, body={"validation_errors": {"label_config": ["bad"]}}))
    with pytest.raises(ServiceRejected, match=r"HTTP 400 on import.*label_config") as err:
        client._call("import", fn)
    assert len(calls) == 1 and err.value.status == 400 and not is_retryable(err.value)


def test_404_is_not_found(client) -> None:  # type: ignore[no-untyped-def]
    fn, _ = counting(ApiError(status_code=404, body={"detail": "Not found."}))
    with pytest.raises(NotFound, match="HTTP 404 on get project 9"):
        client._call("get project 9", fn)


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
