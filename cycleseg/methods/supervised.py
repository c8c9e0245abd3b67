"""Partial and Full: G_IS trained by cross-entropy (and --dice's soft Dice) on the labeled batch alone;
Partial on the labeled subset, Full on every label. No options of their own."""
from __future__ import annotations

from ..fastpath import Plan
from ..objective import supervised_objective
from ..steps import Optim, Step
from .base import Method


class SupervisedStep(Step):
    """Partial / Full: G_IS trained by cross-entropy on the labeled batch alone."""
    networks = ("G_IS",)

    def __init__(self, nets, plan: Plan, optim: Optim, num_classes: int, ignore_index: int, dice: float = 0.0):
        super().__init__(nets, plan, optim, num_classes, ignore_index, dice)
        self.loss = self.compiled(self._loss)

    def _loss(self, x, y):
        with self.autocast():
            return supervised_objective(self.train_nets["G_IS"], x, y, self.ignore_index, self.ops,
                                        self.num_classes, self.dice)

    def __call__(self, batch: dict) -> dict:
        loss, terms = self.loss(*self.inputs(batch))
        self._update("G", loss)
        self._lr_step()
        return terms


def build(nets, common: dict, options, run) -> SupervisedStep:
    return SupervisedStep(nets, **common)


METHODS = (
    Method("partial", "Partial", "G_IS on the labeled subset alone (the supervised baseline)", SupervisedStep, build,
           colour="#c83c28"),
    Method("full", "Full", "G_IS on 100 % of the labels (the upper bound)", SupervisedStep, build, colour="#5a5a5a",
           all_labels=True),
)
