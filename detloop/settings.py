"""One typed settings tree for detloop.

Settings come from a YAML file (``configs/local.yaml`` by default, or ``$DETLOOP_CONFIG``) with
environment overrides of the form ``DETLOOP_<SECTION>__<FIELD>=value`` (double underscore between
levels; ``DETLOOP_SELECTION__BUDGET=80`` is an int, lists and mappings are JSON, ``null`` is None), then a
run's explicit overrides: pydantic-settings sources, highest priority first (overrides, environment, file). Everything is validated
on load: unknown keys, wrong types and out-of-range values raise :class:`ConfigError` naming the
field path and what is allowed.

Secrets (S3 keys, the Label Studio token) are never read from the YAML file. They come from the
environment, from a Prefect Secret block named in the config, or, for the embedded local stack only,
from the ``secrets.env`` file that ``detloop stack up`` generates inside the data dir.

Nothing here does work at import time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from detloop.errors import ConfigError
from detloop.preprocess import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    from detloop.postprocess import DecodeParams
    from detloop.tiling import TileSpec

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "configs" / "local.yaml"
ENV_PREFIX = "DETLOOP_"
# Variables of the test harness (e.g. DETLOOP_TEST_KEEP_STACK), not settings overrides.
NON_SETTING_ENV_PREFIX = "DETLOOP_TEST_"
SECRET_FIELDS = {
    ("s3", "access_key_id"),
    ("s3", "secret_access_key"),
    ("label_studio", "api_token"),
}


# The names of the selection registry (``tasks/strategies.py`` implements exactly these; a unit test
# keeps the two in step). Literal types: a config naming anything else is refused on load with the list.
StrategyName = Literal[
    "least_confidence", "margin", "entropy", "binary_entropy", "ambiguous", "tta", "committee",
]
AggregationName = Literal["max", "mean", "sum", "topk"]
DiversityName = Literal["none", "kcenter", "filter_kcenter"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


Port = Annotated[int, Field(ge=1, le=65535)]


# --------------------------------------------------------------------------------------------
# Services
# --------------------------------------------------------------------------------------------
class S3Settings(_Model):
    """Object storage. Locally a SeaweedFS server; at scale AWS S3 (set ``endpoint_url: null``)."""

    endpoint_url: str | None = Field(
        "http://127.0.0.1:8333", description="S3 endpoint; null means AWS S3 proper."
    )
    region: str = Field("us-east-1", description="S3 region name.")
    addressing_style: Literal["path", "virtual", "auto"] = Field("path", description="boto3 addressing style.")
    presigned_reads: bool = Field(
        True,
        description="Scoring reads frames with presigned GETs (signed by detloop, SigV4) over a keep-alive HTTP "
        "connection per reader thread (a tenth of the client CPU of boto3 get_object); any failure falls back to boto3.",
    )
    production_bucket: str = Field("detloop-production", description="Where cameras drop frames.")
    production_prefix: str = Field("frames/", description="Key prefix of camera frames in the production bucket.")
    data_bucket: str = Field("detloop-data", description="Datasets, rounds, manifests, reports.")
    artifacts_bucket: str = Field("detloop-mlflow", description="MLflow artifact store.")
    oracle_bucket: str = Field(
        "detloop-oracle", description="Synthetic world ground truth: read only by simulated annotators and benchmarks."
    )
    access_key_id: SecretStr | None = Field(None, description="From env DETLOOP_S3__ACCESS_KEY_ID or AWS_ACCESS_KEY_ID.")
    secret_access_key: SecretStr | None = Field(
        None, description="From env DETLOOP_S3__SECRET_ACCESS_KEY or AWS_SECRET_ACCESS_KEY."
    )
    secret_block: str | None = Field(
        None, description="Optional Prefect Secret block holding JSON {access_key_id, secret_access_key}."
    )


class MLflowSettings(_Model):
    tracking_uri: str = Field("http://127.0.0.1:5000", description="MLflow tracking server URL.")
    experiment: str = Field("detloop", description="Experiment that training and evaluation runs go to.")
    model_name: str = Field("detloop-detector", description="Registered model name; serving loads models:/NAME@champion.")


class LabelStudioSettings(_Model):
    url: str = Field("http://127.0.0.1:8080", description="Label Studio base URL.")
    project_title: str = Field("detloop", description="Title of the project detloop creates or reuses.")
    username: str = Field("admin@detloop.local", description="Admin user the local stack creates.")
    presign: bool = Field(True, description="Presigned S3 URLs for images; false: Label Studio proxies the bytes.")
    presign_ttl_minutes: int = Field(60, ge=1, le=10080, description="Lifetime of presigned image URLs.")
    import_batch_size: int = Field(500, ge=1, le=10000, description="Tasks per import request.")
    api_token: SecretStr | None = Field(
        None, description="From env DETLOOP_LABEL_STUDIO__API_TOKEN or LABEL_STUDIO_API_KEY."
    )
    secret_block: str | None = Field(None, description="Optional Prefect Secret block holding the API token.")
    timeout_seconds: float = Field(120.0, gt=0.0, le=3600.0, description="Timeout of one Label Studio request.")
    annotation_policy: Literal["latest", "consensus"] = Field(
        "latest", description="Several annotations on a task: the latest submitted, or boxes most annotators agree on."
    )
    min_box_pixels: float = Field(
        1.0, ge=0.0, le=1000.0, description="Boxes narrower or lower than this (pixels, after clipping) are dropped."
    )
    prediction_conf_threshold: float = Field(
        0.25, ge=0.0, le=1.0, description="Predicted boxes at or above this confidence become the pre-annotation."
    )
    unknown_labels: Literal["quarantine", "fail"] = Field(
        "quarantine",
        description="A task whose annotation names a label outside `classes`: quarantine the task (listed with its "
        "reason in the round's labels report; the round's other labels are used) or fail the pull naming them all.",
    )


class PrefectSettings(_Model):
    api_url: str = Field("http://127.0.0.1:4200/api", description="Prefect API URL.")
    weekly_cron: str = Field("0 3 * * 1", description="Cron of the weekly select-for-labeling run.")
    timezone: str = Field("UTC", description="Timezone of the cron schedule.")
    watch_interval_seconds: int = Field(60, ge=5, le=86400, description="How often watch-rounds runs.")
    task_runner: Literal["threads", "dask"] = Field(
        "threads",
        description="Where scoring chunks run: threads in the flow's process, or a Dask cluster (the dask extra).",
    )
    dask_address: str | None = Field(
        None, description="Dask scheduler address (tcp://host:8786) when task_runner is dask; null: a temporary "
        "local cluster of max_workers processes.",
    )
    max_workers: int = Field(2, ge=1, le=256, description="Threads of the thread task runner; processes of a temporary Dask cluster.")
    notification_block: str | None = Field(
        None,
        description="Prefect notification block '<block-type-slug>/<name>' (Slack, e-mail, webhook, ...) that "
        "receives round-ready, gate-failed and promoted messages; null: the run's log and artifacts only.",
    )
    retries: int = Field(
        3, ge=0, le=20,
        description="Retries of a flow step when a service is unavailable (refused, timeout, 5xx, 429): the one "
        "retry layer. A rejected request (4xx), bad data or a bug is never retried.",
    )
    retry_delays_seconds: list[Annotated[float, Field(ge=0.0, le=3600.0)]] = Field(
        [2.0, 10.0, 30.0], min_length=1, max_length=20,
        description="Seconds before each retry (the last repeats); their sum should outlast a service restart.",
    )
    score_chunk_frames: int = Field(
        1000, ge=1, le=10_000_000,
        description="Frames per scoring task on Dask. Threads score the whole window as one task (the scorer "
        "already keeps every core busy).",
    )


class ServicePorts(_Model):
    """Ports of the embedded local stack (all bound to 127.0.0.1)."""

    s3: Port = 8333
    weed_master: Port = 9333
    weed_volume: Port = 9340
    weed_filer: Port = 8888
    mlflow: Port = 5000
    label_studio: Port = 8080
    prefect: Port = 4200


class StackSettings(_Model):
    host: str = Field("127.0.0.1", description="Loopback address every local service binds to.")
    ports: ServicePorts = Field(default_factory=ServicePorts)
    start_timeout_seconds: int = Field(300, ge=5, le=3600, description="How long `stack up` waits for health.")
    label_studio_version: str = Field("1.23.*", description="Label Studio release installed into its own venv.")
    runner: bool = Field(True, description="Start the Prefect runner (detloop serve) with the stack.")
    label_studio_venv: Path | None = Field(
        None, description="Label Studio's own venv; null: <data_dir>/label-studio-venv (installed on first up)."
    )


class LockSettings(_Model):
    """Leases in the object store (``locks/`` in the data bucket) that keep one training, one promotion and one
    retrain per round at a time, on any number of hosts (:mod:`tasks.leases`)."""

    lease_seconds: float = Field(
        120.0, ge=2.0, le=3600.0,
        description="A lease not renewed for this long (by the object store's clock) may be taken over: how long a "
        "crashed holder blocks the next run. Holders renew every quarter of it.",
    )


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------
class SamplingSettings(_Model):
    window_days: int = Field(7, ge=1, le=365, description="Days before as_of that a round samples from.")
    max_frames: int = Field(2000, ge=1, le=10_000_000, description="Upper bound on frames sampled per round.")
    per_camera_quota: int | None = Field(None, ge=1, description="Frames per camera (stratified); null: no quota.")
    max_per_camera_per_day: int | None = Field(None, ge=1, description="Cap of frames per camera per day.")
    dedup_hamming: int = Field(
        2, ge=0, le=4096,
        description="Frames of one camera whose dHashes differ by at most this many bits are near-duplicates.",
    )
    dedup_hash_size: int = Field(
        16, ge=4, le=64,
        description="dHash grid side n (n*n bits); 8 is the classic 64-bit hash, too coarse for fixed cameras.",
    )
    seed: int = Field(0, ge=0, description="Seed of the sampler.")
    max_image_pixels: int = Field(
        DEFAULT_MAX_PIXELS, ge=64, le=2_000_000_000,
        description="Frames whose header declares more pixels (width x height) are quarantined before decoding "
        "(a decompression bomb: a small file that decodes to gigabytes). Sampling and scoring both check it.",
    )


class LabellingCostSettings(_Model):
    """What a labeller pays, in seconds, to turn a frame's pre-annotations into its final boxes (the simulated
    annotator's cost model; selection's expected cost uses the same prices). Defaults from published timing
    studies (docs/selection.md, "Cost in labelling time"): verifying a box 1.6 s (Papadopoulos et al. 2016),
    drawing one 7 s with extreme clicking (Papadopoulos et al. 2017; classic drawing 25-35 s); adjust, delete and
    the per-frame overhead are stated assumptions."""

    verify_seconds: float = Field(1.6, ge=0.0, le=600.0, description="Confirm a correct pre-annotated box.")
    adjust_seconds: float = Field(
        4.0, ge=0.0, le=600.0, description="Move the edges or change the class of a pre-annotated box.",
    )
    draw_seconds: float = Field(7.0, ge=0.0, le=600.0, description="Draw a box the model missed (7: extreme "
                                "clicking; 25-35: classic corner dragging).")
    delete_seconds: float = Field(1.0, ge=0.0, le=600.0, description="Delete a pre-annotated false positive.")
    frame_seconds: float = Field(3.0, ge=0.0, le=3600.0, description="Per frame: open, scan and submit it.")
    verify_iou: float = Field(
        0.7, gt=0.0, le=1.0, description="A pre-annotation matching a final box of its class at this IoU or more is "
        "verified as it is; below it (down to match_iou) or with another class it is adjusted.",
    )
    match_iou: float = Field(
        0.3, gt=0.0, le=1.0, description="Below this IoU a pre-annotation matches nothing: it is deleted and the "
        "final box is drawn.",
    )

    @model_validator(mode="after")
    def _ious(self) -> LabellingCostSettings:
        if self.match_iou > self.verify_iou:
            raise ValueError(f"match_iou must be in (0, verify_iou] = (0, {self.verify_iou}], got {self.match_iou}")
        return self


class CostCalibrationSettings(_Model):
    """Expected seconds fitted on what labellers did with earlier rounds' boxes (the outcome ledger each round's
    labels report records: per confidence bin, pre-annotations verified / adjusted / deleted and sub-threshold
    candidates that became drawn boxes), instead of taking confidences as probabilities."""

    prior_boxes: float = Field(
        20.0, ge=0.0, le=10_000.0, description="Weight, in boxes per confidence bin, of the uncalibrated model the "
        "fitted rates are shrunk toward (0: the ledger's rates alone).",
    )
    rounds: int = Field(4, ge=1, le=1000, description="The most recent labelled rounds whose ledgers are fitted on.")


class SelectionCostSettings(_Model):
    """Value per expected labelling second: frames are ranked by ``score / expected_seconds ** exponent``."""

    per_second: bool = Field(
        False, description="(Off until `detloop bench al` measures it, docs/selection.md.) Divide each frame's score by its expected labelling seconds (from the champion's "
        "pre-annotations and the labelling_cost prices), so crowded frames are not favoured for holding many boxes.",
    )
    exponent: float = Field(1.0, ge=0.0, le=2.0, description="0: cost ignored; 1: value per second.")
    seconds_cap: float | None = Field(
        1.0, ge=0.5, le=3.0, description="(On since session 39: measured on worlds 0 and 1 and the cold start, "
        "docs/benchmarks.md, \"Where issue 22 stands\".) Cap on "
        "the selected arm's mean expected labelling seconds per frame, as a multiple of the pool's mean (what a "
        "random sample costs in expectation): 1.0 pays no more per frame than random. The ranking keeps its best "
        "frames and gives up those trading the least rank for the most seconds (a penalty on expected seconds, "
        "the smallest that meets the cap), over the frames the diversity step picks from (filter_kcenter: the top "
        "filter_factor x k). Not applied to a uniform random sample (regime weight 0) or to k-center over the "
        "whole pool. null: no cap.",
    )
    calibration: CostCalibrationSettings | None = Field(
        None, description="(Off until `detloop bench al` measures it, docs/selection.md.) Fit the expected seconds "
        "on the outcome ledger of earlier rounds (verify / adjust / delete rates per confidence bin). null: "
        "confidences taken as probabilities, no adjusts predicted.",
    )


class RegimeSettings(_Model):
    """Blend between uncertainty (a good champion) and representativeness (a weak one), by champion quality.

    ``w = clip((quality - weak_below) / (good_above - weak_below), 0, 1)``; frames are ranked by
    ``w x rank(value) + (1 - w) x rank(representative)`` (ranks as percentiles in [0, 1]; the representative score
    is typicality or a seeded random draw, ``representative``). Quality is the champion's
    mAP50 on labelled frames it never trained on (the control arm's live estimate, else its golden set)."""

    enabled: bool = Field(True, description="Apply the blend (off: uncertainty only, whatever the quality). On "
                          "since session 39 with the random representative (docs/selection.md).")
    weak_below: float = Field(0.3, ge=0.0, le=1.0, description="Champion mAP50 at or below which w = 0.")
    good_above: float = Field(0.6, ge=0.0, le=1.0, description="Champion mAP50 at or above which w = 1.")
    unknown_weight: float = Field(
        1.0, ge=0.0, le=1.0, description="w when the champion's quality is unknown (1: uncertainty, as before).",
    )
    representative: Literal["typicality", "random"] = Field(
        "random", description="What a weak champion ranks by: 'random' (a seeded uniform draw: with w = 0 the "
        "selected arm is a random sample, no diversity step; in between, rank(value) mixed with a random rank) or "
        "'typicality' (density on the champion's own embeddings; measured worse at a cold start: docs/selection.md).",
    )
    typicality_k: int = Field(10, ge=1, le=1000, description="Neighbours of the typicality score (mean cosine).")
    reference_frames: int = Field(
        1000, ge=10, le=100_000, description="Seeded sample of pool frames typicality is measured against.",
    )

    @model_validator(mode="after")
    def _order(self) -> RegimeSettings:
        if self.good_above <= self.weak_below:
            raise ValueError(f"good_above must be in (weak_below, 1] = ({self.weak_below}, 1], got {self.good_above}")
        return self


class RareSearchSettings(_Model):
    """Frames for a class the champion never detects in the pool, found by embedding similarity to labelled
    frames holding that class."""

    enabled: bool = Field(True, description="Search when a labelled class has no detection in the pool: the "
                          "champion embeds up to exemplars_per_class labelled frames holding it (from the dataset "
                          "version it was trained on) and the pool frames nearest to them are reserved a share.")
    share: float = Field(0.1, ge=0.0, le=0.5, description="Share of the selected arm reserved for these frames.")
    min_similarity: float = Field(
        0.5, ge=-1.0, le=1.0, description="Cosine similarity to the nearest labelled example for a frame to count "
        "as a candidate.",
    )
    exemplars_per_class: int = Field(
        32, ge=1, le=1000, description="Labelled frames per never-detected class the champion embeds as examples "
        "(a seeded sample of the non-golden, non-synthetic frames holding the class; about one scoring pass each).",
    )


class ErrorWeightingSettings(_Model):
    """Weight the selection toward the classes and cameras where the champion fails most (issue 19).

    The champion's TIDE breakdown on ``slice`` (:mod:`tasks.error_analysis`, stored per model version by each
    round's evaluation) gives each class and camera ``1 + strength x (failure / mean failure - 1)`` with failure
    ``1 - AP50``; a frame's multiplier is its camera's weight x the largest weight among the classes its detected
    boxes predict, clipped to ``[1 / cap, cap]`` (docs/selection.md)."""

    enabled: bool = Field(False, description="Multiply each frame's score by its error weight (off until "
                          "`detloop bench al` measures it, docs/selection.md).")
    slice: Literal["golden", "control", "crowded"] = Field(
        "golden", description="Evaluation slice whose breakdown weighs (one of error_analysis.slices).",
    )
    strength: float = Field(1.0, ge=0.0, le=4.0, description="0: every weight 1; 1: failure relative to the mean.")
    cap: float = Field(3.0, ge=1.0, le=10.0, description="Weights (and a frame's product) are clipped to [1/cap, cap].")
    kinds: list[Literal["class", "camera"]] = Field(
        ["class", "camera"], min_length=1, description="Groups that weigh: class, camera or both.",
    )


class PseudoLabelSettings(_Model):
    """Self-training (issue 22): confident boxes on unlabelled scored frames become labels of the next
    fine-tune, at no labelling cost (:mod:`tasks.pseudo_labels`). A frame qualifies only when every box the
    champion sees on it is either confident (>= ``min_conf``, a label) or faint (< ``ignore_below``, background):
    a box in between is an object it cannot vouch for, which would be learned as background. Never from a weak
    champion (mAP50 at or below ``regime.weak_below``, or unknown). Pseudo-labelled frames train one fine-tune
    and are never evaluated on, paid for or kept in a dataset version."""

    enabled: bool = Field(False, description="Add pseudo-labelled frames to the fine-tune (off until `detloop bench "
                          "al` measures it, docs/selection.md).")
    min_conf: float = Field(0.7, gt=0.0, le=1.0, description="Box confidence at or above which a box is a label.")
    ignore_below: float = Field(0.2, ge=0.0, le=1.0, description="Box confidence below which a box is background; "
                                "a box in [ignore_below, min_conf) disqualifies its frame.")
    per_budget: float = Field(1.0, gt=0.0, le=20.0, description="Pseudo-labelled frames per round, as a multiple "
                              "of the round's budget (a seeded sample of the qualifying frames).")

    @model_validator(mode="after")
    def _order(self) -> PseudoLabelSettings:
        if self.ignore_below > self.min_conf:
            raise ValueError(f"ignore_below must be in [0, min_conf] = [0, {self.min_conf}], got {self.ignore_below}")
        return self


class SelectionSettings(_Model):
    budget: int = Field(60, ge=1, le=1_000_000, description="Frames sent to annotators per round (control included).")
    strategy: StrategyName = Field("entropy", description="Box uncertainty strategy (see `detloop select strategies`).")
    aggregation: AggregationName = Field("sum", description="Per-image aggregation.")
    topk: int = Field(3, ge=1, le=1000, description="k of the top-k mean aggregation.")
    class_balance: bool = Field(True, description="Weight up frames predicting classes rare in the labelled set.")
    class_balance_power: float = Field(0.5, ge=0.0, le=4.0, description="Exponent of the inverse-frequency weight.")
    diversity: DiversityName = Field(
        "filter_kcenter", description="Diversity step on embeddings."
    )
    filter_factor: float = Field(3.0, ge=1.0, le=100.0, description="Top (factor x budget) by uncertainty enter k-center.")
    control_share: float = Field(0.1, ge=0.0, le=0.5, description="Share of the budget drawn uniformly at random.")
    control_min: int = Field(
        20, ge=0, description="Minimum control frames, per round or pooled over control_pool_rounds rounds."
    )
    control_pool_rounds: int = Field(
        1, ge=1, le=52,
        description="Rounds control_min is pooled over: each round draws at least ceil(control_min / this) "
        "control frames, and the gate's control slice evaluates the last this-many rounds' control frames together.",
    )
    ambiguous_band: tuple[float, float] = Field((0.25, 0.6), description="Confidence band counted as ambiguous.")
    conf_threshold: float = Field(0.25, ge=0.0, le=1.0, description="Confidence above which a box counts as detected.")
    seed: int = Field(0, ge=0, description="Seed of the random control arm and tie breaks.")
    committee_alias: str = Field(
        "previous-champion", description="Registry alias of the previous champion (committee strategy)."
    )
    exclude_sent: bool = Field(
        True, description="Leave out of the sample the frames an earlier round of this project already sent to "
        "labelling (overlapping windows, e.g. a targeted round inside a weekly one): a frame is paid for once.",
    )
    balance_cameras: bool = Field(
        False, description="Split the selected arm equally among the sample's cameras, each share ranked and made "
        "diverse on its own (a camera with too few frames gives its spare share to the others); off: the shares "
        "fall where the scores do. Drift-targeted rounds turn it on (drift.round_balance_cameras).",
    )
    camera_weights: dict[str, Annotated[float, Field(gt=0.0, le=100.0)]] = Field(
        default_factory=dict, description="With balance_cameras, each camera's share in proportion to its weight "
        "here (1 for a camera not named). A drift-targeted round sets it from its episode "
        "(drift.companion_round_weight).",
    )
    control_retire: bool = Field(
        True, description="Control frames join the training set once they have served the live-accuracy estimate "
        "of their window (their labels are not paid twice over); off: never trained on.",
    )
    control_retire_after: int | None = Field(
        None, ge=1, le=104, description="Rounds a control frame serves before it retires into training (its round "
        "and the next N - 1); None: max(control_pool_rounds, drift.live_rounds).",
    )
    cost: SelectionCostSettings = Field(default_factory=SelectionCostSettings)
    regime: RegimeSettings = Field(default_factory=RegimeSettings)
    rare_search: RareSearchSettings = Field(default_factory=RareSearchSettings)
    error_weighting: ErrorWeightingSettings = Field(default_factory=ErrorWeightingSettings)
    pseudo_labels: PseudoLabelSettings = Field(default_factory=PseudoLabelSettings)

    @field_validator("ambiguous_band")
    @classmethod
    def _band(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not (0.0 <= lo < hi <= 1.0):
            raise ValueError(f"must satisfy 0 <= low < high <= 1, got {v}")
        return v


class NmsSettings(_Model):
    """How overlapping candidate boxes of one class are resolved (the same in scoring, evaluation and serving)."""

    method: Literal["hard", "weighted", "gaussian", "linear"] = Field(
        "hard",
        description="hard: greedy NMS deletes a box overlapping a better one by more than iou_threshold; "
        "weighted: hard NMS, then each kept box becomes the score-weighted mean of the boxes it suppressed and "
        "itself (box voting; with model.tta it fuses the views' boxes); "
        "gaussian / linear: soft-NMS decays its score instead (keeps real neighbours in crowds).",
    )
    iou_threshold: float = Field(
        0.6, gt=0.0, le=1.0, description="hard / weighted: suppression (and voting) IoU; linear: boxes "
        "overlapping more than this decay.",
    )
    sigma: float = Field(0.5, gt=0.0, le=10.0, description="Gaussian soft-NMS decay exp(-iou^2 / sigma).")
    score_floor: float = Field(
        0.001, ge=0.0, lt=1.0, description="Soft-NMS: boxes whose decayed score falls below this are dropped.",
    )


class TilingOverride(_Model):
    """Per-camera tiling changes (unset fields keep the ``tiling`` section's values)."""

    enabled: bool | None = None
    tile: int | None = Field(None, ge=32, le=8192)
    overlap: int | None = Field(None, ge=0, le=8191)
    full_frame: bool | None = None


class TilingSettings(_Model):
    """Sliced inference: score overlapping tiles of a frame (small objects at native resolution), merge the boxes."""

    enabled: bool = Field(False, description="Tile frames when scoring, evaluating and serving.")
    tile: int = Field(320, ge=32, le=8192, description="Tile side in frame pixels (each tile is scaled to the model "
                                                         "input); at least the model stride (32).")
    overlap: int = Field(64, ge=0, le=8191, description="Minimum overlap of neighbouring tiles (pixels), < tile.")
    full_frame: bool = Field(True, description="Also score the whole frame (large objects seen whole).")
    ios_threshold: float = Field(
        0.5, gt=0.0, le=1.0,
        description="Pieces of an object cut by a tile border are joined when their intersection covers this share "
        "of the smaller piece.",
    )
    cameras: dict[str, TilingOverride] = Field(default_factory=dict, description="Per-camera changes.")

    @model_validator(mode="after")
    def _overlap_below_tile(self) -> TilingSettings:
        for where, t in [("tiling", self), *((f"tiling.cameras.{c}", o) for c, o in self.cameras.items())]:
            tile = t.tile if t.tile is not None else self.tile
            overlap = t.overlap if t.overlap is not None else self.overlap
            if overlap >= tile:
                raise ValueError(f"{where}: overlap must be in [0, tile) = [0, {tile}), got {overlap}")
        return self

    def for_camera(self, camera: str) -> TilingSettings:
        """The effective tiling of ``camera`` (its override applied)."""
        o = self.cameras.get(camera)
        if o is None:
            return self
        return self.model_copy(update={k: v for k, v in o.model_dump().items() if v is not None} | {"cameras": {}})


class TtaSettings(_Model):
    """Offline test-time augmentation (issue 19): each frame is also run flipped and at other input scales, and all
    views' candidates are merged by ``model.nms`` (hard NMS or soft-NMS) into one set of boxes. Offline only
    (scoring, and when set the golden evaluation); the served model never uses it. Scales other than 1 need a
    scoring artifact exported with dynamic height and width (registration does so when a scale is not 1).
    Off by default: see docs/benchmarks.md (TTA benchmark)."""

    scoring: bool = Field(False, description="Score production frames with TTA: selection's uncertainty and the "
                          "labellers' pre-annotations come from the merged prediction.")
    evaluation: bool = Field(False, description="Evaluate (golden set, gate) champion and challenger with TTA.")
    scales: list[Annotated[float, Field(ge=0.25, le=3.0)]] = Field(
        [1.0, 0.83, 0.67], min_length=1, max_length=8,
        description="Input scales of the views (each in [0.25, 3]; must include 1.0, the plain view).")
    flip: bool = Field(True, description="Add the horizontally flipped view (at scale 1).")

    @field_validator("scales")
    @classmethod
    def _has_plain_view(cls, v: list[float]) -> list[float]:
        if 1.0 not in v:
            raise ValueError("must include 1.0 (the plain view, whose embedding scoring keeps)")
        if len(set(v)) != len(v):
            raise ValueError(f"scales must be unique; got {v}")
        return v

    @property
    def active(self) -> bool:
        return self.scoring or self.evaluation

    @property
    def needs_dynamic_hw(self) -> bool:
        """Whether the exported artifact needs dynamic height and width (TTA on at a scale other than 1)."""
        return self.active and any(s != 1.0 for s in self.scales)


class ModelSettings(_Model):
    arch: str = Field(
        "yolo11n-p2.yaml",
        description="Model family the bootstrap trains from scratch (detloop/model_arch.py): yolo11<s>.yaml, "
        "yolo11n-p2.yaml (a stride-4 level for small objects), yolo26<s>.yaml, yolo26<s>-p2.yaml (<s>: n, s, m, l, "
        "x). A fine-tune keeps its champion's family. Default yolo11n-p2.yaml: +0.05 mAP50-95 and +0.07 small-object AP "
        "over yolo11n.yaml at ~1.6x CPU latency (docs/benchmarks.md, issue 20).",
    )
    nms_free: bool = Field(
        False,
        description="YOLO26 only: export the one-to-one head and decode it by top-k of the per-anchor top score "
        "instead of NMS (class vectors kept); false: its one-to-many head with `nms`. Refused for arch without a "
        "one-to-one head, with backend torch and with tiling.",
    )
    input_size: int = Field(320, ge=32, le=4096, multiple_of=32, description="Model input size (pixels, square).")
    conf_threshold: float = Field(0.001, ge=0.0, le=1.0, description="Minimum score kept by NMS when scoring.")
    max_det: int = Field(100, ge=1, le=10000, description="Maximum detections per frame.")
    batch_size: int = Field(
        8, ge=1, le=1024,
        description="Frames per inference batch (8: two workers' batches stay in a 32 MB L3 cache; measured "
                    "~4 % more frames/s than 16 on 2 cores, see docs/benchmarks.md).",
    )
    backend: Literal["onnx", "torch"] = Field("onnx", description="Scoring backend.")
    scoring_conf_threshold: float = Field(
        0.05, ge=0.0, le=1.0,
        description="Minimum top-class score kept when scoring production frames (keeps sub-threshold candidates).",
    )
    scoring_max_candidates: int = Field(
        2000, ge=1, le=100000, description="Top candidates per frame that enter NMS when scoring."
    )
    read_threads: int = Field(2, ge=1, le=256, description="Threads of the prefetching S3 reader (download + decode).")
    inference_workers: int = Field(
        0, ge=0, le=256,
        description="Batches scored concurrently (ONNX Runtime; torch scores one at a time). 0: one per CPU core.",
    )
    inference_threads: int | None = Field(
        1, ge=1, le=1024,
        description="ONNX Runtime intra-op threads per worker; null: all cores (then use inference_workers: 1).",
    )
    fast_decode: bool = Field(
        True, description="Decode JPEGs at 1/2, 1/4 or 1/8 scale when that still covers the model input (DCT scaling)."
    )
    nms: NmsSettings = Field(default_factory=NmsSettings)
    tiling: TilingSettings = Field(default_factory=TilingSettings)
    tta: TtaSettings = Field(default_factory=TtaSettings)

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str) -> str:
        from detloop.model_arch import parse_arch

        parse_arch(v)  # ValueError names the choices
        return v

    @model_validator(mode="after")
    def _nms_free_where_it_makes_sense(self) -> ModelSettings:
        from detloop.model_arch import parse_arch

        if not self.nms_free:
            return self
        if not parse_arch(self.arch).end2end:
            raise ValueError(f"nms_free: true needs an arch with a one-to-one head (yolo26*), got arch {self.arch}")
        if self.backend != "onnx":
            raise ValueError("nms_free: true needs backend onnx (the torch fallback runs the one-to-many head)")
        tiled = [c for c in self.tiling.cameras if self.tiling.for_camera(c).enabled]
        if self.tiling.enabled or tiled:
            raise ValueError("nms_free: true cannot be combined with tiling (tiles' duplicates need NMS); "
                             f"tiling enabled{' for cameras ' + ', '.join(tiled) if tiled else ''}")
        return self

    @property
    def export_head(self) -> str:
        """The head a new scoring artifact exports: ``one2one`` (NMS-free) or ``one2many`` (decoded with ``nms``)."""
        return "one2one" if self.nms_free else "one2many"

    @model_validator(mode="before")
    @classmethod
    def _legacy_iou_threshold(cls, data: Any) -> Any:
        """``model.iou_threshold`` (before ``model.nms``) is read as ``model.nms.iou_threshold``."""
        if isinstance(data, dict) and "iou_threshold" in data:
            data = dict(data)
            nms = dict(data.get("nms") or {})
            nms.setdefault("iou_threshold", data.pop("iou_threshold"))
            data["nms"] = nms
        return data

    def decode_params(self, conf_threshold: float, max_candidates: int) -> DecodeParams:
        """The decode of raw head output with this model's ``max_det`` and ``nms`` (scoring, evaluation, serving)."""
        from detloop.postprocess import DecodeParams

        n = self.nms
        return DecodeParams(conf_threshold, n.iou_threshold, self.max_det, max_candidates, n.method, n.sigma,
                            n.score_floor)

    def tile_spec(self, camera: str | None = None) -> TileSpec | None:
        """How frames of ``camera`` are tiled (its override applied), or None when they are scored whole."""
        from detloop.tiling import TileSpec

        t = self.tiling.for_camera(camera) if camera else self.tiling
        return TileSpec(t.tile, t.overlap, t.full_frame, t.ios_threshold) if t.enabled else None


class CopyPasteSettings(_Model):
    """Synthetic copy-paste of rare-class objects onto labelled train frames (:mod:`tasks.copy_paste`)."""

    enabled: bool = Field(False, description="Add synthetic train frames with pasted rare-class objects.")
    classes: list[str] = Field(
        [], description="Classes pasted; empty: the rarest classes of the train split (share < rare_share).",
    )
    rare_share: float = Field(
        0.1, gt=0.0, le=1.0, description="A class is rare when its share of the train split's boxes is below this.",
    )
    synthetic_share: float = Field(
        0.25, gt=0.0, le=2.0, description="Synthetic frames added, as a share of the real train frames.",
    )
    objects_per_frame: tuple[int, int] = Field((1, 3), description="Objects pasted per synthetic frame (min, max).")
    max_overlap: float = Field(
        0.2, ge=0.0, le=1.0,
        description="Largest share of a pasted box that may cover an existing box, or of an existing box it may cover.",
    )
    scale_jitter: float = Field(
        0.2, ge=0.0, le=1.0, description="Relative scale change of a pasted object (uniform in [1-j, 1+j]).",
    )
    blend_px: float = Field(2.0, ge=0.0, le=50.0, description="Gaussian feathering of the paste mask edge (pixels).")
    seed: int = Field(0, ge=0, description="Seed of the synthesis (same data + seed: same frames).")

    @field_validator("objects_per_frame")
    @classmethod
    def _objects(cls, v: tuple[int, int]) -> tuple[int, int]:
        lo, hi = v
        if not (1 <= lo <= hi <= 50):
            raise ValueError(f"must satisfy 1 <= min <= max <= 50, got {v}")
        return v


class SampleWeightSettings(_Model):
    """Per-frame repeats of the train list: hard-example mining and rare-class oversampling (:mod:`tasks.sample_weights`)."""

    mining: bool = Field(False, description="Repeat train frames the champion got wrong (misses, confusions, loss).")
    mining_strength: float = Field(
        1.0, ge=0.0, le=10.0, description="Extra repeats per unit of a frame's error score (0: off).",
    )
    rare_oversampling: bool = Field(False, description="Repeat train frames holding a rare class.")
    rare_share: float = Field(
        0.1, gt=0.0, le=1.0, description="A class is rare when its share of the train split's boxes is below this.",
    )
    rare_power: float = Field(
        1.0, ge=0.0, le=2.0, description="Repeats of a rare-class frame grow as (target share / class share)^power.",
    )
    max_repeats: int = Field(4, ge=1, le=20, description="Cap: no frame is listed more than this many times.")
    max_extra_share: float = Field(
        0.5, ge=0.0, le=10.0,
        description="Cap: repeats added in all, as a share of the train frames (the hardest/rarest keep theirs).",
    )
class ClassLossSettings(_Model):
    """Classification loss of training (issue 19): plain BCE (Ultralytics' default), focal or varifocal.

    Focal (Lin et al. 2017) multiplies each element's BCE by ``(1 - p_t)^gamma`` and, when ``alpha`` is set, by
    ``alpha`` (targets) / ``1 - alpha`` (background); with gamma 0 and no alpha it IS the BCE. Varifocal (Zhang et
    al. 2021) keeps the IoU-aware soft target q of Ultralytics' task-aligned assigner: a positive's BCE is weighted
    by q, a negative's by ``alpha * p^gamma``. Off (bce) by default: see docs/benchmarks.md (loss benchmark).
    """

    kind: Literal["bce", "focal", "varifocal"] = Field(
        "bce", description="Classification loss: bce (Ultralytics' own), focal or varifocal.")
    gamma: float = Field(1.5, ge=0.0, le=5.0, description="Focusing exponent (focal: (1-p_t)^gamma; varifocal: p^gamma "
                         "on negatives).")
    alpha: float | None = Field(
        None, ge=0.0, le=1.0, description="Focal: weight of target elements (background gets 1-alpha); null: none. "
        "Varifocal: weight of negatives (null: 0.75, the paper's).")
    cls_pw: float = Field(0.0, ge=0.0, le=1.0, description="Ultralytics' class weighting: inverse class frequency "
                          "raised to this power (0: off, 1: full inverse frequency); combines with any kind.")


class TrainingSettings(_Model):
    bootstrap_epochs: int = Field(60, ge=1, le=10000, description="Epochs of the bootstrap model from the YAML.")
    finetune_epochs: int = Field(10, ge=1, le=10000, description="Epochs of each fine-tune from the champion.")
    finetune_max_images: int | None = Field(
        None, ge=1, le=100_000_000,
        description="Bound on the images a fine-tune trains on (epochs x train frames, repeats included): the "
        "epochs fall to max(1, this // train frames) when finetune_epochs would pass it, so a weekly round's cost "
        "stops growing with the dataset. null: finetune_epochs always. An explicit epochs parameter is not bounded.",
    )
    batch: int = Field(16, ge=1, le=1024)
    nbs: int = Field(16, ge=1, le=1024, description="Nominal batch size (gradient accumulation).")
    optimizer: str = Field("AdamW")
    lr0: float = Field(0.002, gt=0.0, le=1.0)
    finetune_lr0: float = Field(0.001, gt=0.0, le=1.0)
    warmup_bias_lr: float | None = Field(
        None, ge=0.0, le=1.0,
        description="Learning rate the biases start from during Ultralytics' warm-up (it falls to lr0); null: "
        "Ultralytics' default (0.1). 0 is what Ultralytics sets when its optimizer=auto picks AdamW; on the soak's "
        "rounds it did not raise the golden mAP (docs/training.md, 'Warm-up').",
    )
    workers: int = Field(2, ge=0, le=64, description="Dataloader workers.")
    threads: int | None = Field(None, ge=1, le=1024, description="Torch threads; null: all cores.")
    oversample_factor: int = Field(2, ge=1, le=20, description="Repeats of hard frames in the train list.")
    min_train_frames: int = Field(8, ge=1, description="Refuse to train on fewer labelled frames.")
    device: str = Field("cpu")
    seed: int = Field(0, ge=0)
    timeout_minutes: int = Field(120, ge=1, le=100000, description="Training subprocess is killed after this.")
    copy_paste: CopyPasteSettings = Field(default_factory=CopyPasteSettings)
    sample_weights: SampleWeightSettings = Field(default_factory=SampleWeightSettings)
    cls_loss: ClassLossSettings = Field(default_factory=ClassLossSettings)


class EvaluationSettings(_Model):
    min_instances: int = Field(50, ge=1, description="Slices/classes with fewer instances report insufficient data.")
    latency_frames: int = Field(32, ge=1, le=10000, description="Frames timed for the latency comparison.")
    golden_version: str | None = Field(
        None, description="Golden dataset version the gate uses; null: the newest golden version (pin it in production)."
    )


class ErrorAnalysisSettings(_Model):
    """TIDE-style error breakdown of the champion in each round's evaluation (:mod:`tasks.error_analysis`)."""

    enabled: bool = Field(True, description="Break the champion's errors down in each round's evaluation.")
    slices: list[str] = Field(
        ["golden", "control", "crowded"], description="Evaluation slices broken down (those present in a round).",
    )
    fg_iou: float = Field(0.5, gt=0.0, le=1.0, description="IoU of a correct localisation (TIDE's foreground).")
    bg_iou: float = Field(0.1, ge=0.0, lt=1.0, description="IoU under which a prediction is on background.")
    count_min_confidence: float = Field(
        0.25, ge=0.0, le=1.0, description="Predictions under this confidence are not counted (they still cost AP).",
    )

    @model_validator(mode="after")
    def _ious(self) -> ErrorAnalysisSettings:
        if self.bg_iou >= self.fg_iou:
            raise ValueError(f"bg_iou ({self.bg_iou}) must be below fg_iou ({self.fg_iou})")
        return self


class GateSettings(_Model):
    metric: Literal["map", "map50"] = Field(
        "map", description="What every AP check of the gate compares: map (mAP50-95, rewards tight boxes) or map50 "
        "(mAP at IoU 0.5: a fine-tune on labels with loose boxes is judged on finding objects; docs/training.md).",
    )
    min_delta: float = Field(0.0, ge=-1.0, le=1.0, description="Golden mAP (gate.metric) must improve by at least this.")
    class_tol: float = Field(0.05, ge=0.0, le=1.0, description="Largest allowed drop of any class AP.")
    small_tol: float = Field(0.05, ge=0.0, le=1.0, description="Largest allowed drop of small-object AP.")
    crowded_tol: float = Field(
        0.05, ge=0.0, le=1.0,
        description="Largest allowed drop of mAP50-95 on the crowded slice (golden frames with overlapping truth).",
    )
    latency_ratio_max: float = Field(1.5, gt=0.0, le=100.0, description="Challenger/champion latency ratio limit.")
    bootstrap_floor: float = Field(0.01, ge=0.0, le=1.0, description="Golden mAP50-95 a first model needs.")
    auto_promote: bool = Field(True, description="Promote a passing challenger without a human.")
    drift_golden_tol: float = Field(
        0.0, ge=0.0, le=0.1,
        description="Drift rounds only: the golden mAP may drop by up to this (instead of having to improve by "
        "min_delta) when the challenger gains at least drift_min_gain on the drifted slice (the drifted cameras' "
        "held-out labelled frames since the episode began, which the frozen golden set cannot contain). 0: off, "
        "every round is gated on golden alone (docs/training.md, Gate).",
    )
    drift_min_gain: float = Field(
        0.02, ge=0.0, le=1.0,
        description="Gain on the drifted slice (gate.metric) a drift-round challenger needs to use drift_golden_tol.",
    )


class RoundSettings(_Model):
    deadline_days: int = Field(5, ge=0, le=365, description="Days annotators have before a round closes partially.")
    on_open_round: Literal["skip", "open_another"] = Field(
        "skip", description="What the weekly run does while the previous round is still open."
    )
    val_share: float = Field(
        0.2, ge=0.0, le=1.0, description="Share of (camera, date, hour) groups of labelled round frames put in val."
    )
    carry_labels: bool = Field(
        True, description="A round's dataset version is the champion's training data + this round + the labelled "
        "frames of every earlier round missing from it (rounds whose challenger was rejected): labels paid for are "
        "trained on. Off: the champion's training data + this round only.",
    )


DriftStatistic = Literal["psi", "ks", "wasserstein", "chi2", "mmd"]


class DriftSettings(_Model):
    """Drift monitoring: what is compared with the champion's reference, how, and when it alarms (docs/drift.md)."""

    cron: str = Field("0 4 * * *", description="Cron of the daily drift-monitor run (prefect.timezone).")
    reference_days: int = Field(
        7, ge=1, le=90,
        description="Production days (days with frames) before the champion's promotion that form its reference.",
    )
    frames_per_camera_day: int = Field(
        40, ge=2, le=100_000, description="Frames scored per camera and day, reference days and monitored days alike.",
    )
    min_frames: int = Field(
        20, ge=2, le=100_000,
        description="A camera-day (or a camera's reference) with fewer frames says 'not enough data', never drift "
        "or no drift.",
    )
    min_boxes: int = Field(
        30, ge=2, le=1_000_000,
        description="Box-level tests (confidence, box size, class mix, each class) run only with this many boxes on "
        "both sides.",
    )
    min_confidence: float = Field(
        0.25, ge=0.0, le=1.0, description="Boxes at or above this confidence are the detections that are compared.",
    )
    report_days: int = Field(
        14, ge=1, le=365, description="Days, ending the day before as_of, that a run evaluates and the report shows.",
    )
    statistics: list[DriftStatistic] = Field(
        ["psi", "ks", "wasserstein", "chi2", "mmd"], min_length=1, description="Statistics computed.",
    )
    psi_bins: int = Field(10, ge=2, le=100, description="PSI bins (cut at reference quantiles).")
    psi_moderate: float = Field(0.1, ge=0.0, le=10.0, description="PSI from here is 'moderate'.")
    psi_significant: float = Field(0.2, ge=0.0, le=10.0, description="PSI from here is 'significant' (a signal).")
    wasserstein_threshold: float = Field(
        0.5, gt=0.0, le=100.0,
        description="Wasserstein distance, in reference standard deviations, from which it is a signal.",
    )
    permutations: int = Field(
        999, ge=99, le=100_000,
        description="Resamples of the permutation tests (box-level KS and chi-squared by whole frames, MMD); the "
        "smallest p-value is 1/(n+1).",
    )
    permutations_refine: int | None = Field(
        9999, ge=99, le=1_000_000,
        description="A permutation p-value resting on fewer than 10 resamples as extreme as the observed "
        "(p <= 10/(permutations+1)) is computed again from this many fresh resamples, so a strong drift's "
        "p-value is not held at 1/(permutations+1), too coarse to pass the correction over a camera-day's tests; "
        "only small p-values pay for it. Null (or not above drift.permutations): never.",
    )
    mmd_max_frames: int = Field(
        300, ge=10, le=10_000, description="Frames per side of the MMD test (a larger side is subsampled).",
    )
    correction: Literal["bonferroni", "fdr"] = Field(
        "fdr", description="Multiple-testing correction over a camera-day's tests: Bonferroni or Benjamini-Hochberg.",
    )
    alpha: float = Field(
        0.01, gt=0.0, lt=1.0, description="Level of the corrected tests (family-wise error or false discovery rate).",
    )
    alarm_statistics: list[DriftStatistic] = Field(
        ["ks", "chi2", "mmd"], min_length=1, description="Statistics whose signals count towards an alarm.",
    )
    alarm_min_signals: int = Field(
        2, ge=1, le=1000, description="Signals (feature x statistic) a camera-day needs to count as drifted.",
    )
    alarm_strong_alpha: float | None = Field(
        0.002, gt=0.0, lt=1.0,
        description="A camera-day whose smallest corrected p-value is below this counts as drifted on that one "
        "signal, whatever alarm_min_signals asks: a drift that moves a single test (the class mix of a camera, say) "
        "is otherwise never seen. 0.002: one test at about the refined permutation floor (1e-4) among ~13. Null: "
        "off. It needs p-values that small to exist (drift.permutations_refine).",
    )
    pool_days: int = Field(
        2, ge=1, le=30,
        description="Days each camera-day is tested on: that day's frames and those of the pool_days - 1 days before "
        "it (scored by the same champion), so a small but lasting shift gathers evidence on a camera that publishes "
        "few frames a day; a strong step drift still shows on its first day, a weak one a day or two later. 1: the day "
        "alone.",
    )
    alarm_consecutive_days: int = Field(
        2, ge=1, le=60,
        description="Drifted days in a row (days without enough data are skipped) that open an episode.",
    )
    close_after_clean_days: int = Field(
        3, ge=1, le=365, description="Clean days in a row after which a camera leaves its episode.",
    )
    companion_alpha: float = Field(
        0.05, ge=0.0, le=0.5,
        description="When an episode opens on a class-mix change (a class's share grew or shrank), every other "
        "camera in no open episode is asked the one directed question (did that class's share move the same way "
        "there?), Holm-corrected over cameras and classes; those below this level join the episode and its "
        "targeted round. A change that reaches every camera moves each a little, and a camera with few frames a day "
        "cannot show it alone (docs/drift.md). 0: off.",
    )
    companion_days: int = Field(
        7, ge=1, le=28,
        description="Days on which an episode opened on a class-mix change asks the cameras outside it "
        "(companion_alpha): the day it opens and the companion_days - 1 days after, each time on the frames since its "
        "opening day's pool began (evidence grows); the opening day's ask is at companion_alpha / 2 and each later one "
        "at companion_alpha / 2 / (companion_days - 1) (Bonferroni over the asks, so a stationary camera joins falsely "
        "at most companion_alpha of the time). A camera found after the "
        "opening day (its round already chosen) opens an episode of its own, with its own targeted round. 7: the "
        "week after it opens; 1: the opening day only.",
    )
    reopen_after_days: int = Field(
        14, ge=0, le=365,
        description="A camera still drifting this many days after its answered episode opened (its targeted round "
        "created, the champion unchanged) leaves it for a new episode, which starts a new targeted round; 0: never ("
        "then an episode lasts until its cameras are clean or the champion changes, and a new champion asks again).",
    )
    hold_days: int = Field(
        7, ge=0, le=365,
        description="A camera carried to a new champion from an answered episode (its round promoted) opens no new "
        "episode for this many days from that episode's opening while its days are like its traffic since the onset "
        "(held; a new drift is asked about at once). Each earlier answered episode of the same drift doubles it "
        "(7, 14, 28 days): a drift the label-free estimate never sees recovered is asked about ever less often, and "
        "the first follow-up comes while it is fresh (docs/drift.md). 0: no hold (every new champion asks again).",
    )
    live_rounds: int = Field(4, ge=1, le=100, description="Control arms of the last N rounds pooled for live mAP.")
    live_min_frames: int = Field(
        20, ge=1, le=100_000, description="Control frames needed for a live mAP (overall and per camera).",
    )
    bootstrap_resamples: int = Field(
        200, ge=20, le=100_000, description="Bootstrap resamples (over frames) of the live mAP interval.",
    )
    confidence_level: float = Field(0.9, gt=0.5, lt=1.0, description="Level of the live mAP interval.")
    label_free_estimator: Literal["atc", "doc", "atc_doc", "weighted"] = Field(
        "weighted", description="The label-free mAP50 estimate of a camera-day, calibrated on the pooled control "
        "frames (tasks/label_free.py): atc (share of detections above a calibrated confidence), doc (calibrated mAP "
        "plus the change of mean confidence), atc_doc (their mean) or weighted (weighted by each one's error on "
        "cameras left out of the calibration; measured in docs/benchmarks.md).",
    )
    experiment: str = Field("detloop-monitoring", description="MLflow experiment of the monitoring runs.")
    round_budget: int | None = Field(
        None, ge=1, le=1_000_000, description="Frames of a drift-targeted round (default: selection.budget); "
        "round_frames_per_camera, when set, takes precedence.",
    )
    round_frames_per_camera: int | None = Field(
        None, ge=1, le=100_000, description="Frames of a drift-targeted round per camera of its episode: its budget "
        "is this x the episode's cameras (null: round_budget). The recovery ceiling (docs/benchmarks.md) measured "
        "~50 labelled frames of a repainted camera recovering most of its loss where 11 did not.",
    )
    round_balance_cameras: bool = Field(
        True, description="A targeted round splits its selected arm among its episode's cameras "
        "(selection.balance_cameras), so a new camera's uncertain frames do not take a repainted camera's share.",
    )
    companion_round_weight: float = Field(
        0.5, gt=0.0, le=1.0,
        description="A companion's share of its episode's targeted round, against 1 for a camera that drifted on its "
        "own: a companion joined on one class's share alone (companion_alpha), with nothing else of its traffic "
        "moved, where a camera of its own drift saw its images, embeddings or confidences move and needs its frames "
        "most (docs/drift.md). 1: every camera of the episode alike.",
    )
    reasked_round_days: bool = Field(
        True,
        description="A camera re-asked (in an earlier episode whose targeted round was created) samples, in its new "
        "episode's round, its drifted days since that round's window ended (held days and days of the earlier "
        "episode after its round included), inside the sampling window, not only the new episode's days: its "
        "drift went on unlabelled meanwhile (docs/drift.md). Off: every camera samples the episode's days.",
    )
    carry_unrecovered: bool = Field(
        True, description="A camera the previous champion's monitor last saw drifting (its episode not closed clean "
        "when the champion changed) keeps a reference from before its drift began under the new champion, so a "
        "promotion does not make its drifted traffic the new normal; a day of it counts as recovered when the "
        "label-free estimate there is within recovery_tolerance of the estimate on that reference (docs/drift.md).",
    )
    recovery_estimator: Literal["atc", "doc", "atc_doc", "weighted"] = Field(
        "atc_doc", description="The label-free estimate that decides whether a carried camera has recovered: one "
        "that moves when accuracy drops (atc_doc was right on the most camera-days whose true mAP50 moved: "
        "docs/benchmarks.md), where label_free_estimator is the one most often right overall.",
    )
    recovery_tolerance: float = Field(
        0.05, ge=0.0, le=1.0, description="How far below its pre-onset label-free estimate (mAP50 scale) a carried "
        "camera's day may be and still count as recovered.",
    )
    release_check_min_frames: int = Field(
        20, ge=1, le=100_000, description="Labelled control frames of a carried camera since its onset (in the live "
        "window) that check its release: when the label-free estimate on them reads their mAP50 more than "
        "recovery_tolerance too high, the estimate is not trusted on that camera and it stays held. With fewer, the "
        "estimate alone decides (docs/drift.md).",
    )
    shrink_advice_ratio: float = Field(
        0.5, ge=0.0, le=1.0, description="A drifted camera whose log_area signal fired and whose detected boxes are "
        "at most this share of their reference area (geometric mean) gets a note in the report: its objects shrank "
        "(a zoom-out), which labels alone may not undo; per-camera tiling is named with how to measure it. 0: never.",
    )
    seed: int = Field(0, ge=0, description="Seed of the permutation tests, subsamples and bootstrap.")

    @model_validator(mode="after")
    def _consistent(self) -> DriftSettings:
        missing = sorted(set(self.alarm_statistics) - set(self.statistics))
        if missing:
            raise ValueError(f"alarm_statistics {missing} are not computed: add them to drift.statistics")
        if self.psi_moderate >= self.psi_significant:
            raise ValueError("psi_moderate must be below psi_significant")
        return self


class WorldRef(_Model):
    config: str = Field("configs/world.yaml", description="Synthetic world parameters (relative to the repo root).")
    seed: int = Field(0, ge=0, description="World seed.")


class Settings(BaseSettings):
    """The whole resolved configuration (see :func:`load_settings` for where values come from)."""

    model_config = SettingsConfigDict(
        extra="forbid", validate_assignment=True, env_prefix=ENV_PREFIX, env_nested_delimiter="__",
        env_parse_none_str="null", nested_model_default_partial_update=True,
    )

    data_dir: Path = Field(Path(".detloop"), description="Local state: services, logs, pids, caches.")
    classes: list[str] = Field(min_length=1, description="Class names; the order never changes between rounds.")
    s3: S3Settings = Field(default_factory=S3Settings)
    mlflow: MLflowSettings = Field(default_factory=MLflowSettings)
    label_studio: LabelStudioSettings = Field(default_factory=LabelStudioSettings)
    prefect: PrefectSettings = Field(default_factory=PrefectSettings)
    stack: StackSettings = Field(default_factory=StackSettings)
    locks: LockSettings = Field(default_factory=LockSettings)
    sampling: SamplingSettings = Field(default_factory=SamplingSettings)
    selection: SelectionSettings = Field(default_factory=SelectionSettings)
    labelling_cost: LabellingCostSettings = Field(default_factory=LabellingCostSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    gate: GateSettings = Field(default_factory=GateSettings)
    error_analysis: ErrorAnalysisSettings = Field(default_factory=ErrorAnalysisSettings)
    rounds: RoundSettings = Field(default_factory=RoundSettings)
    drift: DriftSettings = Field(default_factory=DriftSettings)
    world: WorldRef = Field(default_factory=WorldRef)
    source: str | None = Field(None, description="File the settings were loaded from (set by the loader).")

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Priority, highest first: explicit values (a run's overrides), the environment, the config file."""
        ctx = _SOURCES.get()
        if ctx is None:  # constructed directly (tests): explicit values and the process environment
            return (init_settings, env_settings)
        data, env = ctx
        return (init_settings, _EnvSource(settings_cls, env), _YamlSource(settings_cls, data))

    @field_validator("classes")
    @classmethod
    def _unique_classes(cls, v: list[str]) -> list[str]:
        dupes = sorted({c for c in v if v.count(c) > 1})
        if dupes:
            raise ValueError(f"class names must be unique; repeated: {dupes}")
        if any(not c.strip() for c in v):
            raise ValueError("class names must be non-empty")
        return v

    @model_validator(mode="after")
    def _resolve_data_dir(self) -> Settings:
        if not self.data_dir.is_absolute():
            object.__setattr__(self, "data_dir", (Path.cwd() / self.data_dir).resolve())
        return self

    # ---- derived paths ----------------------------------------------------------------------
    @property
    def secrets_file(self) -> Path:
        return self.data_dir / "secrets.env"

    def world_config_path(self) -> Path:
        p = Path(self.world.config)
        return p if p.is_absolute() else REPO_ROOT / p

    # ---- secrets ----------------------------------------------------------------------------
    def s3_credentials(self) -> tuple[str | None, str | None]:
        """(access key id, secret access key), or Nones for boto3's default chain; never logged."""
        a = self.s3.access_key_id.get_secret_value() if self.s3.access_key_id else None
        s = self.s3.secret_access_key.get_secret_value() if self.s3.secret_access_key else None
        return a, s

    def label_studio_token(self) -> str | None:
        return self.label_studio.api_token.get_secret_value() if self.label_studio.api_token else None

    def fill_secret_blocks(self, load: Callable[[str], Any]) -> None:
        """Fill secrets that the environment did not give from the configured secret blocks.

        ``load(name)`` returns a block's value (the flows pass Prefect's ``Secret.load(name).get()``; the core
        never imports Prefect). ``s3.secret_block`` holds ``{access_key_id, secret_access_key}``;
        ``label_studio.secret_block`` holds the API token. Values already set are kept.
        """
        if self.s3.secret_block and (self.s3.access_key_id is None or self.s3.secret_access_key is None):
            block = load(self.s3.secret_block)
            if not isinstance(block, dict):
                raise ConfigError(f"s3.secret_block {self.s3.secret_block!r}: expected a JSON object with "
                                  "access_key_id and secret_access_key")
            if self.s3.access_key_id is None and block.get("access_key_id"):
                self.s3.access_key_id = SecretStr(str(block["access_key_id"]))
            if self.s3.secret_access_key is None and block.get("secret_access_key"):
                self.s3.secret_access_key = SecretStr(str(block["secret_access_key"]))
        if self.label_studio.secret_block and self.label_studio.api_token is None:
            value = load(self.label_studio.secret_block)
            if value:
                self.label_studio.api_token = SecretStr(str(value))

    def masked_dump(self) -> dict[str, Any]:
        """The resolved config as plain data with every secret masked."""
        data = self.model_dump(mode="json")
        for section, field in SECRET_FIELDS:
            value = data.get(section, {}).get(field)
            data[section][field] = "********" if value else None
        return data


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
class _YamlSource(PydanticBaseSettingsSource):
    """The config file's values (already read and checked by :func:`load_settings`)."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]):
        super().__init__(settings_cls)
        self.data = data

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover - unused
        return self.data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self.data


class _EnvSource(EnvSettingsSource):
    """``DETLOOP_<SECTION>__<FIELD>`` variables of a given environment (the process's by default), excluding
    the variables that are not settings (``DETLOOP_CONFIG``, ``DETLOOP_TEST_*``)."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]):
        self._env = {k: v for k, v in env.items()
                     if k != "DETLOOP_CONFIG" and not k.startswith(NON_SETTING_ENV_PREFIX)}
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        from pydantic_settings.sources.utils import parse_env_vars

        return parse_env_vars(self._env, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


_SOURCES: ContextVar[tuple[dict[str, Any], Mapping[str, str]] | None] = ContextVar("detloop_settings_sources",
                                                                                  default=None)


def read_secrets_file(path: Path) -> dict[str, str]:
    """Parse a KEY=VALUE file (the local stack's generated secrets)."""
    out: dict[str, str] = {}
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        k, v = line.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "literal_error":
            msg = f"must be one of {e.get('ctx', {}).get('expected', '')}"
        got = e.get("input")
        got_s = "" if isinstance(got, dict) or e["type"] == "missing" else f" (got {got!r})"
        lines.append(f"{source}: {loc}: {msg}{got_s}")
    return "\n".join(lines)


def load_settings(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Load, merge and validate the settings.

    Args:
        path: YAML file; default ``$DETLOOP_CONFIG`` or ``configs/local.yaml``.
        env: environment to read overrides and secrets from (default ``os.environ``).
        overrides: nested dict applied last (used by tests and flow parameters).

    Raises:
        ConfigError: with one line per invalid field: ``file: a.b: message (got value)``.
    """
    env = os.environ if env is None else env
    cfg_path = Path(path or env.get("DETLOOP_CONFIG") or DEFAULT_CONFIG)
    if not cfg_path.is_file():
        raise ConfigError(f"config file not found: {cfg_path}")
    try:
        raw = yaml.safe_load(cfg_path.read_text()) or {}
    except yaml.YAMLError as err:  # its text spans lines (context, caret): one line, with the position
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        what = getattr(err, "problem", None) or " ".join(str(err).split())
        raise ConfigError(f"{cfg_path}: not valid YAML{where}: {what}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{cfg_path}: top level must be a mapping, got {type(raw).__name__}")
    for section, field in SECRET_FIELDS:
        if isinstance(raw.get(section), dict) and raw[section].get(field) not in (None, ""):
            raise ConfigError(
                f"{cfg_path}: {section}.{field}: secrets are not allowed in config files; "
                f"set DETLOOP_{section.upper()}__{field.upper()} in the environment or use a Prefect Secret block"
            )
    token = _SOURCES.set((raw, env))
    try:
        settings = Settings(**{**dict(overrides or {}), "source": str(cfg_path)})
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, str(cfg_path))) from None
    except SettingsError as err:  # an environment value that is not valid JSON for a list / mapping field
        raise ConfigError(f"{cfg_path}: {err}") from None
    finally:
        _SOURCES.reset(token)
    _fill_secrets(settings, env)
    return settings


def _fill_secrets(settings: Settings, env: Mapping[str, str]) -> None:
    """Standard env names, then the local stack's generated secrets file."""
    local = read_secrets_file(settings.secrets_file)
    if settings.s3.access_key_id is None:
        v = env.get("AWS_ACCESS_KEY_ID") or local.get("DETLOOP_S3__ACCESS_KEY_ID")
        if v:
            settings.s3.access_key_id = SecretStr(v)
    if settings.s3.secret_access_key is None:
        v = env.get("AWS_SECRET_ACCESS_KEY") or local.get("DETLOOP_S3__SECRET_ACCESS_KEY")
        if v:
            settings.s3.secret_access_key = SecretStr(v)
    if settings.label_studio.api_token is None:
        v = env.get("LABEL_STUDIO_API_KEY") or local.get("DETLOOP_LABEL_STUDIO__API_TOKEN")
        if v:
            settings.label_studio.api_token = SecretStr(v)


def parse_as_of(value: str | date | None) -> date:
    """``as_of`` for every "this week" command: an ISO date, or today when None."""
    if value is None:
        return date.today()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(value)
    except ValueError as err:
        raise ConfigError(f"as_of: expected an ISO date like 2026-01-12, got {value!r}") from err
