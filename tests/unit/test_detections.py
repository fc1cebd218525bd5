from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detloop.detections import Detections, UnknownLabelsError
from detloop.ops import Letterbox, box_iou, nms, soft_nms

CLASSES = ["disc", "square", "triangle", "ring", "star"]
W, H = 640, 480


@st.composite
def detections(draw, max_n: int = 12, with_scores: bool = False) -> Detections:
    n = draw(st.integers(0, max_n))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    x1 = rng.uniform(0, W - 2, n)
    y1 = rng.uniform(0, H - 2, n)
    x2 = np.minimum(x1 + rng.uniform(1, 200, n), W)
    y2 = np.minimum(y1 + rng.uniform(1, 200, n), H)
    cs = rng.uniform(0, 1, (n, len(CLASSES))).astype(np.float32) if with_scores else None
    return Detections(
        xyxy=np.stack([x1, y1, x2, y2], 1),
        confidence=rng.uniform(0, 1, n),
        class_id=rng.integers(0, len(CLASSES), n),
        class_scores=cs,
    )


@settings(max_examples=60, deadline=None)
@given(detections())
def test_label_studio_round_trip(d: Detections) -> None:
    back = Detections.from_label_studio(d.to_label_studio(W, H, CLASSES), CLASSES)
    assert back.equals(d, atol=1e-3)


@settings(max_examples=60, deadline=None)
@given(detections())
def test_yolo_txt_round_trip(d: Detections) -> None:
    back = Detections.from_yolo_txt(d.to_yolo_txt(W, H), W, H, num_classes=len(CLASSES))
    assert len(back) == len(d)
    assert np.allclose(back.xyxy, d.xyxy, atol=0.01)  # 6 decimals of a normalised coordinate
    assert np.array_equal(back.class_id, d.class_id)


@settings(max_examples=60, deadline=None)
@given(detections())
def test_coco_round_trip(d: Detections) -> None:
    back = Detections.from_coco(d.to_coco(image_id=7, as_results=True))
    assert back.equals(d, atol=1e-3)
    cats = [10, 20, 30, 40, 50]
    back2 = Detections.from_coco(d.to_coco(image_id=7, category_ids=cats), category_ids=cats)
    assert np.array_equal(back2.class_id, d.class_id)


@settings(max_examples=40, deadline=None)
@given(detections(with_scores=True))
def test_dict_round_trip_keeps_vectors(d: Detections) -> None:
    back = Detections.from_dict(d.to_dict())
    assert back.equals(d, atol=1e-3)
    assert back.class_scores is not None and back.class_scores.shape == (len(d), len(CLASSES))


def test_validation_errors_say_expected_vs_actual() -> None:
    with pytest.raises(ValueError, match=r"confidence must have shape \(2,\), got \(3,\)"):
        Detections(xyxy=np.zeros((2, 4)), confidence=np.zeros(3), class_id=np.zeros(2))
    with pytest.raises(ValueError, match="class_scores"):
        Detections(xyxy=np.zeros((2, 4)), confidence=np.zeros(2), class_id=np.zeros(2), class_scores=np.zeros(2))


def test_mask_index_empty_merge() -> None:
    d = Detections(xyxy=[[0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 2, 2]], confidence=[0.9, 0.2, 0.5], class_id=[0, 1, 2])
    m = d[d.confidence > 0.4]
    assert len(m) == 2 and m.class_id.tolist() == [0, 2]
    assert len(d[1]) == 1
    e = Detections.empty(num_classes=5)
    assert len(e) == 0 and e.class_scores.shape == (0, 5)
    merged = Detections.merge([d, e, m])
    assert len(merged) == 5 and merged.confidence.dtype == np.float32


def test_unknown_labels_are_listed() -> None:
    res = Detections(xyxy=[[0, 0, 10, 10]], confidence=[1], class_id=[0]).to_label_studio(W, H, CLASSES)
    res[0]["value"]["rectanglelabels"] = ["cat"]
    res.append(dict(res[0], value=dict(res[0]["value"], rectanglelabels=["dog"])))
    with pytest.raises(UnknownLabelsError) as exc:
        Detections.from_label_studio(res, CLASSES)
    assert exc.value.unknown == ["cat", "dog"] and "star" in str(exc.value)


def test_from_ultralytics_reads_without_importing() -> None:
    class Boxes:
        xyxy = np.array([[1, 2, 3, 4]], np.float32)
        conf = np.array([0.5], np.float32)
        cls = np.array([3.0], np.float32)

        def __len__(self) -> int:
            return 1

    class Result:
        boxes = Boxes()

    d = Detections.from_ultralytics(Result())
    assert d.class_id.tolist() == [3] and d.xyxy.tolist() == [[1, 2, 3, 4]]


@settings(max_examples=40, deadline=None)
@given(st.integers(50, 2000), st.integers(50, 2000), st.sampled_from([320, 416, 640]))
def test_letterbox_round_trip(w: int, h: int, size: int) -> None:
    lb = Letterbox.compute(w, h, size)
    rw, rh = lb.resized
    assert max(rw, rh) == size and rw <= size and rh <= size
    boxes = np.array([[0, 0, w, h], [w * 0.25, h * 0.5, w * 0.5, h * 0.75]])
    assert np.allclose(lb.to_frame(lb.to_input(boxes)), boxes, atol=1e-6)


def test_from_yolo_raw_undoes_letterbox_and_keeps_vectors() -> None:
    lb = Letterbox.compute(640, 480, 320)  # scale 0.5, pad_y 40
    nc, a = 5, 6
    raw = np.zeros((4 + nc, a), np.float32)
    # anchor 0: a box at frame (100,100)-(140,120) -> input centre (60, 95), size (20, 10)
    raw[:4, 0] = [60, 95, 20, 10]
    raw[4:, 0] = [0.1, 0.8, 0.05, 0.0, 0.3]
    # anchor 1: duplicate with a lower score, suppressed by NMS
    raw[:4, 1] = [61, 95, 20, 10]
    raw[4:, 1] = [0.0, 0.6, 0.0, 0.0, 0.0]
    # anchor 2: below threshold
    raw[4:, 2] = [0.01, 0.0, 0.0, 0.0, 0.0]
    d = Detections.from_yolo_raw(raw, lb, conf_threshold=0.25, iou_threshold=0.5)
    assert len(d) == 1
    assert np.allclose(d.xyxy[0], [100, 100, 140, 120], atol=1e-4)
    assert d.class_id[0] == 1 and d.confidence[0] == pytest.approx(0.8)
    assert np.allclose(d.class_scores[0], [0.1, 0.8, 0.05, 0.0, 0.3])


def test_nms_and_soft_nms_on_a_crowd() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], float)
    scores = np.array([0.9, 0.8, 0.7])
    assert nms(boxes, scores, 0.5).tolist() == [0, 2]
    # different classes never suppress each other
    assert sorted(nms(boxes, scores, 0.5, class_id=np.array([0, 1, 0])).tolist()) == [0, 1, 2]
    keep, new = soft_nms(boxes, scores, sigma=0.5)
    assert keep.tolist()[0] == 0 and 1 in keep.tolist()  # the neighbour survives with a decayed score
    i1 = keep.tolist().index(1)
    iou01 = box_iou(boxes[:1], boxes[1:2])[0, 0]
    assert new[i1] == pytest.approx(0.8 * np.exp(-(iou01**2) / 0.5))


@pytest.mark.parametrize("shape", [(480, 640), (300, 500), (640, 333)])
def test_letterbox_matches_ultralytics(shape: tuple[int, int]) -> None:
    from ultralytics.data.augment import LetterBox

    from detloop.ops import letterbox_image

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
    ours, _ = letterbox_image(img, 320)
    theirs = LetterBox(new_shape=(320, 320), auto=False, scaleup=True, center=True)(image=img)
    assert ours.shape == theirs.shape and np.array_equal(ours, theirs)
