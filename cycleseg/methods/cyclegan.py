"""The method (Mondal et al. 2019, objective.generator_objective / discriminator_objective): G_IS and G_SI
updated with the discriminators frozen, then D_S and D_I on real data and pooled fakes. Its options are
the objective's weights and schedule (their defaults: the --recipe, config.RECIPES) and the pools."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..fastpath import Plan
from ..objective import Lambdas, discriminator_objective, generator_objective, one_hot
from ..options import option
from ..pool import ImagePool
from ..steps import Optim, Step, sigmoid_rampup
from .base import Method

# Each pool's RNG seed is the run seed plus its offset (distinct from the streams' seeds).
POOL_SEED_OFFSETS = {"seg": 11, "img": 12}


@dataclass
class CycleGANOptions:
    """--mode semi. None: from the recipe (config.RECIPES)."""
    PREFIX: ClassVar[str] = ""
    lambda1: float | None = option(None, "weight of L_gen^I = MSE(G_SI(y), x)", check="weight")
    lambda2: float | None = option(None, "weight of L_cycle^S = CE(G_IS(G_SI(y)), y)", check="weight")
    lambda3: float | None = option(None, "weight of L_cycle^I = L1(G_SI(softmax G_IS(x')), x')", check="weight")
    lambda4: float | None = option(None, "weight of L_disc^S: G_IS fools D_S on unlabeled images (recipe tuned: "
                                   "0.01, 0.1 with --generator unet)", check="weight")
    lambda5: float | None = option(None, "weight of L_disc^I: G_SI fools D_I", check="weight")
    rampup: float | None = option(None, "fraction of the steps over which the terms that see unlabeled images (lambda3, "
                                  "lambda4) ramp up from 0 (sigmoid); 0 = none", check="fraction")
    hard_cycle: bool | None = option(None, "G_SI reads one-hot argmax masks of unlabeled images in L_cycle^I "
                                     "(straight-through gradient) instead of softmax probabilities")
    pool_size: int = option(50, "fakes kept in each discriminator's history pool (0: none)", check="pool")

    @property
    def lambdas(self) -> Lambdas:
        return Lambdas(self.lambda1, self.lambda2, self.lambda3, self.lambda4, self.lambda5)


class CycleGANStep(Step):
    """The method (objective.py): G_IS and G_SI updated with the discriminators frozen, then D_S and
    D_I updated on real data and pooled fakes."""
    networks = ("G_IS", "G_SI", "D_S", "D_I")
    streams = ("labeled", "unlabeled")

    def __init__(self, nets, plan: Plan, optim: Optim, num_classes: int, ignore_index: int, lambdas: Lambdas,
                 pool_size: int, seed: int, rampup_steps: int = 0, dice: float = 0.0, hard_cycle: bool = False,
                 merge_discriminators: bool = True):
        super().__init__(nets, plan, optim, num_classes, ignore_index, dice)
        self.lambdas, self.hard_cycle, self.rampup_steps = lambdas, hard_cycle, rampup_steps
        # batch norm in a discriminator mixes real and fake images: one call each then
        self.merge_discriminators = plan.merge_passes and merge_discriminators
        self.pools = {k: ImagePool(pool_size, seed + off) for k, off in POOL_SEED_OFFSETS.items()}
        self.ramp = torch.ones((), device=self.device)
        self.generator_loss = self.compiled(self._generator_loss)
        self.discriminator_loss = self.compiled(self._discriminator_loss)

    def learning_rates(self, optim: Optim) -> dict:
        return {"G": optim.lr, "D": optim.lr_d, **({"S": optim.lr_d} if optim.kind == "sgd" else {})}

    def optimizers_for(self, lrs: dict) -> dict:
        """Adam: one optimizer "G" for both generators. SGD: "G" for G_IS, "S" (Adam) for G_SI."""
        n, chain = self.nets, itertools.chain
        disc = {"D": self.adam(chain(n["D_S"].parameters(), n["D_I"].parameters()), lrs["D"])}
        if "S" in lrs:
            return {"G": self.segmenter_optimizer(n["G_IS"].parameters(), lrs["G"]),
                    "S": self.adam(n["G_SI"].parameters(), lrs["S"]), **disc}
        return {"G": self.adam(chain(n["G_IS"].parameters(), n["G_SI"].parameters()), lrs["G"]), **disc}

    def _generator_loss(self, x, y, x_unl, ramp):
        n, t = self.nets, self.train_nets                           # discriminators frozen: called plain
        with self.autocast():
            return generator_objective(t["G_IS"], t["G_SI"], n["D_S"], n["D_I"], x, y, x_unl, self.num_classes,
                                       self.lambdas, self.ignore_index, self.ops, self.merge, ramp,
                                       self.dice, self.hard_cycle)

    def _discriminator_loss(self, y, fake_seg, x_unl, fake_img):
        n = self.train_nets
        real_seg = one_hot(y, self.num_classes, self.ignore_index, x_unl.dtype)
        with self.autocast():
            return discriminator_objective(n["D_S"], n["D_I"], real_seg, fake_seg, x_unl, fake_img, self.ops,
                                           self.merge_discriminators)

    def __call__(self, batch: dict) -> dict:
        n = self.nets
        x, y = self.inputs(batch)                                   # (B, C, H, W), (B, H, W)
        x_unl = self.image(batch["unlabeled"])                      # (B, C, H, W)

        # 1. generator update, discriminators frozen. The ramp-up weight of the unlabeled terms is a device
        # scalar (an input of a compiled step, filled in place: no host-to-device copy)
        with self.frozen(n["D_S"], n["D_I"]):
            self.ramp.fill_(sigmoid_rampup(self.steps_done(), self.rampup_steps))
            loss_g, terms, fakes = self.generator_loss(x, y, x_unl, self.ramp)
            self._update(tuple(k for k in ("G", "S") if k in self.optimizers), loss_g)

        # 2. discriminator update: real masks / unlabeled images against pooled fakes
        pooled = {k: self.layout(self.pools[k].query(fakes[k])) for k in ("seg", "img")}
        loss_d, d_terms = self.discriminator_loss(y, pooled["seg"], x_unl, pooled["img"])
        self._update("D", loss_d)
        self._lr_step()
        return {**terms, **d_terms}


def build(nets, common: dict, options: CycleGANOptions, run) -> CycleGANStep:
    return CycleGANStep(nets, **common, lambdas=options.lambdas, pool_size=options.pool_size, seed=run.seed,
                        rampup_steps=round(options.rampup * run.steps), hard_cycle=options.hard_cycle,
                        merge_discriminators=run.disc_norm != "batch")


METHODS = (Method("semi", "Ours (semi)", "the CycleGAN objective (the method)", CycleGANStep, build, CycleGANOptions,
                  colour="#285ac8"),)
