"""Typed flow parameters.

Each flow takes one pydantic model, so the Prefect UI renders a form with descriptions and ranges and
the server rejects invalid parameters when a run is created (deployments enforce the schema). Every
optional field means "use the config" when left out. Names from a fixed list (strategy, aggregation,
diversity) are ``Literal`` enums, so the form shows a drop-down; ``SkipJsonSchema[None]`` keeps the
``None`` branch out of the JSON schema (the form would otherwise offer a "None" type for every optional
field); the deployments pre-fill each form with the runner's configured values (:func:`configured_defaults`).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.json_schema import SkipJsonSchema

from detloop.settings import (
    AggregationName,
    DiversityName,
    DriftStatistic,
    GateSettings,
    Settings,
    StrategyName,
)

# "optional, and the form does not offer None": a field left out of the form uses the config
# (constraints go on the type: ``Annotated[int, Field(ge=1)] | SkipJsonSchema[None]``; on the union they would not
# reach the JSON schema, and the server would accept out-of-range values)
OptStr = str | SkipJsonSchema[None]


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    config: OptStr = Field(
        None, description="Config file for this run (leave empty: the runner's $DETLOOP_CONFIG / configs/local.yaml)."
    )

    def overrides(self) -> dict[str, Any]:
        """Nested settings overrides this run asks for (only fields that were set)."""
        return {}


class SelectParams(_Params):
    """Parameters of ``select-for-labeling``."""

    as_of: date | SkipJsonSchema[None] = Field(
        None, description="The 'this week' date: the window ends here (leave empty: today).")
    window_days: Annotated[int, Field(ge=1, le=365)] | SkipJsonSchema[None] = Field(
        None, description="Days before as_of to sample from.")
    cameras: list[str] | SkipJsonSchema[None] = Field(None, description="Only these cameras (leave empty: all).")
    dates: list[date] | SkipJsonSchema[None] = Field(
        None, description="Only these dates inside the window (leave empty: all).")
    camera_dates: dict[str, list[date]] | SkipJsonSchema[None] = Field(
        None, description="A camera named here samples these dates (inside the window) instead of `dates` (a drift "
        "episode's round: a re-asked camera's drifted days since its last round).")
    budget: Annotated[int, Field(ge=1, le=100_000)] | SkipJsonSchema[None] = Field(
        None, description="Frames to send to annotators (control included).")
    strategy: StrategyName | SkipJsonSchema[None] = Field(
        None, description="Box uncertainty strategy (see `detloop select strategies`).")
    aggregation: AggregationName | SkipJsonSchema[None] = Field(
        None, description="How a frame's box uncertainties add up to the frame's.")
    diversity: DiversityName | SkipJsonSchema[None] = Field(
        None, description="Diversity step over the most uncertain frames (k-center on the embeddings).")
    control_share: Annotated[float, Field(ge=0.0, le=0.5)] | SkipJsonSchema[None] = Field(
        None, description="Share of the budget drawn at random (the blind control arm).")
    balance_cameras: bool | SkipJsonSchema[None] = Field(
        None, description="Split the selected frames among the cameras, equally or by camera_weights (leave empty: "
        "config; a drift episode's round: drift.round_balance_cameras).")
    camera_weights: dict[str, Annotated[float, Field(gt=0.0, le=100.0)]] | SkipJsonSchema[None] = Field(
        None, description="With balanced cameras, each camera's share in proportion to its weight (1 for a camera "
        "not named; a drift episode's round: its companions drift.companion_round_weight).")
    force_new_round: bool = Field(
        False, description="Open a new round even if the previous one is still open (default: follow config)."
    )
    episode_id: OptStr = Field(
        None, description="A drift episode's targeted round (set by the drift-detected automation): one round per "
        "episode, opened even while a weekly round is open; cameras and dates focus it.",
    )

    def overrides(self) -> dict[str, Any]:
        o: dict[str, Any] = {}
        if self.window_days is not None:
            o.setdefault("sampling", {})["window_days"] = self.window_days
        sel = {k: v for k, v in {"budget": self.budget, "strategy": self.strategy, "aggregation": self.aggregation,
                                  "diversity": self.diversity, "control_share": self.control_share,
                                  "balance_cameras": self.balance_cameras,
                                  "camera_weights": self.camera_weights}.items()
               if v is not None}
        if sel:
            o["selection"] = sel
        return o


class WatchParams(_Params):
    """Parameters of ``watch-rounds``."""

    now: datetime | SkipJsonSchema[None] = Field(
        None, description="Clock used for deadlines (leave empty: now). Simulated time for backfills.")
    follow: bool = Field(
        False, description="Keep watching while a round is open: check every prefect.watch_interval_seconds, and hand "
                           "over to a new run every hour (the deployment's trigger and schedule set it; a run by hand "
                           "checks once).")


def _optional_fields_of(model: type[BaseModel], exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """``model``'s fields, each optional (default None) with its constraints and description kept."""
    from pydantic.fields import FieldInfo

    out: dict[str, Any] = {}
    for name, fi in model.model_fields.items():
        if name in exclude:
            continue
        # constraints stay on the type (on the union they would not reach the JSON schema); None is not offered
        typ = Annotated[(fi.annotation, *fi.metadata)] if fi.metadata else fi.annotation
        out[name] = (typ | SkipJsonSchema[None], FieldInfo(default=None, description=fi.description))
    return out


# Per-run gate overrides: the fields of GateSettings (their one definition), each optional. The bootstrap
# floor is not a per-round knob.
GateOverrides = create_model(
    "GateOverrides", __config__=ConfigDict(extra="forbid"),
    **_optional_fields_of(GateSettings, exclude=("bootstrap_floor",)),
)


class RetrainParams(_Params):
    """Parameters of ``retrain-and-promote`` (started by the round-completed event, or by hand)."""

    round_id: str = Field(..., min_length=1, description="Labelling round whose labels to train on.")
    epochs: Annotated[int, Field(ge=1, le=10_000)] | SkipJsonSchema[None] = Field(
        None, description="Fine-tune epochs, exactly (leave empty: training.finetune_epochs, bounded by "
        "training.finetune_max_images).")
    gate: GateOverrides = Field(default_factory=GateOverrides, description="Per-run gate overrides.")

    def overrides(self) -> dict[str, Any]:
        o: dict[str, Any] = {}
        if self.epochs is not None:
            o["training"] = {"finetune_epochs": self.epochs, "finetune_max_images": None}  # what was asked
        g = {k: v for k, v in self.gate.model_dump().items() if v is not None}
        if g:
            o["gate"] = g
        return o


class PromoteParams(_Params):
    """Parameters of the manual ``promote`` flow."""

    version: str = Field(..., min_length=1, description="Registered model version to make champion.")
    reason: str = Field(..., min_length=3, description="Why (recorded in the promotion log).")
    override: bool = Field(False, description="Promote even if its gate failed (recorded).")
    who: OptStr = Field(None, description="Who asks (leave empty: the runner's user).")


class RollbackParams(_Params):
    """Parameters of the manual ``rollback`` flow."""

    reason: str = Field(..., min_length=3, description="Why (recorded in the promotion log).")
    who: OptStr = Field(None, description="Who asks (leave empty: the runner's user).")


class BootstrapParams(_Params):
    """Parameters of ``bootstrap``: train the first champion on a seed dataset version."""

    as_of: date | SkipJsonSchema[None] = Field(
        None, description="The production day the first champion takes over (leave empty: today): its drift "
        "reference is the production days before it.")
    dataset_version: OptStr = Field(None, description="Seed dataset version id (leave empty: the newest seed version).")
    epochs: Annotated[int, Field(ge=1, le=10_000)] | SkipJsonSchema[None] = Field(
        None, description="Epochs (leave empty: training.bootstrap_epochs).")

    def overrides(self) -> dict[str, Any]:
        return {"training": {"bootstrap_epochs": self.epochs}} if self.epochs is not None else {}


def configured_defaults(flow_name: str, settings: Settings) -> dict[str, Any]:
    """A deployment's default parameters: the configured values of its form fields (shown pre-filled).

    A run created without them (the CLI, the round-completed trigger, the demo) passes its own ``params``,
    which replace these as a whole: fields it leaves out come from its config.
    """
    sel, tr = settings.selection, settings.training
    values: dict[str, dict[str, Any]] = {
        "select-for-labeling": {"window_days": settings.sampling.window_days, "budget": sel.budget,
                                "strategy": sel.strategy, "aggregation": sel.aggregation, "diversity": sel.diversity,
                                "control_share": sel.control_share},
        "retrain-and-promote": {"epochs": tr.finetune_epochs},
        "bootstrap": {"epochs": tr.bootstrap_epochs},
        "drift-monitor": {"days": settings.drift.report_days, "alarm_statistics": list(settings.drift.alarm_statistics),
                          "alarm_min_signals": settings.drift.alarm_min_signals,
                          "alarm_consecutive_days": settings.drift.alarm_consecutive_days,
                          "correction": settings.drift.correction, "alpha": settings.drift.alpha,
                          "pool_days": settings.drift.pool_days,
                          **({"alarm_strong_alpha": settings.drift.alarm_strong_alpha}
                             if settings.drift.alarm_strong_alpha is not None else {})},  # a form field is never null
    }
    return {"params": values[flow_name]} if flow_name in values else {}


class DriftParams(_Params):
    """Parameters of ``drift-monitor`` (daily, or by hand): which days, which cameras to detail, the rule."""

    as_of: date | SkipJsonSchema[None] = Field(
        None, description="Monitor the days before this date (default: today).")
    days: Annotated[int, Field(ge=1, le=365)] | SkipJsonSchema[None] = Field(
        None, description="Days, ending the day before as_of, to evaluate and show (default: "
        "drift.report_days).")
    cameras: list[str] | SkipJsonSchema[None] = Field(
        None, description="Cameras the report details (default: all); episodes always consider every camera.")
    alarm_statistics: list[DriftStatistic] | SkipJsonSchema[None] = Field(
        None, description="Statistics whose signals count towards an alarm (default: drift.alarm_statistics).")
    alarm_min_signals: Annotated[int, Field(ge=1, le=1000)] | SkipJsonSchema[None] = Field(
        None, description="Signals a camera-day needs to count as drifted.")
    alarm_consecutive_days: Annotated[int, Field(ge=1, le=60)] | SkipJsonSchema[None] = Field(
        None, description="Drifted days in a row that open an episode.")
    correction: Literal["bonferroni", "fdr"] | SkipJsonSchema[None] = Field(
        None, description="Multiple-testing correction of a camera-day's tests.")
    alpha: Annotated[float, Field(gt=0.0, lt=1.0)] | SkipJsonSchema[None] = Field(
        None, description="Level of the corrected tests.")
    alarm_strong_alpha: Annotated[float, Field(gt=0.0, lt=1.0)] | SkipJsonSchema[None] = Field(
        None, description="One signal whose corrected p-value is below this makes a camera-day drifted.")
    pool_days: Annotated[int, Field(ge=1, le=30)] | SkipJsonSchema[None] = Field(
        None, description="Days each camera-day is tested on: the day and the days before it (1: the day alone).")

    def overrides(self) -> dict[str, Any]:
        d = {k: v for k, v in {"alarm_statistics": self.alarm_statistics, "alarm_min_signals": self.alarm_min_signals,
                               "alarm_consecutive_days": self.alarm_consecutive_days, "correction": self.correction,
                               "alpha": self.alpha, "alarm_strong_alpha": self.alarm_strong_alpha,
                               "pool_days": self.pool_days}.items() if v is not None}
        return {"drift": d} if d else {}
