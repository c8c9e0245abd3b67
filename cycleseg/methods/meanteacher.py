"""Mean Teacher (Tarvainen & Valpola 2017), as SSL4MIS's train_mean_teacher_2D.py trains it: G_IS (the
student) learns from the labeled batch and from agreeing with an EMA of itself (the teacher) on noisy
unlabeled images (objective.mean_teacher_objective)."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..fastpath import Plan
from ..objective import mean_teacher_objective
from ..options import option
from ..steps import Optim, Step, sigmoid_rampup
from .base import Method


@dataclass
class MeanTeacherOptions:
    """--mode meanteacher (flags --mt-*), SSL4MIS's train_mean_teacher_2D.py."""
    PREFIX: ClassVar[str] = "mt"
    consistency: float = option(0.1, "weight of the consistency term at the end of the ramp-up (SSL4MIS's 0.1 against "
                                "its (CE + Dice) / 2: --dice 1 --mt-consistency 0.2)", check="weight")
    ema: float = option(0.99, "EMA decay of the teacher", check="fraction")
    noise: float = option(0.2, "std of the teacher's input noise on images in [-1, 1] (SSL4MIS's 0.1 on [0, 1]), "
                          "clipped at twice it", check="image_std")
    rampup: float = option(1.0, "fraction of the run over which the weight ramps up (sigmoid; SSL4MIS: the whole run)",
                           check="fraction")
    start: float = option(0.033, "fraction of the run without the consistency term (SSL4MIS: 1000 of 30000 "
                          "iterations)", check="fraction")


class MeanTeacherStep(Step):
    """Mean Teacher: G_IS (the student) learns from the labeled batch and from agreeing with an EMA of
    itself (the teacher) on noisy unlabeled images (objective.mean_teacher_objective). As SSL4MIS's
    train_mean_teacher_2D.py: noise N(0, 0.1) clipped to +-0.2 (on images in [0, 1]; x2 on ours in
    [-1, 1]), weight 0.1 x a sigmoid ramp-up over `rampup_steps`, none before `start_steps`, EMA decay
    min(1 - 1 / (t + 1), 0.99). The teacher is part of the step's state (checkpointed)."""
    networks = ("G_IS",)
    streams = ("labeled", "unlabeled")

    def __init__(self, nets, plan: Plan, optim: Optim, num_classes: int, ignore_index: int, consistency: float,
                 ema_decay: float, noise: float, rampup_steps: int, start_steps: int, dice: float = 0.0):
        super().__init__(nets, plan, optim, num_classes, ignore_index, dice)
        self.consistency, self.ema_decay, self.noise = consistency, ema_decay, noise
        self.rampup_steps, self.start_steps = rampup_steps, start_steps
        ops_modules = {id(m.ops): m.ops for m in nets["G_IS"].modules() if hasattr(m, "ops")}   # shared, not copied
        self.teacher = copy.deepcopy(nets["G_IS"], memo=ops_modules).requires_grad_(False)
        self.weight = torch.zeros((), device=self.device)
        self.loss = self.compiled(self._loss)

    def _loss(self, x, y, x_unl, noise, weight):
        with self.autocast():
            return mean_teacher_objective(self.train_nets["G_IS"], self.teacher, x, y, x_unl, noise, self.num_classes,
                                          self.ignore_index, weight, self.ops, self.merge, self.dice)

    @torch.no_grad()
    def _ema(self) -> None:
        alpha = min(1 - 1 / (self.steps_done() + 1), self.ema_decay)   # the true average while it is better
        teacher, student = list(self.teacher.parameters()), list(self.nets["G_IS"].parameters())
        torch._foreach_mul_(teacher, alpha)
        torch._foreach_add_(teacher, student, alpha=1 - alpha)

    def __call__(self, batch: dict) -> dict:
        x, y = self.inputs(batch)
        x_unl = self.image(batch["unlabeled"])
        noise = (torch.randn_like(x_unl) * self.noise).clamp(-2 * self.noise, 2 * self.noise)
        t = self.steps_done()
        self.weight.fill_(self.consistency * sigmoid_rampup(t, self.rampup_steps) if t >= self.start_steps else 0.0)
        loss, terms = self.loss(x, y, x_unl, noise, self.weight)
        self._update("G", loss)
        self._ema()
        self._lr_step()
        return terms

    def state_dict(self) -> dict:
        return {**super().state_dict(), "teacher": self.teacher.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.teacher.load_state_dict(state["teacher"])


def build(nets, common: dict, options: MeanTeacherOptions, run) -> MeanTeacherStep:
    return MeanTeacherStep(nets, **common, consistency=options.consistency, ema_decay=options.ema, noise=options.noise,
                           rampup_steps=round(options.rampup * run.steps), start_steps=round(options.start * run.steps))


METHODS = (Method("meanteacher", "Mean Teacher", "Mean Teacher, as SSL4MIS trains it", MeanTeacherStep, build,
                  MeanTeacherOptions, colour="#1e963c"),)
