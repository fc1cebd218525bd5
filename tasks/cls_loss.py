"""Imbalance-aware classification losses for Ultralytics detection training (issue 19): focal and varifocal.

Plugged in by subclassing, not forking: :class:`ImbalanceDetectionLoss` is Ultralytics' ``v8DetectionLoss`` whose
``self.bce`` (called as ``bce(pred_logits, target_scores)`` and expected to return the ELEMENT-WISE ``(B, A, C)``
loss, which the detection loss then weights by ``cls_pw`` class weights, sums and divides by the target-score sum)
is replaced by :class:`ElementwiseClsLoss`. :class:`ImbalanceDetectionModel` builds that criterion (wrapped in
``E2ELoss`` for NMS-free heads such as YOLO26, exactly as ``DetectionModel.init_criterion`` decides), and the
trainer built by :func:`trainer_for` builds that model. Checkpoints are written as plain ``DetectionModel`` so
nothing that loads a ``.pt`` (export, scoring, evaluation) depends on this module.

This module imports torch and Ultralytics at import time (its classes subclass theirs): only the training worker
subprocess and tests import it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils import RANK
from ultralytics.utils.loss import E2ELoss, v8DetectionLoss

VARIFOCAL_DEFAULT_ALPHA = 0.75  # Zhang et al. 2021 (and Ultralytics' VarifocalLoss default)


def focal_elementwise(pred: torch.Tensor, target: torch.Tensor, gamma: float, alpha: float | None) -> torch.Tensor:
    """Focal loss per element, on logits, with soft targets (Ultralytics' ``FocalLoss`` without its reduction).

    ``BCE(pred, y) * (1 - p_t)^gamma * a_t`` with ``p = sigmoid(pred)``, ``p_t = y p + (1 - y)(1 - p)`` and
    ``a_t = y alpha + (1 - y)(1 - alpha)`` (1 when ``alpha`` is None). gamma 0 and no alpha give the plain BCE.

    Args:
        pred: logits, any shape (here ``(B, A, C)``).
        target: targets in [0, 1], same shape (the assigner's IoU-aware scores).
        gamma: focusing exponent >= 0.
        alpha: weight of the target term in [0, 1], or None.

    Returns:
        The element-wise loss, same shape as ``pred``, float32.
    """
    pred, target = pred.float(), target.float()
    loss = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
    if gamma:
        p = pred.sigmoid()
        p_t = target * p + (1 - target) * (1 - p)
        loss = loss * (1.0 - p_t).pow(gamma)
    if alpha is not None:
        loss = loss * (target * alpha + (1 - target) * (1 - alpha))
    return loss


def varifocal_elementwise(pred: torch.Tensor, target: torch.Tensor, gamma: float, alpha: float | None) -> torch.Tensor:
    """Varifocal loss per element (Zhang et al. 2021), on logits, with IoU-aware soft targets q.

    ``BCE(pred, q) * w`` with ``w = q`` where ``q > 0`` (positives weighted by their quality) and
    ``w = alpha * p^gamma`` where ``q == 0`` (negatives down-weighted by their own score), as Ultralytics'
    ``VarifocalLoss`` weights them (without its mean/sum reduction).

    Args:
        pred: logits, any shape.
        target: soft targets q in [0, 1], same shape.
        gamma: exponent of the negatives' weight.
        alpha: weight of negatives; None: 0.75.

    Returns:
        The element-wise loss, same shape as ``pred``, float32.
    """
    pred, target = pred.float(), target.float()
    a = VARIFOCAL_DEFAULT_ALPHA if alpha is None else alpha
    label = (target > 0).float()
    weight = a * pred.sigmoid().pow(gamma) * (1 - label) + target * label
    return F.binary_cross_entropy_with_logits(pred, target, reduction="none") * weight


class ElementwiseClsLoss(torch.nn.Module):
    """Drop-in for ``v8DetectionLoss.bce`` (``BCEWithLogitsLoss(reduction="none")``): element-wise focal/varifocal."""

    def __init__(self, kind: str, gamma: float, alpha: float | None):
        super().__init__()
        if kind not in ("focal", "varifocal"):
            raise ValueError(f"cls loss kind must be focal or varifocal, got {kind!r}")
        self.kind, self.gamma, self.alpha = kind, float(gamma), alpha

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        fn = focal_elementwise if self.kind == "focal" else varifocal_elementwise
        return fn(pred, target, self.gamma, self.alpha).to(pred.dtype)


class ImbalanceDetectionLoss(v8DetectionLoss):
    """``v8DetectionLoss`` with a focal / varifocal classification term (config from ``model.cls_loss_cfg``)."""

    def __init__(self, model: torch.nn.Module, tal_topk: int = 10, tal_topk2: int | None = None):
        super().__init__(model, tal_topk=tal_topk, tal_topk2=tal_topk2)
        cfg = model.cls_loss_cfg
        self.bce = ElementwiseClsLoss(cfg["kind"], cfg["gamma"], cfg.get("alpha"))


class ImbalanceDetectionModel(DetectionModel):
    """``DetectionModel`` whose criterion uses :class:`ImbalanceDetectionLoss` (``cls_loss_cfg`` set by the trainer)."""

    cls_loss_cfg: dict[str, Any]

    def init_criterion(self) -> Any:
        base = super().init_criterion()  # Ultralytics decides one-to-many vs end-to-end
        if isinstance(base, E2ELoss):
            return E2ELoss(self, loss_fn=ImbalanceDetectionLoss)
        return ImbalanceDetectionLoss(self)


class ImbalanceDetectionTrainer(DetectionTrainer):
    """``DetectionTrainer`` building :class:`ImbalanceDetectionModel`; use :func:`trainer_for` to set the config."""

    cls_loss_cfg: ClassVar[dict[str, Any]] = {}

    def get_model(self, cfg: Any = None, weights: Any = None, verbose: bool = True) -> DetectionModel:
        model = self.set_model_names_for_load(
            ImbalanceDetectionModel(cfg, nc=self.data["nc"], ch=self.data["channels"], verbose=verbose and RANK == -1)
        )
        model.cls_loss_cfg = dict(self.cls_loss_cfg)
        if weights:
            model.load(weights)
        return model

    def save_model(self) -> Any:
        """Write checkpoints whose model is a plain ``DetectionModel`` (loadable without this module)."""
        ema = self.ema.ema
        cls = type(ema)
        if issubclass(cls, ImbalanceDetectionModel):
            ema.__class__ = DetectionModel
        try:
            return super().save_model()
        finally:
            ema.__class__ = cls


def trainer_for(kind: str, gamma: float, alpha: float | None) -> type[ImbalanceDetectionTrainer]:
    """A trainer class (pass as ``YOLO.train(trainer=...)``) training with the given classification loss."""
    cfg = {"kind": kind, "gamma": float(gamma), "alpha": None if alpha is None else float(alpha)}
    ElementwiseClsLoss(kind, gamma, alpha)  # refuse an unknown kind here, not mid-training
    return type(f"{kind.capitalize()}DetectionTrainer", (ImbalanceDetectionTrainer,), {"cls_loss_cfg": cfg})
