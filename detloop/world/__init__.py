"""The synthetic production world: deterministic cameras, objects, nuisances and drift.

No public weights or datasets can be downloaded where detloop is developed, so this world is what the
demo, the tests and the benchmarks run on. Modules:

- :mod:`detloop.world.config`: the pydantic model of ``configs/world.yaml``.
- :mod:`detloop.world.render`: pure rendering of one frame and its ground truth.
- :mod:`detloop.world.publish`: production frames + oracle truth to S3, the seed and golden versions.
- :mod:`detloop.world.cli`: ``detloop world ...``.

Nothing is imported eagerly here; import the submodules.
"""
