"""The model families ``model.arch`` accepts, and the YAML each one is built from (no weights: from scratch).

=======================  ===========================================  =====================================
``model.arch``           built from                                   head
=======================  ===========================================  =====================================
``yolo11<s>.yaml``       Ultralytics ``cfg/models/11/yolo11.yaml``     one-to-many (P3-P5), NMS
``yolo11n-p2.yaml``      ``detloop/model_yamls/yolo11n-p2.yaml``       one-to-many (P2-P5), NMS
``yolo26<s>.yaml``       Ultralytics ``cfg/models/26/yolo26.yaml``     one-to-many + one-to-one (P3-P5)
``yolo26<s>-p2.yaml``    Ultralytics ``cfg/models/26/yolo26-p2.yaml``  one-to-many + one-to-one (P2-P5)
=======================  ===========================================  =====================================

``<s>`` is the scale (``n``, ``s``, ``m``, ``l``, ``x``; Ultralytics reads it from the file name). Ultralytics
8.4 ships no YOLO11 P2 file, so detloop ships one (scale ``n``). YOLO26 models are end-to-end: besides the
one-to-many head (decoded with NMS) they train a one-to-one head that can be decoded without NMS
(``model.nms_free``, :mod:`tasks.export`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ARCH_RE = re.compile(r"^yolo(?P<family>11|26)(?P<scale>[nslmx])(?P<p2>-p2)?\.yaml$")
LOCAL_YAMLS = Path(__file__).resolve().parent / "model_yamls"
ARCH_CHOICES = ("yolo11n.yaml", "yolo11n-p2.yaml", "yolo26n.yaml", "yolo26n-p2.yaml")


@dataclass(frozen=True)
class ArchInfo:
    """What an architecture name means.

    Attributes:
        name: the ``model.arch`` value.
        family: ``"11"`` or ``"26"``.
        scale: ``n``, ``s``, ``m``, ``l`` or ``x``.
        p2: has a stride-4 (P2) output level for small objects.
        end2end: has a one-to-one head (YOLO26): can be decoded without NMS.
    """

    name: str
    family: str
    scale: str
    p2: bool
    end2end: bool


def parse_arch(arch: str) -> ArchInfo:
    """The meaning of ``arch``.

    Raises:
        ValueError: not one of the supported families (the message lists the choices).
    """
    m = ARCH_RE.match(arch)
    if m is None or (m["family"] == "11" and m["p2"] and not (LOCAL_YAMLS / arch).is_file()):
        raise ValueError(f"unknown model arch {arch!r}: expected yolo11<s>.yaml, yolo26<s>.yaml, yolo26<s>-p2.yaml "
                         f"(<s> one of n, s, m, l, x) or yolo11n-p2.yaml, e.g. one of {', '.join(ARCH_CHOICES)}")
    return ArchInfo(arch, m["family"], m["scale"], bool(m["p2"]), m["family"] == "26")


def arch_source(arch: str) -> str:
    """What to hand ``ultralytics.YOLO`` for ``arch``: a YAML name it ships, or the path of detloop's own file."""
    parse_arch(arch)
    local = LOCAL_YAMLS / arch
    return str(local) if local.is_file() else arch
