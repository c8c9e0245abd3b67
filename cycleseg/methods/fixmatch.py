"""Weak-to-strong consistency (FixMatch, Sohn et al. 2020), as UniMatch's FixMatch baseline: G_IS's
confident predictions on the unlabeled batch (the weak view) supervise it on a strongly perturbed,
CutMixed view of the same images (views.strong_view, objective.fixmatch_objective)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..fastpath import Plan
from ..models import mixes_batch
from ..objective import fixmatch_objective
from ..options import option
from ..steps import Optim, Step, sigmoid_rampup
from ..views import strong_view
from .base import Method


@dataclass
class FixMatchOptions:
    """--mode fixmatch (flags --fm-*), UniMatch's FixMatch baseline."""
    PREFIX: ClassVar[str] = "fm"
    threshold: float = option(0.95, "confidence above which a weak-view prediction is a pseudo-label", check="fraction")
    weight: float = option(1.0, "weight of the strong-view term (UniMatch's ACDC ratio to its (CE + Dice) / 2 "
                           "supervised term: --dice 1 --fm-weight 2)", check="weight")
    cutmix: float = option(0.5, "probability of a CutMix box in each strong view", check="fraction")
    loss: str = option("dice", "the strong-view term: dice (UniMatch's medical recipe, ACDC) or ce (its "
                       "natural-image one)", choices=("dice", "ce"))
    rampup: float = option(0.0, "fraction of the run over which the strong-view weight ramps up (sigmoid, as Mean "
                           "Teacher's); UniMatch: 0", check="fraction")


class FixMatchStep(Step):
    """Weak-to-strong consistency: G_IS's confident predictions on the unlabeled batch (the weak view)
    supervise it on a strongly perturbed, CutMixed view of the same images (views.strong_view;
    objective.fixmatch_objective); UniMatch's FixMatch baseline, confidence threshold 0.95, the strong-view
    term a soft Dice (its ACDC recipe) or a cross-entropy (its natural-image one), at full weight from the
    first step (UniMatch) or ramped up over `rampup_steps` (sigmoid, as Mean Teacher's)."""
    networks = ("G_IS",)
    streams = ("labeled", "unlabeled")

    def __init__(self, nets, plan: Plan, optim: Optim, num_classes: int, ignore_index: int, threshold: float,
                 weight: float, cutmix: float, unlabeled_loss: str = "dice", dice: float = 0.0, rampup_steps: int = 0):
        super().__init__(nets, plan, optim, num_classes, ignore_index, dice)
        self.threshold, self.cutmix, self.unlabeled_loss = threshold, cutmix, unlabeled_loss
        self.full_weight, self.rampup_steps = weight, rampup_steps
        self.strong_apart = mixes_batch(nets["G_IS"])              # BatchNorm: UniMatch's two calls
        self.weight = torch.zeros((), device=self.device)            # a step input, filled in place
        self.loss = self.compiled(self._loss)

    def _loss(self, x, y, x_weak, x_strong, box, weight):
        with self.autocast():
            return fixmatch_objective(self.train_nets["G_IS"], x, y, x_weak, x_strong, box, self.num_classes,
                                      self.ignore_index, self.threshold, weight, self.ops,
                                      self.merge, self.dice, self.unlabeled_loss, self.strong_apart)

    def __call__(self, batch: dict) -> dict:
        x, y = self.inputs(batch)
        x_weak = self.image(batch["unlabeled"])
        x_strong, box = strong_view(x_weak, self.cutmix)
        self.weight.fill_(self.full_weight * sigmoid_rampup(self.steps_done(), self.rampup_steps))
        loss, terms = self.loss(x, y, x_weak, self.layout(x_strong), box, self.weight)
        self._update("G", loss)
        self._lr_step()
        return terms


def build(nets, common: dict, options: FixMatchOptions, run) -> FixMatchStep:
    return FixMatchStep(nets, **common, threshold=options.threshold, weight=options.weight, cutmix=options.cutmix,
                        unlabeled_loss=options.loss, rampup_steps=round(options.rampup * run.steps))


METHODS = (Method("fixmatch", "FixMatch (weak-to-strong)", "weak-to-strong consistency, as UniMatch's FixMatch",
                  FixMatchStep, build, FixMatchOptions, colour="#963caa"),)
