"""An in-memory stand-in for ``detloop.clients.s3.S3Store`` for pure unit tests (counts puts).

Integration tests use the real S3 server; this is only for testing logic above the store.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from detloop.clients.s3 import ObjectInfo
from detloop.datasets import sha256_bytes


class MemStore:
    """The subset of ``S3Store`` the dataset and world code use, in memory."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}
        self.puts = 0
        self.buckets: set[str] = set()

    def ensure_bucket(self, bucket: str) -> None:
        self.buckets.add(bucket)

    def put_bytes(self, bucket: str, key: str, body: bytes, content_type: str | None = None) -> str:
        self.puts += 1
        self.objects[(bucket, key)] = bytes(body)
        return sha256_bytes(body)[:32]

    def get_bytes(self, bucket: str, key: str) -> bytes:
        return self.objects[(bucket, key)]

    read_frame = get_bytes

    def exists(self, bucket: str, key: str) -> bool:
        return (bucket, key) in self.objects

    def put_json(self, bucket: str, key: str, obj: object) -> str:
        return self.put_bytes(bucket, key, json.dumps(obj, sort_keys=True).encode())

    def get_json(self, bucket: str, key: str) -> object:
        return json.loads(self.get_bytes(bucket, key))

    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        for (b, k), v in sorted(self.objects.items()):
            if b == bucket and k.startswith(prefix):
                yield ObjectInfo(k, len(v), "")
