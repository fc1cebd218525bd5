"""QueryPresigner signs the same URL as botocore (same clock), so S3 accepts it wherever boto3's works."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from detloop.clients.s3 import QueryPresigner

NOW = dt.datetime(2026, 3, 4, 5, 6, 7)
KEYS = ["frames/cam0/date=2026-01-05/120000-0001.jpg", "odd key/ä+%20 frame=1.jpg", "a~b/c!d'e(f)*g,h;i:j@k&l$m"]


def _same(a: str, b: str) -> bool:
    """Same scheme, host, path and query parameters (the order of parameters in a URL does not matter)."""
    from urllib.parse import parse_qsl, urlsplit

    ua, ub = urlsplit(a), urlsplit(b)
    return (ua.scheme, ua.netloc, ua.path) == (ub.scheme, ub.netloc, ub.path) and \
        sorted(parse_qsl(ua.query)) == sorted(parse_qsl(ub.query))


def _client(monkeypatch: pytest.MonkeyPatch, style: str, endpoint: str | None, token: str | None) -> Any:
    import boto3
    import botocore.auth
    from botocore.config import Config

    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: NOW)
    session = boto3.session.Session(aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="wJalr/K7+EXAMPLEKEY",
                                    aws_session_token=token)
    client = session.client("s3", endpoint_url=endpoint, region_name="eu-west-2",
                            config=Config(s3={"addressing_style": style}))
    return session, client


@pytest.mark.parametrize("style,endpoint,token", [
    ("path", "http://127.0.0.1:8333", None),
    ("virtual", None, None),
    ("path", None, "FQoGZXIvYXdzE//token+with/slashes=="),
])
def test_same_url_as_botocore(monkeypatch: pytest.MonkeyPatch, style: str, endpoint: str | None,
                              token: str | None) -> None:
    session, client = _client(monkeypatch, style, endpoint, token)

    def boto(bucket: str, key: str, expires: int = 900) -> str:
        return client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires)

    signer = QueryPresigner(session.get_credentials(), "eu-west-2", boto)
    for bucket in ("detloop-production", "other-bucket"):
        for key in KEYS:
            assert _same(signer.url(bucket, key, 900, now=NOW), boto(bucket, key))
    assert _same(signer.url("detloop-production", KEYS[0], 60, now=NOW), boto("detloop-production", KEYS[0], 60))


def test_signing_key_rolls_with_the_day(monkeypatch: pytest.MonkeyPatch) -> None:
    session, client = _client(monkeypatch, "path", "http://127.0.0.1:8333", None)
    signer = QueryPresigner(session.get_credentials(), "eu-west-2",
                            lambda b, k: client.generate_presigned_url("get_object", Params={"Bucket": b, "Key": k}))
    day1 = signer.url("b", "k", now=NOW)
    day2 = signer.url("b", "k", now=NOW + dt.timedelta(days=1))
    assert "20260304T050607Z" in day1 and "20260305T050607Z" in day2
    later = NOW + dt.timedelta(days=1)
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda: later)
    assert _same(day2, client.generate_presigned_url("get_object", Params={"Bucket": "b", "Key": "k"}, ExpiresIn=900))


def test_unexpected_layout_is_refused() -> None:
    class Creds:
        def get_frozen_credentials(self) -> Any:
            raise AssertionError("not reached")

    signer = QueryPresigner(Creds(), "us-east-1", lambda b, k: f"https://example.invalid/{b}/somewhere-else")
    with pytest.raises(ValueError, match="layout"):
        signer.url("b", "k")
