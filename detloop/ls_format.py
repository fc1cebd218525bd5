"""Label Studio's formats as detloop uses them (pure): the label config, control names, task filters.

The client (:mod:`detloop.clients.labelstudio`) and the task conversion (:mod:`tasks.ls_tasks`) both use
these; neither owns them.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any
from xml.sax.saxutils import quoteattr

from detloop.errors import DetloopError

FROM_NAME = "label"
TO_NAME = "image"
IMAGE_FIELD = "image"
PROJECT_MARKER = "detloop-managed"
# One model_version for every round's pre-annotations: Label Studio shows only predictions whose version
# equals the project's, and sets the project's only when it is empty (so "1" would stay while later rounds
# import "2", "3"...). The registry version that scored a round is in detloop's round record.
PREDICTION_MODEL_VERSION = "detloop"


class LabelConfigError(DetloopError):
    """The project's label config does not match the configured classes."""


def label_config_xml(class_names: Sequence[str]) -> str:
    """Label Studio config: one Image and one RectangleLabels with a Label per class, in class order."""
    labels = "\n".join(f"    <Label value={quoteattr(c)}/>" for c in class_names)
    return (
        "<View>\n"
        f'  <Image name="{TO_NAME}" value="${IMAGE_FIELD}" zoom="true"/>\n'
        f'  <RectangleLabels name="{FROM_NAME}" toName="{TO_NAME}">\n'
        f"{labels}\n"
        "  </RectangleLabels>\n"
        "</View>"
    )


def config_class_names(label_config: str) -> list[str]:
    """Label values of the RectangleLabels control named ``label`` in a label config XML.

    Raises:
        LabelConfigError: when the XML cannot be parsed or has no such control.
    """
    try:
        root = ET.fromstring(label_config)
    except ET.ParseError as err:
        raise LabelConfigError(f"label config is not valid XML: {err}") from err
    for node in root.iter("RectangleLabels"):
        if node.get("name") == FROM_NAME:
            return [lab.get("value", "") for lab in node.iter("Label")]
    raise LabelConfigError(f"label config has no <RectangleLabels name=\"{FROM_NAME}\">")


def check_label_config(label_config: str, class_names: Sequence[str], where: str = "project") -> None:
    """Refuse a label config whose classes differ from the configured ones, listing the difference.

    Raises:
        LabelConfigError: ``... unknown classes [...]; missing classes [...]``.
    """
    have = config_class_names(label_config)
    unknown = sorted(set(have) - set(class_names))
    missing = [c for c in class_names if c not in set(have)]
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"classes not in the config's class list {unknown}")
        if missing:
            parts.append(f"configured classes missing from it {missing}")
        raise LabelConfigError(
            f"Label Studio {where} label config was edited: " + "; ".join(parts)
            + " (fix the project's labeling setup or the `classes` list; detloop never rewrites it)"
        )


def data_filter(field: str, value: Any, ftype: str = "String", operator: str = "equal") -> dict[str, Any]:
    """One Data Manager filter item on ``task.data[field]``."""
    return {"filter": f"filter:tasks:data.{field}", "operator": operator, "type": ftype, "value": value}


def labelling_instructions(class_names: Sequence[str]) -> str:
    """The project's labelling instructions (HTML, shown to labellers before they start)."""
    items = "".join(f"<li><b>{c}</b></li>" for c in class_names)
    return (
        "<h3>Draw a box around every object of these classes</h3>"
        f"<ul>{items}</ul>"
        "<p><b>What counts as an object:</b> any instance of a class above that you can recognise, however small. "
        "Draw the tightest box around its visible pixels. Background, reflections and shadows are not objects.</p>"
        "<p><b>Occluded objects</b> (partly hidden by another object): box the visible part only, if you can still "
        "tell the class; skip it if you cannot.</p>"
        "<p><b>Truncated objects</b> (cut by the frame border): box the part inside the frame.</p>"
        "<p><b>Pre-annotations</b> are the current model's guesses: move, relabel or delete wrong boxes and add "
        "missed ones. Submit a frame with no box when it holds no object. Skip a frame only when it is unusable "
        "(corrupt, black, unreadable).</p>"
        "<p>Each tab holds one labelling round; frames come in random order.</p>"
        f"<!-- {PROJECT_MARKER} -->"
    )
