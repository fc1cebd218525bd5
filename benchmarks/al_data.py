"""Inputs of the active-learning benchmark: the synthetic world rendered to local YOLO folders, or any
labelled YOLO-format dataset (a seed set, a pool and an evaluation set listed in a ``data.yaml``).

Both give a :class:`BenchData`: four lists of :class:`BenchFrame` (image path + ground truth in frame
pixels) and the class names. The pool's ground truth plays the oracle: the benchmark reveals it (through
the simulated annotator's noise) only for frames a strategy selects.

World layout (``<root>/``): ``images/<split>/<name>.jpg`` + ``labels/<split>/<name>.txt`` for the splits
``seed`` (bootstrap, the world's ``seed`` stream over ``seed_set`` dates: before production and drift),
``pool`` and ``eval`` (own streams ``bench-pool`` / ``bench-eval`` over the ``golden_set`` dates, so
they see the production drifts but never share a frame with the gate's golden set), and ``val`` (a few
frames of the seed dates, only for Ultralytics' per-epoch validation: the benchmark uses ``last.pt``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detloop.detections import Detections
from detloop.errors import DataError

IMG_EXT = (".jpg", ".jpeg", ".png", ".bmp")
SPLITS = ("seed", "pool", "eval", "val")


@dataclass
class BenchFrame:
    """One labelled frame.

    Attributes:
        name: unique id within its split (file stem).
        image: image path.
        truth: ground truth in frame pixels.
        width, height: frame size in pixels.
        camera: camera id (``unknown`` for foreign data).
    """

    name: str
    image: str
    truth: Detections
    width: int
    height: int
    camera: str = "unknown"


@dataclass
class BenchData:
    """The four splits and what they are."""

    classes: list[str]
    seed: list[BenchFrame]
    pool: list[BenchFrame]
    eval: list[BenchFrame]
    val: list[BenchFrame]
    source: dict[str, Any] = field(default_factory=dict)

    def stats(self) -> dict[str, Any]:
        """Frames, boxes and boxes per class of each split (the rare class's eval count matters)."""
        out: dict[str, Any] = {}
        for split in SPLITS:
            frames = getattr(self, split)
            cls = np.concatenate([f.truth.class_id for f in frames]) if frames else np.zeros(0, np.int64)
            area = np.concatenate([f.truth.area for f in frames]) if frames else np.zeros(0)
            counts = np.bincount(cls, minlength=len(self.classes))
            out[split] = {"frames": len(frames), "boxes": int(cls.size),
                          "boxes_per_class": {c: int(counts[i]) for i, c in enumerate(self.classes)},
                          "small_boxes": int((area < 32.0**2).sum())}
        return out


# --------------------------------------------------------------------------------------------
# The synthetic world
# --------------------------------------------------------------------------------------------
def world_key(world_cfg: dict[str, Any], world_seed: int, sizes: dict[str, int]) -> str:
    """Short hash naming a rendered world (parameters, seed and split sizes)."""
    blob = json.dumps({"world": world_cfg, "seed": world_seed, "sizes": sizes}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def render_world(
    root: Path, world_config: Path, classes: list[str], world_seed: int, sizes: dict[str, int]
) -> BenchData:
    """Render (or reuse) the world's benchmark splits as YOLO folders under ``root``.

    Args:
        root: output directory (reused when ``done.json`` says the same key was rendered).
        world_config: the world YAML (frozen: its full parameters are recorded with the results).
        classes: class names in settings order.
        world_seed: the world seed (a second seed confirms a result on another world).
        sizes: frames per split, keys ``seed``, ``pool``, ``eval``, ``val``.
    """
    import cv2

    from detloop.world.config import load_world_config
    from detloop.world.publish import plan_stream
    from detloop.world.render import render_frame

    cfg = load_world_config(world_config)
    cfg.check_classes(classes)
    params = cfg.model_dump(mode="json")
    key = world_key(params, world_seed, sizes)
    done = root / "done.json"
    streams = {"seed": ("seed", cfg.seed_set.start, cfg.seed_set.days),
               "val": ("bench-val", cfg.seed_set.start, cfg.seed_set.days),
               "pool": ("bench-pool", cfg.golden_set.start, cfg.golden_set.days),
               "eval": ("bench-eval", cfg.golden_set.start, cfg.golden_set.days)}
    source = {"kind": "world", "world_config": str(world_config), "world_seed": world_seed, "key": key,
              "world_params": params, "streams": {k: {"stream": s, "start": str(d0), "days": n}
                                                  for k, (s, d0, n) in streams.items()}}
    if not (done.is_file() and json.loads(done.read_text()).get("key") == key):
        for split, (stream, start, days) in streams.items():
            img_dir, lbl_dir = root / "images" / split, root / "labels" / split
            img_dir.mkdir(parents=True, exist_ok=True)
            lbl_dir.mkdir(parents=True, exist_ok=True)
            meta = []
            for p in plan_stream(cfg, world_seed, stream, start, days, sizes[split]):
                f = render_frame(cfg, classes, p.camera, p.day, p.index, p.frames_per_day, world_seed, stream)
                name = f"{p.camera}__{p.day.isoformat()}_{p.frame_id}"
                cv2.imwrite(str(img_dir / f"{name}.jpg"), f.image, [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
                (lbl_dir / f"{name}.txt").write_text(f.truth.to_yolo_txt(cfg.width, cfg.height))
                meta.append({"name": name, "camera": p.camera, "date": p.day.isoformat(), "drifts": f.meta["drifts"]})
            (root / f"{split}_meta.json").write_text(json.dumps(meta))
        done.write_text(json.dumps({"key": key}))
    data = BenchData(classes, *(load_split(root / "images" / s, len(classes)) for s in ("seed", "pool", "eval", "val")),
                     source=source)
    return data


# --------------------------------------------------------------------------------------------
# Any YOLO-format dataset
# --------------------------------------------------------------------------------------------
def _label_path(img: Path) -> Path:
    parts = list(img.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    raise DataError(f"{img}: YOLO layout needs the image under an 'images' folder (labels in 'labels')")


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def frames_from_images(images: list[Path], num_classes: int) -> list[BenchFrame]:
    """BenchFrames from image files with YOLO labels in the sibling ``labels`` tree (missing file = no boxes)."""
    out = []
    seen: set[str] = set()
    for img in images:
        lp = _label_path(img)
        w, h = _image_size(img)
        try:
            truth = Detections.from_yolo_txt(lp.read_text() if lp.is_file() else "", w, h, num_classes)
        except ValueError as err:
            raise DataError(f"{lp}: {err}") from err
        name = img.stem if img.stem not in seen else f"{img.parent.name}_{img.stem}"
        seen.add(name)
        cam = img.stem.split("__", 1)[0] if "__" in img.stem else "unknown"
        out.append(BenchFrame(name, str(img), truth, w, h, cam))
    return out


def load_split(images_dir: Path, num_classes: int) -> list[BenchFrame]:
    """All images under ``images_dir`` (sorted), with their labels."""
    files = sorted(p for p in Path(images_dir).rglob("*") if p.suffix.lower() in IMG_EXT)
    return frames_from_images(files, num_classes)


def _split_files(data: dict[str, Any], root: Path, key: str, yaml_path: Path) -> list[Path]:
    entries = data[key] if isinstance(data[key], list) else [data[key]]
    files: list[Path] = []
    for e in entries:
        p = Path(e) if Path(e).is_absolute() else root / e
        if p.suffix == ".txt" and p.is_file():
            for line in p.read_text().splitlines():
                if line.strip():
                    q = Path(line.strip())
                    files.append(q if q.is_absolute() else root / q)
        elif p.is_dir():
            files += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMG_EXT)
        else:
            raise DataError(f"{yaml_path}: split {key!r} entry {e!r} is neither a folder nor a .txt list ({p})")
    return files


def load_yolo_dataset(data_yaml: Path, val_frames: int = 16) -> BenchData:
    """A labelled YOLO dataset as benchmark input.

    The ``data.yaml`` names ``names`` (list or {id: name}) and the splits: ``seed`` (or ``train``) = the
    bootstrap set, ``pool`` = the unlabelled pool (its labels act as the oracle), ``eval`` (or ``test``)
    = the benchmark evaluation set, optional ``val`` (per-epoch validation only; default: the first
    ``val_frames`` seed frames). Paths are relative to ``path`` (default: the YAML's folder).

    Raises:
        DataError: a missing split, an empty split, or labels outside the class list.
    """
    import yaml

    data_yaml = Path(data_yaml)
    if data_yaml.is_dir():
        data_yaml = data_yaml / "data.yaml"
    if not data_yaml.is_file():
        raise DataError(f"dataset YAML not found: {data_yaml}")
    data = yaml.safe_load(data_yaml.read_text()) or {}
    names = data.get("names")
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    if not names:
        raise DataError(f"{data_yaml}: 'names' (the class list) is missing")
    root = Path(data.get("path") or data_yaml.parent)
    if not root.is_absolute():
        root = data_yaml.parent / root
    picked: dict[str, str] = {}
    for split, keys in (("seed", ("seed", "train")), ("pool", ("pool",)), ("eval", ("eval", "test"))):
        k = next((k for k in keys if k in data), None)
        if k is None:
            raise DataError(f"{data_yaml}: no {' or '.join(repr(x) for x in keys)} split; the benchmark needs "
                            "a seed set, a pool and an evaluation set")
        picked[split] = k
    frames = {s: frames_from_images(_split_files(data, root, k, data_yaml), len(names)) for s, k in picked.items()}
    for s, fr in frames.items():
        if not fr:
            raise DataError(f"{data_yaml}: split {picked[s]!r} has no images")
    pool_names = {f.image for f in frames["pool"]}
    overlap = pool_names & ({f.image for f in frames["eval"]} | {f.image for f in frames["seed"]})
    if overlap:
        raise DataError(f"{data_yaml}: {len(overlap)} pool images are also in the seed or eval split")
    val = (frames_from_images(_split_files(data, root, "val", data_yaml), len(names)) if "val" in data
           else frames["seed"][:val_frames])
    source = {"kind": "yolo", "data_yaml": str(data_yaml.resolve()), "splits": picked}
    return BenchData(list(names), frames["seed"], frames["pool"], frames["eval"], val, source)


@dataclass
class AnnotatorNoise:
    """Simulated annotator noise (see :class:`detloop.sim.annotator.AnnotatorProfile`)."""

    jitter: float = 0.02
    p_miss_small: float = 0.05
    p_flip: float = 0.01


def annotate(frame: BenchFrame, noise: AnnotatorNoise, seed: int, num_classes: int) -> Detections:
    """What the simulated annotator draws for ``frame`` (seeded per (seed, frame name))."""
    from detloop.sim.annotator import AnnotatorProfile, degrade

    prof = AnnotatorProfile(p_miss_small=noise.p_miss_small, jitter=noise.jitter, p_flip=noise.p_flip, seed=seed)
    h = hashlib.sha256(f"{seed}|{frame.name}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(h[:8], "big"))
    return degrade(frame.truth, prof, rng, num_classes, frame.width, frame.height)


def labelled_name(frame: BenchFrame) -> str:
    """File name of a labelled pool frame in an arm's folder (the unique frame name + the image suffix)."""
    return frame.name + Path(frame.image).suffix
