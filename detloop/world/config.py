"""Parameters of the synthetic production world (``configs/world.yaml``), validated with pydantic.

Everything that shapes the frames lives here: cameras and their backgrounds, the classes' look and
mix, object sizes, crowding, nuisances, and the drift schedule by date and camera. Loading is pure:
:func:`load_world_config` reads a YAML file and raises :class:`~detloop.settings.ConfigError` naming
the bad field.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from detloop.settings import ConfigError

Color = Annotated[tuple[int, int, int], Field(description="BGR colour, 0-255 each.")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Range(_Model):
    """A closed numeric range ``[min, max]``."""

    min: float
    max: float

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must be <= max ({self.max})")
        return self


class BackgroundSpec(_Model):
    """A camera's static background: a linear gradient plus smooth blotches and fine texture."""

    color_a: Color = Field(description="Gradient start colour (BGR).")
    color_b: Color = Field(description="Gradient end colour (BGR).")
    angle_deg: float = Field(0.0, ge=-360, le=360, description="Gradient direction (degrees, 0 = left to right).")
    blotches: int = Field(6, ge=0, le=100, description="Large soft blobs that break the gradient.")
    blotch_strength: float = Field(25.0, ge=0.0, le=128.0, description="Peak intensity change of a blob (0-255 scale).")
    texture: float = Field(6.0, ge=0.0, le=64.0, description="Std of the static fine texture (0-255 scale).")
    clutter: int = Field(4, ge=0, le=100, description="Static distractor lines/rectangles (not objects).")


class CameraSpec(_Model):
    id: str = Field(pattern=r"^[A-Za-z0-9_-]+$", description="Camera id (used in S3 keys).")
    background: BackgroundSpec
    active_from: date | None = Field(None, description="First date the camera produces frames (None: always).")
    active_until: date | None = Field(None, description="Last date the camera produces frames (None: always).")


class ClassSpec(_Model):
    """Look of one class; its shape is fixed by its name (disc, square, triangle, ring, star)."""

    color: Color = Field(description="Base colour (BGR).")
    weight: float = Field(1.0, ge=0.0, description="Relative frequency in the class mix before drift.")


class DriftSpec(_Model):
    """A change of the world from a date on (optionally until a date, optionally for some cameras).

    Several drifts can apply at once: brightness offsets add, contrast and size scales multiply,
    class weights and class colours override per class (later entries win).
    """

    name: str = Field(description="Short name (shown in docs and benchmark reports).")
    start: date = Field(description="First date the drift applies.")
    end: date | None = Field(None, description="Last date it applies (None: forever).")
    cameras: list[str] = Field(default_factory=list, description="Cameras affected (empty: all).")
    brightness: float = Field(0.0, ge=-255, le=255, description="Added to every pixel (0-255 scale).")
    contrast: float = Field(1.0, gt=0.0, le=4.0, description="Pixel values scaled around 128.")
    class_weights: dict[str, float] = Field(default_factory=dict, description="Class weights that replace the defaults.")
    size_scale: float = Field(1.0, gt=0.0, le=10.0, description="Multiplies object sizes.")
    class_colors: dict[str, Color] = Field(
        default_factory=dict, description="New base colours of some classes (appearance drift, e.g. repainted goods)."
    )
    ramp_days: int = Field(
        0, ge=0, le=365,
        description="Days over which the drift grows linearly to its full size (0: a step on `start`). On day k "
        "(k = 1 on `start`) it is at k/ramp_days of its size: offsets and class weights/colours interpolated "
        "linearly, contrast and size scales geometrically.",
    )

    @model_validator(mode="after")
    def _ramp_within(self) -> DriftSpec:
        if self.end is not None and self.end < self.start:
            raise ValueError(f"drift {self.name!r}: end ({self.end}) is before start ({self.start})")
        if self.end is not None and self.ramp_days > (self.end - self.start).days + 1:
            raise ValueError(f"drift {self.name!r}: ramp_days ({self.ramp_days}) is longer than the drift "
                             f"({(self.end - self.start).days + 1} day(s) from {self.start} to {self.end})")
        return self

    def applies(self, camera: str, day: date) -> bool:
        if day < self.start or (self.end is not None and day > self.end):
            return False
        return not self.cameras or camera in self.cameras

    def strength(self, camera: str, day: date) -> float:
        """Share of the drift's full size in force for ``camera`` on ``day``: 0 (not in force) .. 1 (full)."""
        if not self.applies(camera, day):
            return 0.0
        if self.ramp_days <= 0:
            return 1.0
        return min(1.0, ((day - self.start).days + 1) / self.ramp_days)


class ObjectSpec(_Model):
    count: Range = Field(description="Objects per frame (scattered, crowds excluded).")
    size_px: Range = Field(description="Object size (bounding-box side) in FRAME pixels, log-uniform.")
    min_size_px: float = Field(12.0, ge=2.0, description="Hard floor after drift scaling (6 px at model input 320).")
    color_jitter: float = Field(18.0, ge=0.0, le=128.0, description="Uniform jitter of each colour channel.")
    color_confusion: float = Field(
        0.1, ge=0.0, le=1.0, description="Probability an object takes another class's colour (forces shape cues)."
    )
    min_visible: float = Field(0.3, ge=0.0, le=1.0, description="Objects less visible than this are not drawn.")


class CrowdSpec(_Model):
    probability: float = Field(0.35, ge=0.0, le=1.0, description="Probability a frame holds a crowd.")
    size: Range = Field(description="Objects per crowd (all of one class).")
    iou: Range = Field(description="IoU of each crowd member's box with the previous member's.")


class NuisanceSpec(_Model):
    noise_sigma: float = Field(5.0, ge=0.0, le=64.0, description="Std of per-frame sensor noise (0-255 scale).")
    blur_probability: float = Field(0.2, ge=0.0, le=1.0, description="Probability of a Gaussian blur.")
    blur_sigma: Range = Field(description="Blur sigma in pixels when blurred.")
    occluder_probability: float = Field(0.3, ge=0.0, le=1.0, description="Probability per frame of occluding bars.")
    occluders: Range = Field(description="Occluding bars per frame when present.")
    occlusion: Range = Field(description="Share of an object's box side an occluder covers.")
    day_night: float = Field(0.25, ge=0.0, le=1.0, description="Brightness dip at night (share of the 0-255 range x contrast).")
    exposure_jitter: float = Field(8.0, ge=0.0, le=64.0, description="Per-frame brightness jitter (0-255 scale).")


class StreamSpec(_Model):
    """A labelled set drawn from its own random stream (seed or golden)."""

    start: date
    days: int = Field(ge=1, le=3650)
    frames: int = Field(ge=1, le=100_000, description="Frames in the set (spread over cameras and days).")
    val_share: float = Field(0.2, ge=0.0, le=1.0, description="Share of (camera, date, hour) groups in val (seed).")


class WorldConfig(_Model):
    """The whole world."""

    width: int = Field(640, ge=64, le=8192, description="Frame width (pixels).")
    height: int = Field(480, ge=64, le=8192, description="Frame height (pixels).")
    jpeg_quality: int = Field(90, ge=30, le=100, description="JPEG quality of published frames.")
    cameras: list[CameraSpec] = Field(min_length=1)
    classes: dict[str, ClassSpec] = Field(min_length=1, description="Per-class look and weight, keyed by class name.")
    objects: ObjectSpec
    crowd: CrowdSpec
    nuisance: NuisanceSpec
    drift: list[DriftSpec] = Field(default_factory=list)
    seed_set: StreamSpec = Field(description="The bootstrap labelled set (`detloop world seed`).")
    golden_set: StreamSpec = Field(description="The golden evaluation set (`detloop world golden`).")

    @field_validator("cameras")
    @classmethod
    def _unique_cameras(cls, v: list[CameraSpec]) -> list[CameraSpec]:
        ids = [c.id for c in v]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"camera ids must be unique; repeated: {dupes}")
        return v

    @model_validator(mode="after")
    def _refs(self) -> WorldConfig:
        cams = {c.id for c in self.cameras}
        for d in self.drift:
            bad = sorted(set(d.cameras) - cams)
            if bad:
                raise ValueError(f"drift {d.name!r}: unknown cameras {bad}")
            badc = sorted((set(d.class_weights) | set(d.class_colors)) - set(self.classes))
            if badc:
                raise ValueError(f"drift {d.name!r}: unknown classes {badc}")
        unknown = sorted(set(self.classes) - set(SHAPES))
        if unknown:
            raise ValueError(f"classes {unknown} have no shape; known shapes: {list(SHAPES)}")
        return self

    def camera(self, camera_id: str) -> CameraSpec:
        for c in self.cameras:
            if c.id == camera_id:
                return c
        raise ConfigError(f"world: unknown camera {camera_id!r}; cameras are {[c.id for c in self.cameras]}")

    def active_cameras(self, day: date) -> list[str]:
        """Cameras producing frames on ``day``."""
        return [
            c.id
            for c in self.cameras
            if (c.active_from is None or day >= c.active_from) and (c.active_until is None or day <= c.active_until)
        ]

    def check_classes(self, classes: list[str]) -> None:
        """Raise ConfigError unless the world defines exactly the configured classes."""
        missing = [c for c in classes if c not in self.classes]
        extra = [c for c in self.classes if c not in classes]
        if missing or extra:
            raise ConfigError(f"world config: classes differ from settings.classes: missing {missing}, extra {extra}")


SHAPES = ("disc", "square", "triangle", "ring", "star")


def load_world_config(path: str | Path) -> WorldConfig:
    """Read and validate a world YAML (ConfigError with one line per bad field)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"world config not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML: {err}") from err
    try:
        return WorldConfig.model_validate(raw)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            loc = ".".join(str(x) for x in e["loc"]) or "<root>"
            msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
            lines.append(f"{p}: {loc}: {msg}")
        raise ConfigError("\n".join(lines)) from None
