"""Would tiling a camera whose objects shrank bring it back? Whole-frame against tiled scoring of a finished soak's
champions on that camera's truth frames, no new label.

The zoom-out drift (``size_scale: 0.45``) shrinks a camera's objects to 6-32 frame pixels, 3-16 at the model's
320-pixel input; labels alone did not bring it back within 0.02 of its pre-onset true mAP in the soaks. Tiling
(``model.tiling.cameras.<camera>``: the frame cut into tiles scored at native resolution, docs/small_objects.md)
restores its objects' size at the model input, at the cost of one model pass per tile. For each week of a finished
soak (``--soak``: its ``truth`` names the champion at each week's end and the day its truth frames were rendered)
and each ``--camera``, the champion scores the same truth-stream frames as the soak's truth (:func:`benchmarks.
soak_truth.true_map`; the whole-frame figures reproduce the soak's) once per variant:

- ``whole``: the frame scored whole (the soak's setting);
- ``tN``: tiles of N frame pixels (``model.tiling.overlap`` apart), no whole-frame pass;
- ``tNf``: the same plus the whole frame (large objects seen whole), merged as production merges them.

Seconds per frame are measured in the same run, so a variant's cost is its ratio to ``whole``.

    python -m benchmarks.soak_tiling --config configs/soak.yaml --soak benchmarks/results/soak8f.json \\
        --camera cam2 --camera cam0 --out benchmarks/results/soak_tiling.json

Needs the soak's stack (MLflow for the champions; started if down). Results are cached under
``<data_dir>/soak-tiling`` (a tiled camera's cache names carry the tile geometry), apart from the soak's own truth
cache so that every variant's seconds are measured in the same run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

from tasks.tiling_check import parse_variant, with_tiling  # the product's variants (detloop drift tiling)

RESULTS = Path(__file__).parent / "results"


def week_days(soak: Mapping[str, Any]) -> dict[int, tuple[str, str]]:
    """Week -> (its champion's version, the day its truth frames were rendered: the week's ``as_of``), for every
    week of the soak's truth with a champion."""
    ends = {int(r["week"]): str(r["as_of"]) for r in soak.get("rows", [])}
    out = {}
    for w, rec in (soak.get("truth") or {}).get("weeks", {}).items():
        if rec.get("champion") is not None and int(w) in ends:
            out[int(w)] = (str(rec["champion"]), ends[int(w)])
    return dict(sorted(out.items()))


def measure(settings: Any, soak: Mapping[str, Any], cameras: Sequence[str], variants: Sequence[str],
            frames: int = 400, weeks: Sequence[int] | None = None,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Per camera, week (``weeks``, default all) and variant: true mAP50 / mAP50-95 and seconds per frame of the
    week's champion."""
    from benchmarks.soak_truth import true_map
    from detloop.clients.registry import RegistryClient
    from detloop.world.config import load_world_config
    from tasks.registry import load_champion

    plan = {v: parse_variant(v) for v in variants}
    world = load_world_config(settings.world_config_path())
    registry = RegistryClient(settings)
    cache = settings.data_dir / "soak-tiling"  # not the soak's cache: every variant's seconds come from this run
    days = {w: vd for w, vd in week_days(soak).items() if weeks is None or w in weeks}
    local: dict[str, Path] = {}
    out: dict[str, Any] = {}
    for cam in cameras:
        out[cam] = {}
        for w, (v, day) in days.items():
            if cam not in world.active_cameras(date.fromisoformat(day)):
                continue
            if v not in local:
                local[v] = Path(load_champion(settings, registry, version=v)) / "scoring"
            out[cam][w] = {"champion": v, "day": day, "variants": {}}
            for name, override in plan.items():
                s = with_tiling(settings, cam, override)
                r = true_map(world, list(settings.classes), cam, date.fromisoformat(day), frames, local[v], s,
                             settings.world.seed, cache, label=f"v{v}")
                out[cam][w]["variants"][name] = {"map50": r["map50"], "map": r["map"],
                                                 "seconds_per_frame": r["seconds"] / frames}
                log(f"{cam} week {w} v{v} {day} {name}: true mAP50 {r['map50']:.3f} mAP50-95 {r['map']:.3f}")
    return {"frames": frames, "cameras": out}


def onsets_of(soak: Mapping[str, Any]) -> dict[str, int]:
    """Camera -> the week of its first drift onset that lowered its true mAP (the soak's recovery records)."""
    out: dict[str, int] = {}
    for rec in (soak.get("truth") or {}).get("recovery", []):
        if rec.get("lowered") and rec["camera"] not in out:
            out[rec["camera"]] = int(rec["onset_week"])
    return out


def table(r: Mapping[str, Any], variants: Sequence[str], onsets: Mapping[str, int] | None = None) -> str:
    """Markdown: per camera and week, each variant's true mAP50 / mAP50-95, and the cost ratio against whole."""
    onsets = onsets or {}
    lines = ["| camera | week | champion | " + " | ".join(f"{v} mAP50 / mAP50-95" for v in variants)
             + " | " + " | ".join(f"{v} cost" for v in variants if v != "whole") + " |",
             "|" + "---|" * (3 + len(variants) + sum(v != "whole" for v in variants))]
    for cam, weeks in r["cameras"].items():
        for w, rec in sorted(weeks.items(), key=lambda kv: int(kv[0])):
            vs = rec["variants"]
            mark = " (onset)" if onsets.get(cam) == int(w) else ""
            cells = [f"{vs[v]['map50']:.3f} / {vs[v]['map']:.3f}" for v in variants]
            base = vs.get("whole", {}).get("seconds_per_frame")
            cost = [f"{vs[v]['seconds_per_frame'] / base:.1f}x" if base else "-" for v in variants if v != "whole"]
            lines.append(f"| {cam} | {w}{mark} | v{rec['champion']} | " + " | ".join(cells + cost) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import argparse
    import json

    from benchmarks._common import machine_info, utc_now, write_result
    from benchmarks.soak_carry import soak_stack

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", "-c", default="configs/soak.yaml")
    ap.add_argument("--soak", type=Path, required=True, help="the finished soak's JSON (its truth and rows)")
    ap.add_argument("--camera", dest="cameras", action="append", required=True, help="camera (repeatable)")
    ap.add_argument("--variant", dest="variants", action="append",
                    help="whole, tN or tNf (repeatable; default: whole t320 t320f)")
    ap.add_argument("--week", dest="weeks", action="append", type=int, help="soak week (repeatable; default: all)")
    ap.add_argument("--truth-frames", type=int, default=400)
    ap.add_argument("--out", type=Path, default=RESULTS / "soak_tiling.json")
    a = ap.parse_args(argv)
    variants = a.variants or ["whole", "t320", "t320f"]
    for v in variants:
        parse_variant(v)  # a bad spelling fails before the stack starts
    if "whole" not in variants:
        variants = ["whole", *variants]
    soak = json.loads(a.soak.read_text())
    r = measure(soak_stack(a.config), soak, a.cameras, variants, a.truth_frames, a.weeks)
    md = table(r, variants, onsets_of(soak))
    write_result(a.out, {"bench": "soak_tiling", "soak": str(a.soak), "variants": variants, **r, "table": md,
                         "when": utc_now(), "machine": machine_info()})
    print(md)
    return r


if __name__ == "__main__":
    main()
