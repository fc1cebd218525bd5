"""Imbalance-aware classification loss (issue 19): focal / varifocal through subclasses of Ultralytics' detection
loss, model and trainer; the config that selects them; one tiny training through the real worker."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from detloop.errors import ConfigError
from detloop.settings import REPO_ROOT, load_settings

torch = pytest.importorskip("torch")


def _model_and_batch(nc: int = 3, seed: int = 0) -> tuple:
    """A tiny YOLO11n (random weights) in train mode, its raw training output on 2 random images, and targets."""
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(seed)
    model = DetectionModel("yolo11n.yaml", nc=nc, verbose=False)
    model.args = get_cfg()
    model.train()
    imgs = torch.rand(2, 3, 128, 128)
    preds = model(imgs)
    batch = {
        "batch_idx": torch.tensor([0.0, 0.0, 1.0]),
        "cls": torch.tensor([[0.0], [2.0], [1.0]]),
        "bboxes": torch.tensor([[0.3, 0.3, 0.2, 0.25], [0.7, 0.6, 0.3, 0.2], [0.5, 0.5, 0.4, 0.4]]),  # xywh, 0..1
    }
    return model, preds, batch


def _loss(model: object, preds: object, batch: dict, cfg: dict | None) -> tuple:
    from ultralytics.utils.loss import v8DetectionLoss

    from tasks.cls_loss import ImbalanceDetectionLoss

    if cfg is None:
        return v8DetectionLoss(model)(preds, batch)
    model.cls_loss_cfg = cfg
    return ImbalanceDetectionLoss(model)(preds, batch)


def test_focal_gamma0_no_alpha_equals_ultralytics_bce_on_a_fixed_batch() -> None:
    model, preds, batch = _model_and_batch()
    ref, ref_items = _loss(model, preds, batch, None)
    got, _ = _loss(model, preds, batch, {"kind": "focal", "gamma": 0.0, "alpha": None})
    assert ref_items["cls_loss"] > 0
    assert torch.allclose(got, ref, rtol=1e-6, atol=1e-7)  # box, cls and dfl terms all unchanged
    # with Ultralytics' class weighting (cls_pw) on as well, still the same
    model.class_weights = torch.tensor([0.5, 1.0, 1.5])
    ref_w, _ = _loss(model, preds, batch, None)
    got_w, _ = _loss(model, preds, batch, {"kind": "focal", "gamma": 0.0, "alpha": None})
    assert torch.allclose(got_w, ref_w, rtol=1e-6) and not torch.allclose(ref_w, ref)
    del model.class_weights
    # a real focusing exponent changes only the classification term (and lowers it: easy negatives fade)
    foc, _ = _loss(model, preds, batch, {"kind": "focal", "gamma": 2.0, "alpha": 0.25})
    assert foc[1] < ref[1] and torch.allclose(foc[[0, 2]], ref[[0, 2]])
    vfl, _ = _loss(model, preds, batch, {"kind": "varifocal", "gamma": 2.0, "alpha": None})
    assert vfl[1] != ref[1] and torch.allclose(vfl[[0, 2]], ref[[0, 2]])


def _bce(x: float, y: float) -> float:
    p = 1 / (1 + math.exp(-x))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def test_varifocal_and_focal_match_hand_computed_values() -> None:
    from ultralytics.utils.loss import VarifocalLoss

    from tasks.cls_loss import focal_elementwise, varifocal_elementwise

    logits = [0.0, 2.0, -1.0, 0.5]
    q = [0.8, 0.0, 0.0, 0.3]  # IoU-aware soft targets: two positives, two negatives
    x, t = torch.tensor([logits]), torch.tensor([q])
    sig = [1 / (1 + math.exp(-v)) for v in logits]
    # varifocal: positives weighted by q, negatives by alpha * p^gamma (gamma 2, alpha 0.75)
    want_v = [_bce(v, y) * (y if y > 0 else 0.75 * s ** 2) for v, y, s in zip(logits, q, sig, strict=True)]
    got_v = varifocal_elementwise(x, t, 2.0, None)[0].tolist()
    assert got_v == pytest.approx(want_v, rel=1e-5)
    assert want_v[0] == pytest.approx(0.8 * (-(0.8 * math.log(0.5) + 0.2 * math.log(0.5))), rel=1e-9)  # sanity
    # Ultralytics' reduced VarifocalLoss is the mean over dim 1, summed, of the same elements
    ul = VarifocalLoss(gamma=2.0, alpha=0.75)(x, t, (t > 0).float())
    assert float(ul) == pytest.approx(sum(want_v) / 4, rel=1e-5)
    # focal: BCE * (1 - p_t)^gamma * (y alpha + (1 - y)(1 - alpha)), p_t = y p + (1 - y)(1 - p)
    want_f = []
    for v, y, s in zip(logits, q, sig, strict=True):
        p_t = y * s + (1 - y) * (1 - s)
        want_f.append(_bce(v, y) * (1 - p_t) ** 1.5 * (y * 0.25 + (1 - y) * 0.75))
    assert focal_elementwise(x, t, 1.5, 0.25)[0].tolist() == pytest.approx(want_f, rel=1e-5)
    assert focal_elementwise(x, t, 0.0, None)[0].tolist() == pytest.approx([_bce(v, y) for v, y in zip(logits, q, strict=True)], rel=1e-6)


def test_bad_cls_loss_config_is_refused_with_field_and_range(tmp_path: Path) -> None:
    cfg = REPO_ROOT / "configs" / "test.yaml"
    ok = load_settings(cfg, env={}, overrides={"training": {"cls_loss": {"kind": "focal", "gamma": 2, "alpha": 0.25}}})
    assert ok.training.cls_loss.kind == "focal" and ok.training.cls_loss.gamma == 2.0
    assert load_settings(cfg, env={}).training.cls_loss.kind == "bce"  # off by default
    cases = {
        "gamma": (7.0, "less than or equal to 5"),
        "alpha": (1.5, "less than or equal to 1"),
        "cls_pw": (-0.1, "greater than or equal to 0"),
        "kind": ("ohem", "must be one of 'bce', 'focal' or 'varifocal'"),
    }
    for field, (value, allowed) in cases.items():
        with pytest.raises(ConfigError) as err:
            load_settings(cfg, env={}, overrides={"training": {"cls_loss": {field: value}}})
        assert f"training.cls_loss.{field}: " in str(err.value) and allowed in str(err.value)
    with pytest.raises(ConfigError, match=r"training\.cls_loss\.gamma: .*less than or equal to 5"):
        load_settings(cfg, env={"DETLOOP_TRAINING__CLS_LOSS__GAMMA": "9"})


def test_cls_loss_params_keep_the_default_hash_and_reach_the_worker_spec() -> None:
    from tasks.training import cls_loss_params, cls_loss_spec

    cfg = REPO_ROOT / "configs" / "test.yaml"
    plain = load_settings(cfg, env={}).training.cls_loss
    assert cls_loss_params(plain) == {} and cls_loss_spec(plain) == {}  # runs hashed before the option still reuse
    focal = load_settings(cfg, env={}, overrides={"training": {"cls_loss": {"kind": "focal", "cls_pw": 0.5}}})
    spec = cls_loss_spec(focal.training.cls_loss)
    assert spec == {"cls_loss": {"kind": "focal", "gamma": 1.5, "alpha": None}, "extra": {"cls_pw": 0.5}}
    assert cls_loss_params(focal.training.cls_loss)["cls_loss"] == "focal"


def test_the_warmup_bias_lr_is_ultralytics_default_unless_configured_and_joins_the_extra_arguments() -> None:
    from tasks.training import train_extra

    cfg = REPO_ROOT / "configs" / "test.yaml"
    plain = load_settings(cfg, env={})
    assert plain.training.warmup_bias_lr is None and train_extra(plain.training) == {}  # old run hashes still reuse
    focal = load_settings(cfg, env={}, overrides={"training": {"warmup_bias_lr": 0.0,
                                                               "cls_loss": {"kind": "focal", "cls_pw": 0.5}}})
    assert train_extra(focal.training)["extra"] == {"cls_pw": 0.5, "warmup_bias_lr": 0.0}
    with pytest.raises(ConfigError, match="warmup_bias_lr"):
        load_settings(cfg, env={"DETLOOP_TRAINING__WARMUP_BIAS_LR": "2"})


@pytest.mark.slow
def test_one_epoch_focal_training_through_the_worker(tmp_path: Path) -> None:
    """The real worker subprocess trains 1 epoch with the focal trainer; the checkpoint is a plain DetectionModel."""
    from detloop.offline import ensure_ultralytics_fonts, yolo_config_dir
    from detloop.synth_shapes import write_yolo_dataset
    from tasks.training import TrainSpec, run_worker, train_extra

    settings = load_settings(REPO_ROOT / "configs" / "test.yaml", env={},
                             overrides={"data_dir": str(tmp_path / "d"),
                                        "training": {"warmup_bias_lr": 0.0,
                                                     "cls_loss": {"kind": "focal", "gamma": 2.0, "alpha": 0.25}}})
    ensure_ultralytics_fonts(settings)
    data = write_yolo_dataset(tmp_path / "ds", settings.classes, n_train=6, n_val=2, size=96, r_range=(8, 20))
    spec = TrainSpec(data=str(data), model="yolo11n.yaml", pretrained=False, epochs=1, imgsz=96, batch=6, nbs=6,
                     optimizer="AdamW", lr0=0.002, workers=0, threads=min(2, os.cpu_count() or 1), device="cpu",
                     seed=0, out_dir=str(tmp_path / "run" / "ul"), yolo_config_dir=str(yolo_config_dir(settings)),
                     **train_extra(settings.training))
    result = run_worker(spec, 600, tmp_path / "train.log")
    args = (tmp_path / "run" / "ul" / "args.yaml").read_text()
    assert "warmup_bias_lr: 0.0" in args  # the extra arguments reach Ultralytics' trainer
    assert result["trainer"] == "FocalDetectionTrainer"
    assert json.loads((tmp_path / "run" / "ul" / "result.json").read_text())["best"] == result["best"]
    ckpt = torch.load(result["last"], map_location="cpu", weights_only=False)
    from ultralytics.nn.tasks import DetectionModel

    assert type(ckpt["model"]) is DetectionModel  # (final checkpoints: the EMA as "model") no tasks.cls_loss needed
    rows = (Path(result["results_csv"])).read_text().splitlines()
    assert len(rows) == 2 and "train/cls_loss" in rows[0]
