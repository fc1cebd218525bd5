"""Per-frame repeats of the train list (tasks/sample_weights.py): mining scores, rare-class repeats, the caps,
and the list materialize writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detloop.detections import Detections
from tasks.sample_weights import frame_error_scores, rare_extra, repeat_counts


def det(rows: list[tuple[int, float, float, float, float]], conf: float = 1.0) -> Detections:
    if not rows:
        return Detections.empty()
    a = np.array(rows, dtype=np.float64)
    return Detections(xyxy=a[:, 1:], confidence=np.full(len(a), conf), class_id=a[:, 0].astype(np.int64))


def test_error_scores_rank_frames_by_how_wrong_the_model_is() -> None:
    gt = det([(0, 0, 0, 50, 50), (1, 100, 100, 150, 150)])
    perfect = det([(0, 0, 0, 50, 50), (1, 100, 100, 150, 150)])
    one_missed = det([(0, 0, 0, 50, 50)])
    confused = det([(0, 0, 0, 50, 50), (0, 100, 100, 150, 150)])
    nothing = Detections.empty()
    s = frame_error_scores([gt] * 4, [perfect, one_missed, confused, nothing])
    assert s[0] == pytest.approx(0.0)
    assert 0 < s[1] and s[1] <= s[2] < s[3]  # a confusion is a miss plus a false alarm of another class
    assert s[3] == pytest.approx(2 / 2 + 1.0)  # both boxes missed, loss 1
    # a confident false alarm on an empty frame counts; a faint one (under min_confidence) does not
    bkg = det([(0, 300, 300, 320, 320)], conf=0.9)
    faint = det([(0, 300, 300, 320, 320)], conf=0.1)
    s2 = frame_error_scores([Detections.empty()] * 2, [bkg, faint], min_confidence=0.25)
    assert s2[0] == pytest.approx(1.0) and s2[1] == pytest.approx(0.0)


def test_rare_extra() -> None:
    counts = np.array([[10, 0], [10, 0], [8, 1], [9, 1], [10, 0]])  # class 1: 2 of 49 boxes (4 %)
    extra = rare_extra(counts, rare_share=0.2, power=1.0)
    assert extra.tolist() == [0, 0, round(0.2 / (2 / 49)) - 1, round(0.2 / (2 / 49)) - 1, 0]
    assert rare_extra(counts, rare_share=0.2, power=0.0).tolist() == [0] * 5  # power 0: no oversampling
    assert rare_extra(counts, rare_share=0.01, power=1.0).tolist() == [0] * 5  # nothing that rare


def test_repeats_and_their_caps() -> None:
    scores = np.array([0.0, 0.4, 1.0, 2.2, 9.0])
    r = repeat_counts(5, scores, mining_strength=1.0, max_repeats=4, max_extra_share=10.0)
    assert r.tolist() == [1, 1, 2, 3, 4]  # round(score) extra, capped at 4 listings
    r = repeat_counts(5, scores, mining_strength=1.0, max_repeats=4, max_extra_share=0.8)  # 4 extra listings in all
    assert r.sum() - 5 == 4 and r.tolist() == [1, 1, 1, 2, 4]  # the hardest keep theirs
    r = repeat_counts(5, scores, mining_strength=0.0)
    assert r.tolist() == [1] * 5
    both = repeat_counts(3, np.array([1.0, 0.0, 0.0]), np.array([0, 2, 0]), max_repeats=20, max_extra_share=10)
    assert both.tolist() == [2, 3, 1]  # mining and rare repeats add up
    assert repeat_counts(4, None, None).tolist() == [1] * 4
    with_cap_zero = repeat_counts(4, np.array([5.0] * 4), max_extra_share=0.0)
    assert with_cap_zero.tolist() == [1] * 4


def test_materialize_lists_each_frame_its_repeats(tmp_path: Path) -> None:
    from detloop.datasets import DatasetManifest, materialize, save_manifest, store_labelled_frame
    from detloop.errors import DataError
    from detloop.settings import load_settings
    from tests.fakes import FakeStore

    settings = load_settings("configs/test.yaml", env={}, overrides={"data_dir": str(tmp_path / "data")})
    store = FakeStore()
    entries = [store_labelled_frame(store, "detloop-data", f"img-{i}".encode(), det([(0, 1, 1, 9, 9)]), width=64,
                                    height=64, classes=settings.classes, camera="c", date="2026-01-05", hour=i,
                                    split="train" if i < 4 else "val", source="seed", hard=i == 0, key=f"f{i}")
               for i in range(5)]
    vid = save_manifest(store, settings, DatasetManifest("seed", settings.classes, entries))
    sha = [e.frame_sha for e in entries]
    y = materialize(store, settings, vid, oversample=2, repeats={sha[1]: 3, sha[2]: 1})
    import yaml

    lines = Path(yaml.safe_load(y.read_text())["train"]).read_text().split()
    stems = [Path(p).name.split(".")[0] for p in lines]
    assert stems.count(sha[0]) == 2 and stems.count(sha[1]) == 3 and stems.count(sha[2]) == 1
    assert stems.count(sha[3]) == 1 and sha[4] not in stems
    assert all(Path(p).is_file() for p in lines) and "_w" in y.name
    plain = materialize(store, settings, vid, oversample=2)  # the unweighted list is another file
    assert plain != y and len(Path(yaml.safe_load(plain.read_text())["train"]).read_text().split()) == 5
    with pytest.raises(DataError, match="repeats must be >= 1"):
        materialize(store, settings, vid, repeats={sha[1]: 0})


def test_train_repeats_oversample_rare_class_frames_of_a_version(tmp_path: Path) -> None:
    from detloop.datasets import DatasetManifest, save_manifest, store_labelled_frame
    from detloop.settings import load_settings
    from tasks.sample_weights import train_repeats
    from tests.fakes import FakeStore

    settings = load_settings("configs/test.yaml", env={}, overrides={
        "data_dir": str(tmp_path / "data"),
        "training": {"sample_weights": {"rare_oversampling": True, "rare_share": 0.2, "rare_power": 1.0,
                                        "max_repeats": 3, "max_extra_share": 1.0}}})
    store = FakeStore()
    rows = [[(0, 1, 1, 9, 9)] * 3] * 8 + [[(0, 1, 1, 9, 9), (4, 20, 20, 30, 30)]] * 2  # 'star' is 2 of 28 boxes
    entries = [store_labelled_frame(store, "detloop-data", f"img-{i}".encode(), det(r), width=64, height=64,
                                    classes=settings.classes, camera="c", date="2026-01-05", hour=i % 24,
                                    split="train", source="seed", key=f"f{i}") for i, r in enumerate(rows)]
    vid = save_manifest(store, settings, DatasetManifest("seed", settings.classes, entries))
    reps, report = train_repeats(store, settings, vid)
    assert reps == {entries[8].frame_sha: 3, entries[9].frame_sha: 3}  # round(0.2 / (2/28)) = 3: capped at 3
    assert report["extra_listings"] == 4 and not report["mining"]
    settings.training.sample_weights.rare_oversampling = False
    assert train_repeats(store, settings, vid)[0] == {}
