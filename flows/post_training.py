"""After training, composed once: evaluate -> register the very artifact evaluated -> gate -> promote.

:func:`evaluate_and_promote` is a Prefect flow: ``retrain-and-promote`` and ``bootstrap`` run it as a
subflow, ``detloop train --register`` runs it by hand. The challenger and the champion are evaluated on
the same slices in the same run; the scoring artifact the gate evaluated (``model.onnx`` + ``meta.json``)
is the one registered, byte for byte (its SHA-256 is a version tag). The gate itself is the pure
:func:`tasks.promotion.decide`.

Idempotent: registering is keyed by the MLflow run (a retried run finds its version); a challenger that
already is champion is reported, not promoted twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows import steps
from flows.common import retrying, run_name, run_settings


@dataclass
class PostTraining:
    """What :func:`evaluate_and_promote` did."""

    version: str
    champion_version: str | None
    decision: Any  # tasks.promotion.Decision (None when the challenger already was champion)
    challenger_report: Any  # tasks.evaluation.EvalReport
    champion_report: Any
    promotion: dict[str, Any] | None
    slices: list[dict[str, Any]] = field(default_factory=list)

    @property
    def promoted(self) -> bool:
        return bool(self.promotion and self.promotion.get("action") != "noop")

    @property
    def outcome(self) -> str:
        return self.decision.outcome if self.decision is not None else "already-champion"


def _golden_map(report: Any) -> float | None:
    if report is None:
        return None
    sm = report.slices.get("golden")
    return None if sm is None else sm.overall.map


@flow(name="evaluate-and-promote", flow_run_name=run_name("evaluate-and-promote", "round_id", "run_id"),
      log_prints=True)
def evaluate_and_promote(
    run_id: str,
    weights: str,
    dataset_version: str | None,
    config: str | None = None,
    overrides: dict[str, Any] | None = None,
    golden: str | None = None,
    golden_data_yaml: str | None = None,
    round_version: str | None = None,
    round_id: str | None = None,
    reason: str = "gate passed",
    actor: str = "detloop-gate",
    promote_if_passed: bool | None = None,
    as_of: str | None = None,
) -> PostTraining:
    """Evaluate the challenger (MLflow run ``run_id``, ``weights``) against the champion, register, gate, promote.

    Args:
        dataset_version: the dataset version it was trained on (recorded on the version).
        golden: golden dataset version id (the gating slice); or ``golden_data_yaml``: the ``val`` split of
            an Ultralytics data.yaml (by hand).
        round_version, round_id: the round's dataset version and id (adds the round and control slices).
        reason, actor: recorded in the promotion log when it promotes.
        promote_if_passed: default ``gate.auto_promote``.
        as_of: the production day a model trained on no round takes over (the bootstrap's; tag ``detloop.as_of``):
            its drift reference is built from the days before it (default: the day of its promotion).

    Raises:
        DataError: neither ``golden`` nor ``golden_data_yaml``.
    """
    from detloop.clients import Clients
    from detloop.errors import DataError
    from tasks.evaluation import gate_scores, slice_from_data_yaml
    from tasks.promotion import decide

    log = get_run_logger()
    settings = run_settings(config, overrides)
    clients = Clients.from_settings(settings)
    work = settings.data_dir / "eval" / (f"round-{round_id}" if round_id else f"run-{run_id}")

    # 0. a retry after a completed promotion finds the challenger already champion
    champion = retrying(steps.fetch_champion, settings)(settings, clients)
    if champion is not None and champion.run_id == run_id:
        log.info("run %s already is champion v%s", run_id, champion.version)
        noop = retrying(steps.promote, settings)(settings, clients, champion.version, None, reason, actor)  # logs it
        return PostTraining(champion.version, None, None, None, None, noop)  # if a crash lost the log line

    # 1. challenger and champion on the same slices, in the same run
    if golden_data_yaml:
        from tasks.eval_plots import plots_for_report
        from tasks.evaluation import evaluate_pair

        slices = [slice_from_data_yaml("golden", golden_data_yaml, "val", len(settings.classes))]
        ch, cp = evaluate_pair(Path(weights), champion.scoring_dir if champion else None, slices, settings,
                               work_dir=work)
        plots_for_report(ch, slices, settings.classes, work / "plots")
        from tasks.error_analysis import write_pair_breakdowns

        write_pair_breakdowns(ch, cp, slices, settings, work / "errors")
        summary: list[dict[str, Any]] = [{"slice": "golden", "frames": len(slices[0].items)}]
    elif golden:
        ch, cp, summary = retrying(steps.evaluate, settings)(settings, clients, Path(weights), champion, golden,
                                                             round_version, round_id, work)
    else:
        raise DataError("evaluate-and-promote needs a golden dataset version (golden) or a data.yaml (golden_data_yaml)")

    # 2. register exactly the artifact that was evaluated
    parent = champion.version if champion else None
    tags = {**({"detloop.round_id": round_id} if round_id else {}), **({"detloop.as_of": as_of} if as_of else {})}
    version = retrying(steps.register, settings)(settings, clients, run_id, Path(weights), ch, dataset_version,
                                                 parent, tags)

    if cp is not None and cp.error_breakdown:  # what the champion gets wrong, on the round's run
        retrying(steps.log_errors, settings)(settings, clients, run_id, cp)
    pair = {version: ("challenger", ch), **({parent: ("champion", cp)} if parent is not None else {})}
    retrying(steps.store_errors, settings)(settings, clients, pair, {"round_id": round_id, "run_id": run_id})

    # 3. the gate (pure), recorded on the version
    metric = settings.gate.metric
    decision = decide(gate_scores(ch, metric=metric), gate_scores(cp, metric=metric) if cp is not None else None,
                      settings.gate)
    retrying(steps.record_gate, settings)(settings, clients, version, decision, run_id, parent)
    log.info("version %s: %s (golden mAP50-95 %s vs champion %s)", version, decision.outcome,
             _golden_map(ch), _golden_map(cp))

    # 4. promote, or not
    promotion = None
    do_promote = settings.gate.auto_promote if promote_if_passed is None else promote_if_passed
    if decision.passed and do_promote:
        promotion = retrying(steps.promote, settings)(settings, clients, version, decision, reason, actor)
    return PostTraining(version, parent, decision, ch, cp, promotion, summary)
