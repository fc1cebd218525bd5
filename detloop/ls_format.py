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
