"""How far can labels bring a drifted camera back? The recovery ceiling of a soak round's fine-tune.

The soak's recovery target (a drift that lowered a camera's true mAP is back within 0.02 of its pre-onset value
in <= 2 weeks) assumes enough labels of the drifted camera bring it back. This measures whether they can, and how
many it takes: for a finished soak round, the round's recorded fine-tune (same champion, same dataset version,
same spec: :func:`benchmarks.soak_finetune.finetune`) is repeated with ``N`` extra frames per drifted camera added to
its train list, frames rendered by the world after the onset (a stream production never publishes, ``ceiling``)
with their exact truth as labels, i.e. perfect labels bought in any number. Variants:

- the run's own challenger (no extra frame) is measured beside, from the registry; ``as-run`` re-trains it (the
  training is deterministic: a check that the re-training reproduces it);
- ``+N``: N extra labelled frames per drifted camera, the round's epochs;
- ``+N-xE``: the same with E times the epochs (does the 3-epoch fine-tune leave accuracy on the table?);
- a ``-sim`` suffix: the extra frames labelled as the soak's simulated annotators label (misses, 2 % box jitter,
  class flips) instead of exactly: what the loop can actually buy;
- ``-sel`` / ``-selc`` / ``-rnd`` before it (``+50-sel-sim``): the N frames per camera are picked from a pool of
  ``--pool-factor`` x N rendered frames per camera, by the product's selection as a targeted round runs it (the
  round's champion scores the pool; ``balance_cameras``; no control arm; ``selc``: ranked by value per expected
  labelling second) or uniformly at random: does the selection pick better frames than chance for a drifted camera?

Each challenger is measured as the soak measures: the true mAP50 per camera on the soak's truth frames of the end
of the round's week (:class:`benchmarks.soak_carry.RoundTruth`, cached), and the gate against the round's champion
on the round's slices (golden delta). The drifted cameras are those whose world onset (drift or new camera) falls in
the 14 days before the round's ``as_of`` unless ``--camera`` names them; the extra frames spread over the days from
the onset (or 7 days back) to the day before ``as_of``, what a labeller could have been given that week.

    python -m benchmarks.soak_ceiling --config configs/soak.yaml --round soak-2026-02-02 \\
        --variant +50 --variant +200 --variant +200-x3 --soak benchmarks/results/soak8b.json --out benchmarks/results/soak_ceiling.json

Needs the soak's stack (started if down). Extra frames and trainings are kept under
``<data_dir>/soak-ceiling/<round>/`` and reused by a re-run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any, NamedTuple

RESULTS = Path(__file__).parent / "results"
STREAM = "ceiling"
_VARIANT = re.compile(r"^(as-run|\+(\d+)(?:-x(\d+))?(?:-(selc|sel|rnd))?(-sim)?)$")


class Variant(NamedTuple):
    """Extra frames per drifted camera, epoch factor, simulated annotators' labels (else exact), and how the frames
    are picked: ``None`` frames ``0..N-1`` of their own render; ``"sel"`` the product's selection (the round's
    champion scores a pool of ``pool_factor x N`` frames per camera, :func:`pick_from_pool`); ``"selc"`` the same
    ranked by value per expected labelling second (``selection.cost.per_second``); ``"rnd"`` uniformly from the
    same pool."""

    n: int
    factor: int
    sim: bool
    pick: str | None = None


def parse_variant(name: str) -> Variant:
    """``as-run`` -> (0, 1, False); ``+N`` -> (N, 1, False); ``+N-xE`` -> (N, E, False); a ``-sel`` / ``-selc`` /
    ``-rnd`` before the suffix: picked from a pool by the selection (``selc``: per expected second) / at random; a ``-sim`` suffix -> labels by the soak's
    simulated annotators (misses, jitter, class flips: :func:`flows.demo.default_annotators`) instead of the exact
    truth.

    Raises:
        ValueError: any other spelling (the message lists the accepted ones).
    """
    m = _VARIANT.match(name)
    if m is None:
        raise ValueError(f"variant {name!r}: expected as-run, +N, +N-xE, either with -sel or -rnd and/or -sim (N extra "
                         "frames per camera, E x epochs, -sel/-rnd: picked from a scored pool by the selection / at "
                         "random, -sim: the simulated annotators' labels)")
    if m.group(1) == "as-run":
        return Variant(0, 1, False)
    n, e = int(m.group(2)), int(m.group(3) or 1)
    if e < 1:
        raise ValueError(f"variant {name!r}: the epoch factor must be >= 1")
    return Variant(n, e, bool(m.group(5)), m.group(4))


def drifted_cameras(onsets: Sequence[dict[str, Any]], as_of: date, days: int = 14) -> dict[str, date]:
    """Camera -> its latest world onset (drift or new camera) in ``[as_of - days, as_of)``: the cameras a round on
    ``as_of`` could have had labels of since they changed (an onset on ``as_of`` itself had none yet), and since when
    they look as they do now (a camera that changed twice: the second change)."""
    out: dict[str, date] = {}
    for o in onsets:
        d = date.fromisoformat(o["onset"])
        if as_of - timedelta(days=days) <= d < as_of:
            out[o["camera"]] = max(out.get(o["camera"], d), d)
    return out


def label_days(onset: date, as_of: date, back: int = 7) -> list[date]:
    """The days a labeller could have been given frames of a camera drifted on ``onset``, in a round on ``as_of``:
    from the onset (at most ``back`` days back) to the day before ``as_of``; the onset day alone if that is empty."""
    first = max(onset, as_of - timedelta(days=back))
    days = [first + timedelta(days=i) for i in range((as_of - first).days)]
    return days or [onset]


def render_extra(world: Any, classes: Sequence[str], cameras: dict[str, date], as_of: date, n: int, seed: int,
                 out: Path, annotator: Any | None = None) -> list[str]:
    """``n`` labelled frames per camera (stream ``ceiling``) as an Ultralytics image/label pair each under ``out``;
    existing ones are kept. Labels are the exact truth, or what ``annotator`` (an
    :class:`~detloop.sim.annotator.AnnotatorProfile`) makes of it. Returns the image paths."""
    import hashlib

    import numpy as np

    from detloop.sim.annotator import degrade
    from detloop.world.render import encode_jpeg, render_frame

    paths = []
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    for cam, onset in sorted(cameras.items()):
        days = label_days(onset, as_of)
        per_day = -(-n // len(days))
        for i in range(n):
            day, k = days[i % len(days)], i // len(days)
            img = out / "images" / f"{cam}-{day.isoformat()}-{k:04d}.jpg"
            if not img.is_file():
                fr = render_frame(world, list(classes), cam, day, k, per_day, seed=seed, stream=STREAM)
                h, w = fr.image.shape[:2]
                gt = fr.truth
                if annotator is not None:  # the annotator's own draw per frame, as reproducible as the frame
                    seed_bytes = hashlib.sha256(f"{annotator.seed}|{img.stem}".encode()).digest()[:8]
                    gt = degrade(gt, annotator, np.random.default_rng(int.from_bytes(seed_bytes, "big")),
                                 len(classes), w, h)
                (out / "labels" / f"{img.stem}.txt").write_text(gt.to_yolo_txt(w, h))
                img.write_bytes(encode_jpeg(fr.image, world.jpeg_quality))
            paths.append(str(img))
    return paths


def pick_from_pool(settings: Any, scoring: Path, paths: Sequence[str], n: int, how: str,
                   labelled_counts: Sequence[int] | None, seed: int = 0) -> tuple[list[str], dict[str, Any]]:
    """``n`` frames per camera of ``paths`` (named ``<camera>-<day>-<k>.jpg`` by :func:`render_extra`): ``"rnd"``
    uniformly (seeded), ``"sel"`` (``"selc"``: ranked per expected labelling second) as a targeted round selects them: the model at ``scoring`` (the round's champion)
    scores every frame, and :func:`tasks.selection.select` takes ``n`` per camera (``balance_cameras``, no control
    arm, the config's strategy, aggregation, class balance against ``labelled_counts`` and diversity). Returns the
    picked paths and a summary (per camera, boxes the champion detected on the picked frames and on the pool)."""
    import numpy as np

    from detloop.contracts import FrameRef
    from detloop.preprocess import load_frame_for_model
    from tasks.scoring import DecodedFrame, load_scorer, score_decoded
    from tasks.selection import select

    def camera_day(p: str) -> tuple[str, str]:
        cam, rest = Path(p).stem.split("-", 1)
        return cam, rest[:10]

    cams = sorted({camera_day(p)[0] for p in paths})
    if how == "rnd":
        rng = np.random.default_rng(seed)
        picked = []
        for c in cams:
            mine = [p for p in paths if camera_day(p)[0] == c]
            picked += [mine[i] for i in sorted(rng.choice(len(mine), size=min(n, len(mine)), replace=False))]
        return picked, {"pool_per_camera": {c: sum(camera_day(p)[0] == c for p in paths) for c in cams}}
    ms = settings.model
    scorer = load_scorer(scoring, ms, list(settings.classes))
    size = int(scorer.meta.input_size)
    scored = []
    for lo in range(0, len(paths), ms.batch_size):
        batch = []
        for p in paths[lo:lo + ms.batch_size]:
            data = Path(p).read_bytes()
            got = load_frame_for_model(data, size, ms.fast_decode)
            if isinstance(got, str):
                raise RuntimeError(f"{p}: rendered frame unreadable: {got}")
            cam, day = camera_day(p)
            batch.append(DecodedFrame(FrameRef("ceiling", p, "", cam, day, len(data)), got))
        scored += score_decoded(batch, scorer, ms)
    sel = settings.selection.model_copy(update={"budget": n * len(cams), "control_share": 0.0, "control_min": 0,
                                                "balance_cameras": True})
    if how == "selc":
        sel = sel.model_copy(update={"cost": sel.cost.model_copy(update={"per_second": True})})
    res = select(scored, labelled_counts, sel, round_seed=seed, class_names=list(settings.classes),
                 num_classes=len(settings.classes), cost=settings.labelling_cost)
    keys = {f.frame.key for f in res.selected}
    thr = settings.selection.conf_threshold
    det = {f.frame.key: int((f.detections.confidence >= thr).sum()) for f in scored}
    summary = {"pool_per_camera": {c: sum(f.frame.camera == c for f in scored) for c in cams},
               "notes": [x for x in res.notes if x.startswith("cameras balanced")],
               "detected_boxes_per_frame": {
                   c: {"picked": round(float(np.mean([det[k] for k in keys if camera_day(k)[0] == c] or [0])), 2),
                       "pool": round(float(np.mean([det[f.frame.key] for f in scored if f.frame.camera == c])), 2)}
                   for c in cams}}
    return [p for p in paths if p in keys], summary


def with_extra(data_yaml: Path, extra: Sequence[str], repeats: int, out: Path) -> Path:
    """A copy of ``data_yaml`` whose train list also holds ``extra`` (each ``repeats`` times, as the round's own hard
    frames are repeated); val and names unchanged."""
    import yaml

    cfg = yaml.safe_load(data_yaml.read_text())
    train = Path(cfg["train"])
    lines = [ln for ln in train.read_text().splitlines() if ln.strip()]
    out.mkdir(parents=True, exist_ok=True)
    lst = out / "train.txt"
    lst.write_text("\n".join([*lines, *[p for p in extra for _ in range(repeats)]]) + "\n")
    cfg["train"] = str(lst)
    path = out / "data.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def ceiling(settings: Any, round_id: str, variants: Sequence[str], cameras: Sequence[str] | None = None,
            frames: int = 400, log: Callable[[str], None] = print, pool_factor: int = 4) -> dict[str, Any]:
    """Per variant: golden delta against the round's champion and true mAP50 per camera (``-sel`` / ``-rnd``
    variants pick from a pool of ``pool_factor x N`` frames per camera)."""
    from benchmarks.soak_carry import RoundTruth, gate
    from benchmarks.soak_finetune import finetune
    from benchmarks.soak_truth import world_onsets
    from detloop import datasets as ds
    from detloop.clients.registry import RegistryClient
    from detloop.clients.s3 import S3Store
    from flows.demo import START, default_annotators
    from tasks.rounds import load_round
    from tasks.selection import class_counts

    plan = {v: parse_variant(v) for v in variants}
    store, registry = S3Store(settings), RegistryClient(settings)
    rec = load_round(store, settings, round_id)
    if rec is None or not rec.dataset_version or not rec.model_version:
        raise SystemExit(f"round {round_id}: no record, dataset version or champion in this soak's store")
    ctx = RoundTruth(settings, registry, str(rec.model_version), rec.as_of, None, frames)
    as_of = date.fromisoformat(str(rec.as_of))
    onsets = drifted_cameras(world_onsets(ctx.world, START, as_of), as_of)
    drifted = {c: onsets.get(c, as_of) for c in cameras} if cameras else onsets
    if not drifted:
        raise SystemExit(f"round {round_id}: no world onset in the 14 days to {as_of}; name the cameras (--camera)")
    manifest = ds.load_manifest(store, settings, rec.dataset_version)
    had = {c: sum(1 for e in manifest.by_split("train") if e.camera == c and e.date >= str(d))
           for c, d in drifted.items()}
    base = ds.materialize(store, settings, rec.dataset_version, oversample=settings.training.oversample_factor)
    spec_epochs = int(json.loads(
        (settings.data_dir / "training" / f"round-{round_id}" / "ul" / "spec.json").read_text())["epochs"])
    root = settings.data_dir / "soak-ceiling" / round_id
    result: dict[str, Any] = {
        "round": round_id, "champion": str(rec.model_version), "dataset_version": rec.dataset_version,
        "truth_day": ctx.day.isoformat(), "drifted": {c: d.isoformat() for c, d in drifted.items()},
        "labelled_after_onset": had, "epochs": spec_epochs,
        "champion_true": ctx.truth(ctx.champion, f"v{rec.model_version}"), "run": ctx.run_challenger(round_id),
        "variants": {}}
    log(f"{round_id}: champion v{rec.model_version}, drifted {result['drifted']}, train frames after onset {had}")
    for name, (n, factor, sim, how) in plan.items():
        data, picking = None, None
        if n:
            frames_dir = root / ("frames-sim" if sim else "frames")
            annotator = default_annotators(settings) if sim else None
            if how:  # a pool pool_factor x n per camera, n per camera picked from it
                pool = render_extra(ctx.world, settings.classes, drifted, as_of, pool_factor * n, settings.world.seed,
                                    frames_dir.with_name(f"{frames_dir.name}-pool{pool_factor * n}"), annotator)
                extra, picking = pick_from_pool(settings, ctx.champion, pool, n, how,
                                                class_counts(manifest, settings.classes), settings.selection.seed)
            else:
                extra = render_extra(ctx.world, settings.classes, drifted, as_of, n, settings.world.seed, frames_dir,
                                     annotator)
            data = with_extra(Path(base), extra, settings.training.oversample_factor,
                              root / "data" / f"n{n}{f'-{how}{pool_factor * n}' if how else ''}{'-sim' if sim else ''}")
        fields = {"epochs": spec_epochs * factor} if factor > 1 else None
        out = root / name
        art = finetune(settings, store, round_id, rec.dataset_version, {}, out, fields, data=data)
        g = gate(settings, store, round_id, rec.dataset_version, art, ctx.champion, out / "eval")
        delta = g["golden_map"] - g["champion_golden_map"] if g["champion_golden_map"] is not None else None
        result["variants"][name] = {"extra_per_camera": n, "epochs": spec_epochs * factor,
                                    "labels": "simulated annotators" if sim else "exact truth", "outcome": g["outcome"],
                                    "golden_delta": delta, "true": ctx.truth(art, f"ceiling-{name}-{round_id}"),
                                    **({"picked": {"how": how, "pool_factor": pool_factor, **(picking or {})}}
                                       if how else {})}
        log(f"{round_id} {name}: golden delta {delta:+.4f} ({g['outcome']}); true {result['variants'][name]['true']}")
    return result


def table(r: dict[str, Any], pre: dict[str, float] | None = None) -> str:
    """Markdown: the champion and each variant, true mAP50 on the drifted cameras (and their pre-onset value)."""
    cams = sorted(r["drifted"])

    def f(x: Any, signed: bool = False) -> str:
        return "-" if x is None else (f"{x:+.4f}" if signed else f"{x:.3f}")

    head = ("| model | extra labelled frames per drifted camera | epochs | golden mAP50-95 delta | gate | "
            + " | ".join(f"true mAP50 {c}" for c in cams) + " |")
    lines = [head, "|" + "---|" * (5 + len(cams))]
    if pre:
        lines.append("| before the onset | - | - | - | - | " + " | ".join(f(pre.get(c)) for c in cams) + " |")
    lines.append(f"| champion v{r['champion']} | - | - | - | - | "
                 + " | ".join(f(r["champion_true"].get(c)) for c in cams) + " |")
    if r.get("run"):
        run = r["run"]
        lines.append(f"| the run's challenger v{run['version']} | 0 | {r['epochs']} | {f(run['golden_delta'], True)} | "
                     f"{run['outcome']} | " + " | ".join(f(run["true"].get(c)) for c in cams) + " |")
    for name, v in r["variants"].items():
        lines.append(f"| {name} | {v['extra_per_camera']} | {v['epochs']} | {f(v['golden_delta'], True)} | "
                     f"{v['outcome']} | " + " | ".join(f(v["true"].get(c)) for c in cams) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import argparse
    import json

    from benchmarks._common import machine_info, utc_now, write_result
    from benchmarks.soak_carry import soak_stack

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", "-c", default="configs/soak.yaml")
    ap.add_argument("--round", required=True, help="the soak round whose fine-tune is repeated")
    ap.add_argument("--variant", dest="variants", action="append",
                    help="as-run, +N or +N-xE, with -sel / -rnd and/or -sim (repeatable; default: +50 +200 +200-x3)")
    ap.add_argument("--camera", dest="cameras", action="append", help="drifted camera (repeatable; default: onsets)")
    ap.add_argument("--soak", type=Path, help="the soak's JSON: its truth gives each camera's pre-onset true mAP50")
    ap.add_argument("--truth-frames", type=int, default=400)
    ap.add_argument("--pool-factor", type=int, default=4,
                    help="-sel / -rnd variants: the pool per camera is this x N frames")
    ap.add_argument("--out", type=Path, default=RESULTS / "soak_ceiling.json")
    a = ap.parse_args(argv)
    variants = a.variants or ["+50", "+200", "+200-x3"]
    for v in variants:
        parse_variant(v)  # a bad spelling fails before the stack starts
    r = ceiling(soak_stack(a.config), a.round, variants, a.cameras, a.truth_frames, pool_factor=a.pool_factor)
    pre = pre_onset(json.loads(a.soak.read_text()), r["drifted"]) if a.soak else None
    md = table(r, pre)
    write_result(a.out, {"bench": "soak_ceiling", **r, "pre_onset": pre, "table": md, "when": utc_now(),
                         "machine": machine_info()})
    print(md)
    return r


def pre_onset(soak: dict[str, Any], drifted: dict[str, str]) -> dict[str, float]:
    """Camera -> the true mAP50 the soak's truth recorded for it the week before its onset."""
    out = {}
    for rec in soak.get("truth", {}).get("recovery", []):
        if rec["camera"] in drifted and rec["onset"] == drifted[rec["camera"]] and rec.get("pre") is not None:
            out[rec["camera"]] = rec["pre"]
    return out


if __name__ == "__main__":
    main()
