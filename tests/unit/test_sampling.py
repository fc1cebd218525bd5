"""Sampling: window, stratification, validation, perceptual hash and dedup (pure)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import date

import cv2
import numpy as np
import pytest

from tasks.sampling import (
    check_image_bytes,
    decode_image,
    dhash,
    frames_in_window,
    hamming,
    near_duplicates,
    stratified_order,
    window_dates,
)


@dataclass
class Obj:
    key: str
    size: int = 100
    etag: str = "e"


def keys(cams: list[str], days: list[str], n: int) -> list[Obj]:
    return [Obj(f"frames/camera={c}/date={d}/{i:06d}-x.jpg") for c in cams for d in days for i in range(n)]


def jpeg(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return buf.tobytes()


def scene(seed: int, h: int = 120, w: int = 160) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 90, np.uint8)
    for _ in range(6):
        x, y = rng.integers(0, w - 30), rng.integers(0, h - 30)
        img[y : y + 30, x : x + 30] = rng.integers(0, 255, 3)
    return img


def test_window_excludes_as_of_and_respects_focus() -> None:
    d = window_dates(date(2026, 1, 8), 7)
    assert d[0] == date(2026, 1, 1) and d[-1] == date(2026, 1, 7) and len(d) == 7
    objs = [*keys(["a", "b"], ["2025-12-31", "2026-01-01", "2026-01-07", "2026-01-08"], 2), Obj("frames/readme.txt")]
    refs = frames_in_window(objs, "prod", date(2026, 1, 8), 7)
    assert {r.date for r in refs} == {"2026-01-01", "2026-01-07"} and len(refs) == 8
    refs = frames_in_window(objs, "prod", date(2026, 1, 8), 7, cameras=["b"], dates=[date(2026, 1, 7)])
    assert {(r.camera, r.date) for r in refs} == {("b", "2026-01-07")}


def test_a_camera_with_its_own_dates_samples_them_instead_of_the_rounds_dates() -> None:
    """A drift round's re-asked camera samples its drifted days since its last round; the others the episode's
    days; days outside the window stay out whoever asks for them."""
    from tasks.sampling import camera_window_dates

    days = ["2025-12-31", "2026-01-01", "2026-01-05", "2026-01-07"]
    objs = keys(["a", "b"], days, 2)
    own = {"a": [date(2025, 12, 31), date(2026, 1, 1), date(2026, 1, 5), date(2026, 1, 7)]}
    refs = frames_in_window(objs, "prod", date(2026, 1, 8), 7, dates=[date(2026, 1, 7)], camera_dates=own)
    assert {(r.camera, r.date) for r in refs} == {("a", "2026-01-01"), ("a", "2026-01-05"), ("a", "2026-01-07"),
                                                 ("b", "2026-01-07")}
    assert camera_window_dates(date(2026, 1, 8), 7, ["a", "b"], [date(2026, 1, 7)], own) == {
        "a": [date(2026, 1, 1), date(2026, 1, 5), date(2026, 1, 7)], "b": [date(2026, 1, 7)]}
    everything = camera_window_dates(date(2026, 1, 8), 7, ["b"], None, own)  # no round dates: the whole window
    assert len(everything["b"]) == 7
    refs = frames_in_window(objs, "prod", date(2026, 1, 8), 7, cameras=["b"], dates=[date(2026, 1, 7)],
                            camera_dates=own)  # a camera out of focus stays out, own dates or not
    assert {r.camera for r in refs} == {"b"}


def test_stratified_order_quota_caps_and_balance() -> None:
    objs = keys(["a"], ["2026-01-01", "2026-01-02"], 50) + keys(["b"], ["2026-01-01"], 5)
    refs = frames_in_window(objs, "p", date(2026, 1, 3), 7)
    order = stratified_order(refs, per_camera_quota=20, max_per_camera_per_day=8, seed=1)
    per_cam = Counter(r.camera for r in order)
    per_day = Counter((r.camera, r.date) for r in order)
    assert per_cam == {"a": 16, "b": 5}  # a: 2 days x cap 8 (< quota 20); b: all 5
    assert max(per_day.values()) <= 8
    # prefix of 10 is balanced across cameras while both still have frames
    assert Counter(r.camera for r in order[:10]) == {"a": 5, "b": 5}
    # deterministic by seed, independent of listing order
    again = stratified_order(list(reversed(refs)), 20, 8, seed=1)
    assert [r.key for r in again] == [r.key for r in order]
    assert [r.key for r in stratified_order(refs, 20, 8, seed=2)] != [r.key for r in order]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "zero-byte"),
        (b"hello, not a picture", "not an image"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 100, "truncated JPEG"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, "truncated PNG"),
    ],
)
def test_bad_bytes_are_named(data: bytes, reason: str) -> None:
    img, why = decode_image(data)
    assert img is None and why is not None and reason in why


def test_truncated_real_jpeg_and_corrupt_body() -> None:
    good = jpeg(scene(0))
    assert check_image_bytes(good) is None
    img, why = decode_image(good)
    assert why is None and img is not None and img.shape == (120, 160, 3)
    _, why = decode_image(good[: len(good) // 2])
    assert why is not None and "truncated" in why
    garbage = good[:4] + b"\x00" * (len(good) - 6) + b"\xff\xd9"  # header + EOI but nothing decodable
    _, why = decode_image(garbage)
    assert why is not None and "corrupt" in why


def test_dhash_near_duplicates_close_different_scenes_far() -> None:
    a = scene(1)
    noisy = np.clip(a.astype(int) + np.random.default_rng(0).integers(-4, 5, a.shape), 0, 255).astype(np.uint8)
    recompressed = cv2.imdecode(np.frombuffer(jpeg(noisy), np.uint8), cv2.IMREAD_COLOR)
    ha, hn, hb = dhash(a), dhash(recompressed), dhash(scene(2))
    assert int(hamming(ha, np.array([hn]))[0]) <= 4
    assert int(hamming(ha, np.array([hb]))[0]) > 10
    assert ha.shape == (4,) and ha.dtype == np.uint64  # 16 x 16 bits in 4 words
    assert dhash(a, size=8).shape == (1,)
    grey = cv2.cvtColor(a, cv2.COLOR_BGR2GRAY)
    assert np.array_equal(dhash(grey), dhash(grey))


def test_hamming_matches_python_popcount() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2**63, 100, dtype=np.uint64)
    b = rng.integers(0, 2**63, 100, dtype=np.uint64)
    want = [bin(int(x) ^ int(y)).count("1") for x, y in zip(a, b, strict=True)]
    np.testing.assert_array_equal(hamming(a[:, None], b[:, None]), want)  # element-wise, one word
    np.testing.assert_array_equal(hamming(a[:1], b), [bin(int(a[0]) ^ int(y)).count("1") for y in b])
    two = np.stack([a, b], axis=1)  # (100, 2): 128-bit hashes
    np.testing.assert_array_equal(hamming(two[0], two), [bin(int(a[0]) ^ int(x)).count("1") + bin(int(b[0]) ^ int(y)).count("1") for x, y in two])


def test_near_duplicates_greedy_within_camera() -> None:
    h = np.array([0b0, 0b1, 0b111111, 0b0, 0b11], np.uint64)
    groups = ["a", "a", "a", "b", "a"]
    dup = near_duplicates(h, groups, threshold=1)
    # 1 is within 1 bit of 0; 0 in camera b is not compared with camera a; 0b11 is 1 bit from kept 0b1? no:
    # 0b1 was dropped, so 0b11 compares with 0 (2 bits) and 0b111111 (4 bits): kept
    np.testing.assert_array_equal(dup, [-1, 0, -1, -1, -1])
    np.testing.assert_array_equal(near_duplicates(h, groups, threshold=0), [-1, -1, -1, -1, -1])
    np.testing.assert_array_equal(near_duplicates(h, ["a"] * 5, threshold=2), [-1, 0, -1, 0, 0])


def test_sample_fills_max_frames_across_chunks_without_duplicates() -> None:
    from detloop.settings import load_settings
    from tasks.sampling import sample

    objs: dict[str, bytes] = {}
    for i in range(80):  # 80 distinct frames over two cameras and two days
        cam, day = f"c{i % 2}", f"2026-01-0{1 + (i // 2) % 2}"
        objs[f"frames/camera={cam}/date={day}/{i:06d}-a.jpg"] = jpeg(scene(100 + i))
    for i in range(0, 80, 2):  # 40 exact re-uploads under new keys (same camera/day)
        objs[f"frames/camera=c0/date=2026-01-0{1 + (i // 2) % 2}/{i:06d}-dup.jpg"] = objs[
            f"frames/camera=c0/date=2026-01-0{1 + (i // 2) % 2}/{i:06d}-a.jpg"]
    objs["frames/camera=c1/date=2026-01-01/999999-z.jpg"] = b""
    objs["frames/camera=c1/date=2026-01-02/999998-t.jpg"] = jpeg(scene(7))[:500]
    from tests.fakes import FakeStore

    settings = load_settings("configs/local.yaml", env={},  # not whatever $DETLOOP_CONFIG an earlier test left
                             overrides={"sampling": {"max_frames": 70, "window_days": 7}})
    store = FakeStore()
    prod, data = settings.s3.production_bucket, settings.s3.data_bucket
    store.objects.update({(prod, k): v for k, v in objs.items()})
    res = sample(settings, date(2026, 1, 3), store, run_id="r1")  # cameras listed from the bucket
    keys = [f.key for f in res.frames]
    assert len(keys) == 70 == len(set(keys))
    # no frame and its re-upload both sampled
    stems = [k.rsplit("/", 1)[1].split("-")[0] for k in keys if "/camera=c0/" in k]
    assert len(stems) == len(set(stems))
    assert {q.reason.split(" ")[0] for q in res.quarantined} == {"zero-byte", "truncated"}
    assert res.stats["sampled"] == 70 and res.stats["duplicates"] == len(res.duplicates) > 0
    assert store.get_json(data, "runs/r1/sample_manifest.json")["stats"]["sampled"] == 70
    assert len(store.get_json(data, "runs/r1/quarantine.json")["quarantined"]) == 2


def test_a_vanished_frame_is_quarantined_but_an_outage_fails_the_sample() -> None:
    """Bad data is quarantined with its reason; a service that is down is never mistaken for bad data."""
    from detloop.errors import ServiceUnavailable
    from detloop.settings import load_settings
    from tasks import sampling
    from tests.fakes import FakeStore

    settings = load_settings(overrides={"sampling": {"window_days": 7}})
    store = FakeStore()
    prod = settings.s3.production_bucket
    keys = [f"frames/camera=c0/date=2026-01-01/00000{i}-a.jpg" for i in range(3)]
    for i, k in enumerate(keys):
        store.objects[(prod, k)] = jpeg(scene(300 + i))
    listed = list(store.list(prod, "frames/"))
    del store.objects[(prod, keys[1])]  # expired between the listing and the download
    refs = sampling.frames_in_window(listed, prod, date(2026, 1, 3), 7)
    got = sampling.fetch_bytes(store, refs)
    assert isinstance(got[1], sampling.NotFound) and isinstance(got[0], bytes)
    store.down = True
    with pytest.raises(ServiceUnavailable, match="S3 at http://fake-s3 is not reachable"):
        sampling.fetch_bytes(store, refs)


# ---- hostile input: refused by its header, before any decoding ------------------------------------------------
def test_decompression_bombs_are_refused_before_decoding() -> None:
    import resource

    from detloop.preprocess import decode_for_model, png_size
    from tests.bad_input import jpeg_claiming, png_bomb

    bomb = png_bomb()  # 20,000 x 20,000: 1.2 GB once decoded
    assert len(bomb) < 200_000 and png_size(bomb) == (20_000, 20_000)
    lying = jpeg_claiming(jpeg(scene(3)))
    peak0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for data in (bomb, lying):
        img, why = decode_image(data)
        assert img is None and why is not None and why.startswith("image too large (20000x20000 = 400,000,000 px")
        assert "sampling.max_image_pixels 50,000,000" in why
        img, _, _, why = decode_for_model(data, 320)
        assert img is None and why is not None and "too large" in why
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak0 < 200_000  # KB: nothing was decoded
    # the cap is a setting: a higher one lets a big (real) frame through
    big = jpeg(np.zeros((300, 400, 3), np.uint8))
    assert check_image_bytes(big, max_pixels=100_000) is not None and check_image_bytes(big, max_pixels=200_000) is None


def test_corrupt_image_data_is_caught_without_false_alarms() -> None:
    from detloop.preprocess import jpeg_structure_problem
    from tests.bad_input import corrupt_jpeg

    caught = 0
    for seed in range(20):
        good = jpeg(cv2.GaussianBlur(np.random.default_rng(seed).integers(0, 255, (240, 320, 3), np.uint8), (5, 5), 0))
        for params in ([], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1], [cv2.IMWRITE_JPEG_RST_INTERVAL, 2]):
            assert jpeg_structure_problem(cv2.imencode(".jpg", cv2.imdecode(np.frombuffer(good, np.uint8), 1),
                                                       params)[1].tobytes()) is None
        # libjpeg only warns about these and decodes garbage into pixels
        assert cv2.imdecode(np.frombuffer(corrupt_jpeg(good, seed), np.uint8), cv2.IMREAD_COLOR) is not None
        caught += check_image_bytes(corrupt_jpeg(good, seed)) is not None
    assert caught == 20
    img, why = decode_image(corrupt_jpeg(good, 1))
    assert img is None and why is not None and why.startswith("corrupt JPEG")


def test_one_pixel_and_png_under_a_jpg_name() -> None:
    from tests.bad_input import one_pixel, png_of

    assert decode_image(one_pixel())[1] == "image too small (1x1 px)"
    png = png_of(jpeg(scene(7)))
    img, why = decode_image(png)  # read by its content, whatever the key says
    assert why is None and img is not None and img.shape == (120, 160, 3)


def test_stray_objects_under_the_frames_prefix_are_quarantined_with_a_reason() -> None:
    from detloop.settings import load_settings
    from tasks.sampling import NOT_A_FRAME, sample
    from tests.fakes import FakeStore

    s = load_settings("configs/test.yaml", env={})
    store = FakeStore()
    good = jpeg(scene(1))
    p = s.s3.production_prefix
    store.put_bytes(s.s3.production_bucket, f"{p}camera=c1/date=2026-01-05/000001-a.jpg", good)
    store.put_bytes(s.s3.production_bucket, f"{p}camera=c1/date=2026-01-05/notes.txt", b"hello")
    store.put_bytes(s.s3.production_bucket, f"{p}camera=c1/date=2026-01-05/000002-b.jpg.tmp", good)
    res = sample(s, date(2026, 1, 6), store)
    assert [f.key for f in res.frames] == [f"{p}camera=c1/date=2026-01-05/000001-a.jpg"]
    assert sorted(q.key.rsplit("/", 1)[1] for q in res.quarantined) == ["000002-b.jpg.tmp", "notes.txt"]
    assert {q.reason for q in res.quarantined} == {NOT_A_FRAME} and res.stats["quarantined"] == 2
