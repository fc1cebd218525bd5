"""Typed flow parameters.

Each flow takes one pydantic model, so the Prefect UI renders a form with descriptions and ranges and
the server rejects invalid parameters when a run is created (deployments enforce the schema). Every
field is optional: ``None`` means "use the config".
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.json_schema import SkipJsonSchema

from detloop.settings import DriftStatistic, GateSettings


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    config: str | None = Field(
        None, description="Config file for this run (default: the runner's $DETLOOP_CONFIG / configs/local.yaml)."
    )

    def overrides(self) -> dict[str, Any]:
        """Nested settings overrides this run asks for (only fields that were set)."""
        return {}


class SelectParams(_Params):
    """Parameters of ``select-for-labeling``."""

    as_of: date | None = Field(None, description="The 'this week' date: the window ends here (default: today).")
    window_days: int | None = Field(None, ge=1, le=365, description="Days before as_of to sample from.")
    cameras: list[str] | None = Field(None, description="Only these cameras (default: all).")
    dates: list[date] | None = Field(None, description="Only these dates inside the window (default: all).")
    budget: int | None = Field(None, ge=1, le=100_000, description="Frames to send to annotators (control included).")
    strategy: str | None = Field(None, description="Uncertainty strategy name (see `detloop select strategies`).")
    control_share: float | None = Field(None, ge=0.0, le=0.5, description="Share of the budget drawn at random.")
    force_new_round: bool = Field(
        False, description="Open a new round even if the previous one is still open (default: follow config)."
    )
    episode_id: str | None = Field(
        None, description="A drift episode's targeted round (set by the drift-detected automation): one round per "
        "episode, opened even while a weekly round is open; cameras and dates focus it.",
    )

    def overrides(self) -> dict[str, Any]:
        o: dict[str, Any] = {}
        if self.window_days is not None:
            o.setdefault("sampling", {})["window_days"] = self.window_days
        sel = {k: v for k, v in {"budget": self.budget, "strategy": self.strategy,
                                  "control_share": self.control_share}.items() if v is not None}
        if sel:
            o["selection"] = sel
        return o


class WatchParams(_Params):
    """Parameters of ``watch-rounds``."""

    now: datetime | None = Field(None, description="Clock used for deadlines (default: now). Simulated time for backfills.")


def _optional_fields_of(model: type[BaseModel], exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """``model``'s fields, each optional (default None) with its constraints and description kept."""
    from pydantic.fields import FieldInfo

    out: dict[str, Any] = {}
    for name, fi in model.model_fields.items():
        if name in exclude:
            continue
        out[name] = (fi.annotation | None, FieldInfo.merge_field_infos(fi, default=None))
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
    epochs: int | None = Field(None, ge=1, le=10_000, description="Fine-tune epochs (default: training.finetune_epochs).")
    gate: GateOverrides = Field(default_factory=GateOverrides, description="Per-run gate overrides.")

    def overrides(self) -> dict[str, Any]:
        o: dict[str, Any] = {}
        if self.epochs is not None:
            o["training"] = {"finetune_epochs": self.epochs}
        g = {k: v for k, v in self.gate.model_dump().items() if v is not None}
        if g:
            o["gate"] = g
        return o


class PromoteParams(_Params):
    """Parameters of the manual ``promote`` flow."""

    version: str = Field(..., min_length=1, description="Registered model version to make champion.")
    reason: str = Field(..., min_length=3, description="Why (recorded in the promotion log).")
    override: bool = Field(False, description="Promote even if its gate failed (recorded).")
    who: str | None = Field(None, description="Who asks (default: the runner's user).")


class RollbackParams(_Params):
    """Parameters of the manual ``rollback`` flow."""

    reason: str = Field(..., min_length=3, description="Why (recorded in the promotion log).")
    who: str | None = Field(None, description="Who asks (default: the runner's user).")


class BootstrapParams(_Params):
    """Parameters of ``bootstrap``: train the first champion on a seed dataset version."""

    dataset_version: str | None = Field(None, description="Seed dataset version id (default: the newest seed version).")
    epochs: int | None = Field(None, ge=1, le=10_000, description="Epochs (default: training.bootstrap_epochs).")

    def overrides(self) -> dict[str, Any]:
        return {"training": {"bootstrap_epochs": self.epochs}} if self.epochs is not None else {}


class DriftParams(_Params):
    """Parameters of ``drift-monitor`` (daily, or by hand): which days, which cameras to detail, the rule."""

    as_of: date | SkipJsonSchema[None] = Field(
        None, description="Monitor the days before this date (default: today).")
    days: int | SkipJsonSchema[None] = Field(
        None, ge=1, le=365, description="Days, ending the day before as_of, to evaluate and show (default: "
        "drift.report_days).")
    cameras: list[str] | SkipJsonSchema[None] = Field(
        None, description="Cameras the report details (default: all); episodes always consider every camera.")
    alarm_statistics: list[DriftStatistic] | SkipJsonSchema[None] = Field(
        None, description="Statistics whose signals count towards an alarm (default: drift.alarm_statistics).")
    alarm_min_signals: int | SkipJsonSchema[None] = Field(
        None, ge=1, le=1000, description="Signals a camera-day needs to count as drifted.")
    alarm_consecutive_days: int | SkipJsonSchema[None] = Field(
        None, ge=1, le=60, description="Drifted days in a row that open an episode.")
    correction: Literal["bonferroni", "fdr"] | SkipJsonSchema[None] = Field(
        None, description="Multiple-testing correction of a camera-day's tests.")
    alpha: float | SkipJsonSchema[None] = Field(None, gt=0.0, lt=1.0, description="Level of the corrected tests.")

    def overrides(self) -> dict[str, Any]:
        d = {k: v for k, v in {"alarm_statistics": self.alarm_statistics, "alarm_min_signals": self.alarm_min_signals,
                               "alarm_consecutive_days": self.alarm_consecutive_days, "correction": self.correction,
                               "alpha": self.alpha}.items() if v is not None}
        return {"drift": d} if d else {}
