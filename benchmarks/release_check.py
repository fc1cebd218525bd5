"""Replay the labelled check of a release on a soak's stored records (issue 21).

A soak (``benchmarks/soak.py``) keeps every live-accuracy record its monitor computed and every champion's reference
(which cameras it carried, from which onset). For each champion with carried cameras and each live record of it,
this recomputes the record with the labelled check (:func:`tasks.live_accuracy.live_accuracy` with ``carried``:
each carried camera's control frames since its onset, their mAP50 and the label-free estimate on them), seeing only
the rounds and dataset versions that existed when the record was made (the newest round the record pooled), and
says whether the check would have held the camera (:func:`tasks.drift.estimate_overreads`). Nothing is written
into the soak's store.

    python -m benchmarks.release_check --config configs/soak_tiled_d.yaml \\
        --out benchmarks/results/release_check_soak_d.json

Needs the soak's stack up (``detloop stack up --config ...``); it scores each champion's control frames (seconds).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


class ReadOnly:
    """A store that reads through and writes nothing; live records read as absent (so they are recomputed)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def put_json(self, *_a: Any, **_k: Any) -> None:
        return None

    def exists(self, bucket: str, key: str) -> bool:
        return False if "/live/" in key else self.inner.exists(bucket, key)


@contextmanager
def as_of_rounds(allowed: set[str]) -> Iterator[None]:
    """Only the rounds in ``allowed`` and the dataset versions holding nothing else are seen (the store as it
    was when the newest of them was the newest round)."""
    import detloop.datasets as ds
    import tasks.rounds as tr

    real_rounds, real_versions = tr.list_rounds, ds.list_versions
    tr.list_rounds = lambda store, settings, status=None: [  # type: ignore[assignment]
        r for r in real_rounds(store, settings, status) if r.round_id in allowed]
    ds.list_versions = lambda store, settings, kind=None: [  # type: ignore[assignment]
        v for v in real_versions(store, settings, kind) if set(v.get("rounds") or []) <= allowed]
    try:
        yield
    finally:
        tr.list_rounds, ds.list_versions = real_rounds, real_versions  # type: ignore[assignment]


def replay(settings: Any, clients: Any) -> list[dict[str, Any]]:
    """One row per (champion, live record, carried camera); see the module docstring."""
    from tasks.drift_records import carried_by_version, model_prefix
    from tasks.live_accuracy import live_accuracy
    from tasks.registry import load_champion
    from tasks.rounds import list_rounds

    store, bucket = clients.store, settings.s3.data_bucket
    carried = carried_by_version(store, settings)
    rounds = {r.round_id: r for r in list_rounds(store, settings)}
    seen: set[tuple[str, tuple[str, ...]]] = set()
    rows = []
    for obj in store.list(bucket, model_prefix(settings) + "live/"):
        version = obj.key.split("version=")[1].split("/")[0]
        cams = carried.get(version) or {}
        record = store.get_json(bucket, obj.key)
        pooled = tuple(record.get("rounds") or [])
        if not cams or not pooled or (version, pooled) in seen:
            continue
        seen.add((version, pooled))
        newest = max(rounds[r].created_at for r in pooled)
        with as_of_rounds({r for r, rec in rounds.items() if rec.created_at <= newest}):
            local = load_champion(settings, clients.registry, version=version)
            got = live_accuracy(settings, ReadOnly(store), version, local / "scoring", None,
                                carried={c: str(x["onset"]) for c, x in cams.items()})
        for p in got.carried:
            over = None if p.map50 is None or p.estimate is None else p.estimate - p.map50
            rows.append({"version": version, "newest_round": max(pooled, key=lambda r: rounds[r].created_at),
                         "window_as_recorded": list(got.rounds) == list(pooled), "camera": p.camera,
                         "frames_since": p.label, "n_frames": p.n_frames, "map50": p.map50, "estimate": p.estimate,
                         "overread": over, "holds": over is not None and over > settings.drift.recovery_tolerance,
                         "note": p.note})
    return sorted(rows, key=lambda r: (int(r["version"]), r["newest_round"], r["camera"]))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="the soak's config (its stack must be up)")
    ap.add_argument("--min-frames", type=int, default=None, help="drift.release_check_min_frames (default: config)")
    ap.add_argument("--out", type=Path, default=RESULTS / "release_check.json")
    args = ap.parse_args(argv)
    from detloop.clients import Clients
    from detloop.settings import load_settings
    from infra.stack import client_env

    over = {"drift": {"release_check_min_frames": args.min_frames}} if args.min_frames else None
    settings = load_settings(args.config, overrides=over)
    os.environ.update(client_env(settings))
    rows = replay(settings, Clients.from_settings(settings))
    res = {"bench": "release_check", "config": args.config,
           "release_check_min_frames": settings.drift.release_check_min_frames,
           "tolerance": settings.drift.recovery_tolerance, "held": sum(r["holds"] for r in rows), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    for r in rows:
        nums = (f"mAP50 {r['map50']:.3f}, estimate {r['estimate']:.3f}" if r["map50"] is not None
                and r["estimate"] is not None else r["note"])
        print(f"v{r['version']:>3s} {r['newest_round']:40s} {r['camera']}: {r['n_frames']:3d} frames {r['frames_since']}, "
              f"{nums}{'  -> HELD' if r['holds'] else ''}")
    return res


if __name__ == "__main__":
    main()
