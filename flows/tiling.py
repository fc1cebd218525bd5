"""``tiling-check``: would tiling a camera help? The question the drift report's shrink note asks before a camera's
``model.tiling.cameras.<camera>`` is switched on (docs/drift.md, docs/crowds_and_small_objects.md).

Reads top to bottom: the run's settings and clients; the champion; the camera's labelled frames the champion never
trained on (golden, val and control frames, and train frames labelled after it: a targeted round's); each variant
scored with the champion's scoring artifact (:func:`tasks.tiling_check.score_variants`: whole, tiles, tiles and the
whole frame, timed in this run); the table and one line of advice, as the run's artifact. It changes no setting:
tiling a camera is the operator's decision (its scoring cost and its golden frames' scores change).
``detloop drift tiling CAMERA`` runs it by hand.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any

from prefect import flow, get_run_logger

from detloop.errors import DataError, NotFound
from flows import steps
from flows.common import publish_report, retrying, run_name, run_settings


@flow(name="tiling-check", flow_run_name=run_name("tiling-check", "camera"), log_prints=True)
def tiling_check(camera: str, since: date | None = None, variants: list[str] | None = None,
                 dataset_version: str | None = None, config: str | None = None,
                 overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score ``camera``'s labelled frames the champion never trained on (captured on or after ``since``; from
    ``dataset_version``, default the newest labelled version, and the golden set) whole and tiled (``variants``:
    ``whole``, ``tN``, ``tNf``; default whole, t320, t320f). Returns the scores, the advice and the table.

    Raises:
        ConfigError: a misspelt variant (before any work).
        NotFound: no champion.
        DataError: no such frames (label some first: a targeted round of the camera).
    """
    from detloop.clients import Clients
    from tasks.tiling_check import DEFAULT_VARIANTS, advice, markdown, parse_variant, score_variants

    log = get_run_logger()
    names = list(variants or DEFAULT_VARIANTS)
    for v in names:
        parse_variant(v)
    settings = run_settings(config, overrides)
    clients = Clients.from_settings(settings)
    champion = retrying(steps.fetch_champion, settings)(settings, clients)
    if champion is None:
        raise NotFound(f"no champion in the registry ({settings.mlflow.model_name} at {settings.mlflow.tracking_uri}): "
                       "bootstrap one first (`detloop bootstrap`)")
    after = since.isoformat() if since else None
    items, splits = retrying(steps.unseen_camera_frames, settings)(settings, clients, camera,
                                                                   champion.dataset_version, after, dataset_version)
    if not items:
        raise DataError(f"{camera}: no labelled frames{' since ' + after if after else ''} that champion "
                        f"v{champion.version} never trained on (golden, val, control, or train frames labelled after "
                        "it): label some first (a targeted round of the camera)")
    log.info("champion v%s on %d frames of %s (%s)", champion.version, len(items), camera,
             ", ".join(f"{k} {n}" for k, n in splits.items()))
    scores = score_variants(champion.scoring_dir, items, settings, camera, names, log.info)
    line = advice(camera, scores, len(items))
    table = markdown(camera, scores)
    log.info(line)
    publish_report("tiling-" + re.sub(r"[^a-z0-9-]", "-", camera.lower()), f"{table}\n{line}\n",
                   f"Tiling check of {camera}: champion v{champion.version} on {len(items)} unseen labelled frames")
    return {"camera": camera, "champion": champion.version, "since": after, "frames": len(items), "splits": splits,
            "scores": [s.to_dict() for s in scores], "advice": line, "markdown": table}
