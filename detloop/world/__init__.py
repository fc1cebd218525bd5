"""The synthetic production world: deterministic cameras, objects, nuisances and drift.

No public weights or datasets can be downloaded where detloop is developed, so this world is what the
demo, the tests and the benchmarks run on. Modules:

- :mod:`detloop.world.config`: the pydantic model of ``configs/world.yaml``.
- :mod:`detloop.world.render`: pure rendering of one frame and its ground truth.
- :mod:`detloop.world.publish`: production frames + oracle truth to S3, the seed and golden versions.
- :mod:`detloop.world.cli`: ``detloop world ...``.

Nothing is imported eagerly here; import the submodules.
"""

from __future__ import annotations

from typing import Any

_PUBLIC = {
    "oracle_truth": "detloop.world.publish",
    "publish_world": "detloop.world.publish",
    "publish_seed": "detloop.world.publish",
    "publish_golden": "detloop.world.publish",
    "publish_labelled_set": "detloop.world.publish",
    "load_world": "detloop.world.publish",
    "render_frame": "detloop.world.render",
    "WorldConfig": "detloop.world.config",
    "load_world_config": "detloop.world.config",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    """Lazy re-exports (``from detloop.world import oracle_truth``) without importing at package import."""
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'detloop.world' has no attribute {name!r}")
