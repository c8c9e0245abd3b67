"""Hung et al. (2018), "Adversarial learning for semi-supervised semantic segmentation", the paper's
comparison row: G_IS against a fully convolutional discriminator D_H on its softmax
(objective.adversarial_objective), self-training on confident unlabeled pixels. Options: their published
weights and schedule."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..fastpath import Plan
from ..objective import HungWeights, adversarial_discriminator_objective, adversarial_objective, one_hot
from ..options import option
from ..steps import Optim, Step
from .base import Method


@dataclass
class AdversarialOptions:
    """--mode adversarial (flags --adv-*)."""
    PREFIX: ClassVar[str] = "adv"
    lambda_: float = option(0.01, "weight of the adversarial term on labeled predictions", check="weight")
    semi_lambda: float = option(0.001, "weight of the adversarial term on unlabeled predictions", check="weight")
    self_training: float = option(0.1, "weight of self-training on confident unlabeled pixels", check="weight")
    threshold: float = option(0.2, "D's confidence above which an unlabeled pixel is a pseudo-label",
                              check="fraction")
    start: float = option(0.25, "fraction of the run after which self-training starts (their 5000 of 20000)",
                          check="fraction")
    lr_d_scale: float = option(0.4, "D's learning rate as a share of --lr (their 1e-4 against 2.5e-4)",
                               check="share")
    beta1_d: float = option(0.9, "D's Adam beta1", check="below_one")
    beta2_d: float = option(0.99, "D's Adam beta2", check="below_one")


@dataclass(frozen=True)
class Hung:
    """Hung et al.'s settings beside their objective's weights: when self-training starts (a fraction of
    the run) and D_H's Adam (its rate as a share of the segmenter's, its betas)."""
    weights: HungWeights
    start: float
    lr_d_scale: float
    betas_d: tuple


class AdversarialStep(Step):
    """Hung et al. (2018), the paper's comparison row: G_IS with a fully convolutional discriminator D_H
    on its softmax (objective.adversarial_objective), self-training on confident unlabeled pixels from
    `hung.start` of the run on. G_IS's optimizer is every arm's."""
    networks = ("G_IS", "D_H")
    streams = ("labeled", "unlabeled")

    def __init__(self, nets, plan: Plan, optim: Optim, num_classes: int, ignore_index: int, hung: Hung,
                 dice: float = 0.0):
        self.hung = hung                                            # read by the optimizer hooks
        super().__init__(nets, plan, optim, num_classes, ignore_index, dice)
        self.self_training = torch.zeros((), device=self.device)
        self.generator_loss = self.compiled(self._generator_loss)
        self.discriminator_loss = self.compiled(self._discriminator_loss)

    def learning_rates(self, optim: Optim) -> dict:
        adam_lr = optim.lr_d if optim.kind == "sgd" else optim.lr        # D_H is trained by Adam either way
        return {"G": optim.lr, "D": self.hung.lr_d_scale * adam_lr}

    def optimizers_for(self, lrs: dict) -> dict:
        return {"G": self.segmenter_optimizer(self.nets["G_IS"].parameters(), lrs["G"]),
                "D": self.adam(self.nets["D_H"].parameters(), lrs["D"], betas=self.hung.betas_d)}

    def _generator_loss(self, x, y, x_unl, self_training):
        with self.autocast():
            return adversarial_objective(self.train_nets["G_IS"], self.nets["D_H"], x, y, x_unl, self.num_classes,
                                         self.ignore_index, self.hung.weights, self.ops, self_training, self.dice)

    def _discriminator_loss(self, y, fake_labeled, fake_unlabeled):
        real = self.layout(one_hot(y, self.num_classes, self.ignore_index, fake_labeled.dtype))
        with self.autocast():
            return adversarial_discriminator_objective(self.train_nets["D_H"], real, fake_labeled, fake_unlabeled,
                                                       y != self.ignore_index)

    def __call__(self, batch: dict) -> dict:
        x, y = self.inputs(batch)
        x_unl = self.image(batch["unlabeled"])

        # 1. segmenter update, D_H frozen
        with self.frozen(self.nets["D_H"]):
            self.self_training.fill_(float(self.steps_done() >= self.hung.start * self.optim.steps))
            loss, terms, fakes = self.generator_loss(x, y, x_unl, self.self_training)
            self._update("G", loss)

        # 2. D_H update: one-hot ground truth against the segmenter's softmax maps
        loss_d, d_terms = self.discriminator_loss(y, fakes["labeled"], fakes["unlabeled"])
        self._update("D", loss_d)
        self._lr_step()
        return {**terms, **d_terms}


def build(nets, common: dict, options: AdversarialOptions, run) -> AdversarialStep:
    weights = HungWeights(adv=options.lambda_, semi_adv=options.semi_lambda, self_training=options.self_training,
                          threshold=options.threshold)
    hung = Hung(weights, start=options.start, lr_d_scale=options.lr_d_scale, betas_d=(options.beta1_d, options.beta2_d))
    return AdversarialStep(nets, **common, hung=hung)


METHODS = (Method("adversarial", "Hung et al.", "Hung et al. (2018), the paper's comparison", AdversarialStep, build,
                  AdversarialOptions, colour="#c88c14", min_side=32),)       # Hung's discriminator halves 5 times
