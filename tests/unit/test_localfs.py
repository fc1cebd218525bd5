"""A full disk in detloop's own writes: one line naming the path, and nothing half-written taken as complete.

The disk is simulated where detloop opens files for writing (``detloop.localfs._open``): writes succeed until a
byte budget runs out, then ``ENOSPC``, leaving the bytes written so far on disk, as a real full disk does. As
root the same is checked on a real 1.5 MB tmpfs (skipped otherwise: mounting needs the privilege).
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from detloop import localfs
from detloop.localfs import DiskFull

REAL_OPEN = open


class FillingDisk:
    """``open`` for writing whose files together take ``budget`` bytes, then raise ENOSPC mid-write."""

    def __init__(self, budget: int):
        self.budget = budget
        self.hits = 0

    def __call__(self, path: Any, mode: str = "r", *a: Any, **kw: Any) -> Any:
        f = REAL_OPEN(path, mode, *a, **kw)
        disk = self

        class _File:
            def __enter__(self) -> Any:
                return self

            def __exit__(self, *exc: Any) -> None:
                f.close()

            def write(self, data: bytes) -> int:
                room = max(0, disk.budget)
                if len(data) > room:
                    f.write(data[:room])  # what fitted stays on disk, as on a real full disk
                    f.flush()
                    disk.budget = 0
                    disk.hits += 1
                    raise OSError(errno.ENOSPC, "No space left on device")
                disk.budget -= len(data)
                return f.write(data)

        return _File()


def _one_line_naming(err: DiskFull, under: Path) -> None:
    msg = str(err)
    assert "\n" not in msg and "no space left on device while writing" in msg and "MB free" in msg
    assert str(under) in msg, msg


def _no_partial_files(root: Path, expected: dict[Path, bytes]) -> None:
    """Every file under its final name is whole; no temporary file is left."""
    assert not [p for p in root.rglob(".*tmp-*")], "temporary files left behind"
    for p, body in expected.items():
        if p.exists():
            assert p.read_bytes() == body, f"{p} is half-written"


def test_atomic_writes_leave_old_content_or_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = FillingDisk(1000)
    monkeypatch.setattr(localfs, "_open", disk)
    target = tmp_path / "a.bin"
    localfs.write_bytes(target, b"x" * 600)
    with pytest.raises(DiskFull) as err:
        localfs.write_bytes(target, b"y" * 600)  # 400 bytes fit: the rest fails
    _one_line_naming(err.value, target)
    assert target.read_bytes() == b"x" * 600  # the old content, not 400 y's
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(5000))
    with pytest.raises(DiskFull):
        localfs.copy_file(src, tmp_path / "copy.bin")
    assert not (tmp_path / "copy.bin").exists()  # link_or_copy's fallback: absent, so a re-run copies again
    _no_partial_files(tmp_path, {})


def test_materialize_on_a_full_disk_then_again_with_room(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from detloop.datasets import cache_dir, get_blob, load_manifest, materialize
    from detloop.settings import load_settings
    from detloop.world.publish import publish_labelled_set
    from tests.fakes import FakeStore

    s = load_settings("configs/test.yaml", env={}, overrides={"data_dir": str(tmp_path / "data")})
    store = FakeStore()
    vid = publish_labelled_set(s, "seed", frames=12, store=store, threads=2)
    manifest = load_manifest(store, s, vid)
    root = cache_dir(s, vid)
    expected: dict[Path, bytes] = {}
    for e in manifest.entries:
        if e.split in ("train", "val"):
            expected[root / "images" / e.split / f"{e.frame_sha}.{e.ext}"] = get_blob(store, s.s3.data_bucket,
                                                                                     e.frame_sha, e.ext)
            expected[root / "labels" / e.split / f"{e.frame_sha}.txt"] = get_blob(store, s.s3.data_bucket,
                                                                                  e.label_sha, "txt")
    total = sum(len(b) for b in expected.values())
    disk = FillingDisk(total // 2)  # the disk fills half-way through the frames
    monkeypatch.setattr(localfs, "_open", disk)
    with pytest.raises(DiskFull) as err:
        materialize(store, s, vid, threads=1)
    _one_line_naming(err.value, root)
    assert disk.hits >= 1
    _no_partial_files(root, expected)
    assert not (root / "images" / "train" / ".complete").exists() or all(
        p.exists() for p in expected if "/train/" in str(p))
    # the disk has room again: the next run completes and every file is right
    monkeypatch.setattr(localfs, "_open", REAL_OPEN)
    data_yaml = materialize(store, s, vid, threads=1)
    assert data_yaml.is_file()
    for p, body in expected.items():
        assert hashlib.sha256(p.read_bytes()).digest() == hashlib.sha256(body).digest(), p
    _no_partial_files(root, expected)


def test_an_export_that_hits_a_full_disk_leaves_no_artifact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tasks.export as ex

    calls = {"n": 0}

    def half_then_full(weights: Path, out: Path, *a: Any) -> None:
        calls["n"] += 1
        (out / ex.ONNX_NAME).write_bytes(b"half an onnx")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ex, "_export_into", half_then_full)
    dest = tmp_path / "art"
    with pytest.raises(DiskFull) as err:
        ex.export_scoring_artifact(tmp_path / "w.pt", dest, ["a", "b"], 64)
    _one_line_naming(err.value, dest)
    assert not dest.exists()  # make_random_artifact, seeing a model.onnx, would have taken half of one as done
    def whole(weights: Path, out: Path, *a: Any) -> None:  # a complete export (torch's own is slow to run here)
        (out / ex.ONNX_NAME).write_bytes(b"a whole onnx")
        (out / ex.META_NAME).write_text("{}")

    monkeypatch.setattr(ex, "_export_into", whole)
    art = ex.export_scoring_artifact(tmp_path / "w.pt", dest, ["a", "b"], 64)  # the next run exports whole
    assert (art / ex.ONNX_NAME).read_bytes() == b"a whole onnx" and (art / ex.META_NAME).is_file()
    assert calls["n"] == 1 and not list(tmp_path.glob(".art.tmp-*"))


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_real_full_tmpfs(tmp_path: Path) -> None:
    """The same on a real 1.5 MB file system: ENOSPC from the kernel, then a remount with room."""
    from detloop.datasets import materialize
    from detloop.settings import load_settings
    from detloop.world.publish import publish_labelled_set
    from tests.fakes import FakeStore

    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1536k", "tmpfs", str(mnt)], check=False).returncode:
        pytest.skip("tmpfs mount refused (container without the capability)")
    try:
        s = load_settings("configs/test.yaml", env={}, overrides={"data_dir": str(mnt / "data")})
        store = FakeStore()
        vid = publish_labelled_set(s, "seed", frames=40, store=store, threads=2)  # ~2.4 MB of frames
        with pytest.raises(DiskFull) as err:
            materialize(store, s, vid, threads=1)
        _one_line_naming(err.value, mnt / "data")
        subprocess.run(["mount", "-o", "remount,size=16m", str(mnt)], check=True)
        data_yaml = materialize(store, s, vid, threads=1)
        import yaml

        lists = yaml.safe_load(data_yaml.read_text())
        for split in ("train", "val"):
            for line in Path(lists[split]).read_text().split():
                img = Path(line)
                assert img.stat().st_size > 0
                import cv2

                assert cv2.imread(str(img)) is not None, img  # whole frames, not half ones
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
