"""The scoring artifact: ONNX model with the raw YOLO head **and** an image embedding in one pass.

Ultralytics' own exporter has no embedding output, so :func:`export_scoring_artifact` wraps the
detection model, runs its layers the way ``DetectionModel._predict_once`` does, keeps the feature maps
fed to the Detect head, global-average-pools and concatenates them (the embedding), then runs the head
in export mode (``(B, 4 + C, A)``: cx, cy, w, h in input pixels + C sigmoid class scores). The graph is
exported with ``torch.onnx.export`` (legacy TorchScript exporter, opset 17, dynamic batch; with
``dynamic_hw`` also dynamic height and width, which offline test-time augmentation at other scales needs,
:mod:`detloop.tta`: the anchors are then computed from the input's shape in the graph).

Output directory layout (the contract consumed by selection / scoring, see
:class:`detloop.contracts.ScoringArtifactMeta`)::

    out_dir/model.onnx   input "images" (B, 3, S, S) float32 RGB in [0, 1], letterboxed (pad 114, centred)
                         outputs "raw" (B, 4 + C, A) and "embedding" (B, D); a dynamic-HW export also
                         accepts (B, 3, H, W) with H, W multiples of the stride (A follows)
    out_dir/meta.json    ScoringArtifactMeta.to_dict()
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detloop.contracts import ScoringArtifactMeta
from detloop.errors import DataError

ONNX_NAME = "model.onnx"
META_NAME = "meta.json"
OPSET = 17


def _load_detection_model(weights_pt: Path) -> Any:
    """The ``DetectionModel`` inside an Ultralytics checkpoint, in float32 on CPU."""
    from ultralytics import YOLO

    yolo = YOLO(str(weights_pt), task="detect")
    return yolo.model.float().cpu()


HEADS = ("one2many", "one2one")


def _build_wrapper(det_model: Any, head: str = "one2many") -> Any:
    """A ``torch.nn.Module`` returning ``(raw, embedding)`` for a fused copy of ``det_model``.

    ``raw`` is ``(B, 4 + C, A)`` (cx, cy, w, h in input pixels, C sigmoid class scores) of the chosen branch:
    ``one2many`` (YOLOv8/11, and YOLO26's NMS head) or ``one2one`` (YOLO26's NMS-free head, before its top-k).
    The boxes are decoded here (anchors, strides, DFL) rather than by the head's own inference, which returns
    corner boxes after a top-k for end-to-end heads and would drop the class vectors.
    """
    import copy

    import torch
    from ultralytics.nn.modules import C2f, Detect
    from ultralytics.utils.tal import dist2bbox, make_anchors

    if head not in HEADS:
        raise DataError(f"scoring export head must be one of {HEADS}, got {head!r}")
    model = copy.deepcopy(det_model).float().cpu()
    det = model.model[-1]
    if not isinstance(det, Detect):
        raise DataError(f"scoring export needs a Detect head, got {type(det).__name__}")
    has_o2o = getattr(det, "one2one_cv2", None) is not None
    if head == "one2one" and not has_o2o:
        raise DataError("model.nms_free needs a model with a one-to-one head (YOLO26); this checkpoint has none "
                        "(set model.nms_free: false)")
    if has_o2o and det.cv2 is None and head == "one2many":
        raise DataError("this checkpoint's one-to-many head was removed by fusion: export it with model.nms_free")
    if has_o2o:
        det.end2end = head == "one2one"  # fuse keeps the selected branch and drops the other
    model = model.fuse(verbose=False) if hasattr(model, "fuse") else model
    model.eval()
    det = model.model[-1]
    branch = det.one2one if head == "one2one" else det.one2many
    for m in model.modules():
        if isinstance(m, C2f):
            m.forward = m.forward_split

    class ScoringWrapper(torch.nn.Module):
        def __init__(self, inner: Any):
            super().__init__()
            self.layers = inner.model
            self.save = set(inner.save)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            y: list[Any] = []
            for m in self.layers[:-1]:
                if m.f != -1:
                    x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
                x = m(x)
                y.append(x if m.i in self.save else None)
            d = self.layers[-1]
            feats = [x if j == -1 else y[j] for j in d.f]
            emb = torch.cat([torch.nn.functional.adaptive_avg_pool2d(f, 1).flatten(1) for f in feats], 1)
            p = d.forward_head(list(feats), **branch)
            anchors, strides = (a.transpose(0, 1) for a in make_anchors(feats, d.stride, 0.5))
            box = dist2bbox(d.dfl(p["boxes"]), anchors.unsqueeze(0), xywh=True, dim=1) * strides
            raw = torch.cat((box, p["scores"].sigmoid()), 1)
            return raw, emb

    wrapper = ScoringWrapper(model)
    wrapper.eval()
    return wrapper


def export_scoring_artifact(
    weights_pt: str | Path,
    out_dir: str | Path,
    class_names: list[str],
    input_size: int,
    registry_version: str | None = None,
    model_name: str | None = None,
    dynamic_hw: bool = False,
    head: str = "one2many",
) -> Path:
    """Export ``model.onnx`` (raw head + embedding) and ``meta.json`` into ``out_dir``.

    Args:
        weights_pt: Ultralytics ``.pt`` checkpoint (YOLOv8/11 detection model).
        out_dir: directory to write into (created, or replaced when complete).
        class_names: the configured class list; must match the checkpoint's class count and names.
        input_size: square input side S in pixels (multiple of the stride).
        registry_version: optional registry version recorded in the metadata.
        model_name: optional registered model name recorded in the metadata.
        dynamic_hw: height and width dynamic as well as the batch (test-time augmentation at other scales);
            at size S the boxes equal the fixed-size export's.
        head: ``one2many`` (decoded with NMS) or ``one2one`` (YOLO26 NMS-free, decoded by top-k): the branch
            exported, recorded in ``meta.json`` (``model.export_head`` of the settings).

    Returns:
        ``out_dir`` (containing ``model.onnx`` and ``meta.json``).

    Raises:
        DataError: the checkpoint's classes differ from ``class_names``, or the head is not exportable.
        DiskFull: the disk filled up (``out_dir`` is left as it was: never half an artifact).
    """
    from detloop.localfs import building_dir

    weights_pt = Path(weights_pt)
    with building_dir(out_dir) as out:  # out_dir appears only when model.onnx and meta.json are both complete
        _export_into(weights_pt, out, class_names, input_size, registry_version, model_name, dynamic_hw, head)
    return Path(out_dir)


def _export_into(weights_pt: Path, out: Path, class_names: Sequence[str], input_size: int,
                 registry_version: str | None, model_name: str | None, dynamic_hw: bool = False,
                 head: str = "one2many") -> None:
    import torch

    det_model = _load_detection_model(weights_pt)
    names = det_model.names
    model_names = [names[i] for i in range(len(names))] if isinstance(names, dict) else list(names)
    if model_names != list(class_names):
        raise DataError(
            f"{weights_pt.name}: model classes {model_names} differ from configured classes {list(class_names)}"
        )
    stride = int(max(det_model.stride.tolist())) if hasattr(det_model, "stride") else 32
    if input_size % stride:
        raise DataError(f"input_size {input_size} is not a multiple of the model stride {stride}")
    wrapper = _build_wrapper(det_model, head)
    dummy = torch.zeros(1, 3, input_size, input_size, dtype=torch.float32)
    with torch.no_grad():
        raw, emb = wrapper(dummy)
    onnx_path = out / ONNX_NAME
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            (dummy,),
            str(onnx_path),
            input_names=["images"],
            output_names=["raw", "embedding"],
            dynamic_axes=({"images": {0: "batch", 2: "height", 3: "width"}, "raw": {0: "batch", 2: "anchors"},
                           "embedding": {0: "batch"}} if dynamic_hw else
                          {"images": {0: "batch"}, "raw": {0: "batch"}, "embedding": {0: "batch"}}),
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    meta = ScoringArtifactMeta(
        class_names=list(class_names),
        input_size=int(input_size),
        stride=stride,
        embedding_dim=int(emb.shape[1]),
        registry_version=registry_version,
        model_name=model_name,
        head=head,
    )
    meta_dict = meta.to_dict()
    meta_dict["num_anchors"] = int(raw.shape[2])  # at input_size
    meta_dict["dynamic_hw"] = bool(dynamic_hw)
    (out / META_NAME).write_text(json.dumps(meta_dict, indent=2))


def read_meta(artifact_dir: str | Path) -> ScoringArtifactMeta:
    """``meta.json`` of an exported artifact directory."""
    return ScoringArtifactMeta.from_dict(json.loads((Path(artifact_dir) / META_NAME).read_text()))


def preprocess(images: list[np.ndarray], input_size: int) -> tuple[np.ndarray, list[Any]]:
    """Letterbox RGB frames into the ONNX input.

    Args:
        images: list of ``(H, W, 3)`` uint8 RGB frames.
        input_size: square model input side S.

    Returns:
        ``(B, 3, S, S)`` float32 in [0, 1] and the per-frame :class:`detloop.ops.Letterbox`.
    """
    from detloop.ops import letterbox_image

    batch, boxes = [], []
    for img in images:
        lb_img, lb = letterbox_image(img, input_size)
        batch.append(lb_img.transpose(2, 0, 1))
        boxes.append(lb)
    arr = np.ascontiguousarray(np.stack(batch)).astype(np.float32) / 255.0
    return arr, boxes


def run_onnx(session: Any, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run an onnxruntime session of a scoring artifact: ``(B,3,S,S) -> (raw (B,4+C,A), embedding (B,D))``."""
    raw, emb = session.run(["raw", "embedding"], {"images": batch})
    return raw, emb


def open_session(artifact_dir: str | Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session for ``artifact_dir/model.onnx`` (``threads`` None: all cores)."""
    import os

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or os.cpu_count() or 1
    return ort.InferenceSession(str(Path(artifact_dir) / ONNX_NAME), opts, providers=["CPUExecutionProvider"])


def make_random_weights(path: Path, class_names: list[str], seed: int = 0, bias_mean: float = -2.0,
                        bias_std: float = 2.0, arch: str = "yolo11n.yaml") -> Path:
    """Save a randomly initialised ``arch`` (``model.arch`` names) ``.pt`` whose class biases are spread (scores
    cover (0, 1)), in both heads of a YOLO26."""
    import torch
    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel

    from detloop.model_arch import arch_source

    torch.manual_seed(seed)
    src = arch_source(arch)
    m = DetectionModel(src, nc=len(class_names), verbose=False)
    m.names = dict(enumerate(class_names))
    head = m.model[-1]
    with torch.no_grad():
        for cv3 in (head.cv3, getattr(head, "one2one_cv3", None) or []):
            for seq in cv3:
                seq[-1].bias.normal_(bias_mean, bias_std)
    y = YOLO(src)
    y.model = m
    path.parent.mkdir(parents=True, exist_ok=True)
    y.save(str(path))
    return path


def make_random_artifact(out_dir: Path, class_names: list[str], input_size: int, seed: int = 0,
                         arch: str = "yolo11n.yaml", head: str = "one2many") -> Path:
    """Random weights exported as a scoring artifact directory (``model.onnx`` + ``meta.json``): a model that
    runs through every path (scoring, evaluation, registry) without training, for tests and benchmarks."""
    if (out_dir / "model.onnx").is_file() and (out_dir / "meta.json").is_file():
        return out_dir
    pt = make_random_weights(out_dir.parent / f"{out_dir.name}.pt", class_names, seed, arch=arch)
    return export_scoring_artifact(pt, out_dir, class_names, input_size, head=head)
