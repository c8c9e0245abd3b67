"""One training step per method, each a small object built from the networks and the config that owns
its optimizers, LR schedulers and history pools:

    SupervisedStep   Partial / Full: G_IS alone, cross-entropy on the labeled batch
    CycleGANStep     the method: one generator update, then one discriminator update

    step = STEPS[cfg.mode](nets, cfg, meta, plan)
    terms = step(batch)          # batch: {"images", "masks"[, "unlabeled"]} uint8 on the device

`plan` (fastpath.py) says how the step runs: which ops, merged network calls, fused Adam, autocast,
channels_last, torch.compile of each update's loss (forward and backward). `terms` are detached device
tensors (no host sync). A new method is one more class and one more entry in STEPS; `networks` says
which networks it trains, `streams` which batches it reads.
"""
from __future__ import annotations

import contextlib
import itertools
import math

import torch

from .data.pixels import to_input
from .fastpath import Plan
from .objective import (adversarial_discriminator_objective, adversarial_objective, discriminator_objective,
                        generator_objective, one_hot, supervised_objective)
from .pool import ImagePool

# Each pool's RNG seed is the run seed plus its offset (distinct from the streams' seeds).
POOL_SEED_OFFSETS = {"seg": 11, "img": 12}


def sigmoid_rampup(step: int, length: int) -> float:
    """exp(-5 (1 - t)^2), t = step / length clipped to [0, 1] (Laine & Aila 2017; SSL4MIS's ramp-up):
    ~0.007 at the start, 1 from `length` on; 1 throughout when length is 0."""
    if length <= 0:
        return 1.0
    t = min(max(step / length, 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


class LinearDecay:
    """LR factor: 1 for the first quarter of the steps, then linear decay to 0 at the last step."""

    def __init__(self, steps: int):
        self.steps, self.start = steps, steps // 4

    def __call__(self, step: int) -> float:
        if step < self.start:
            return 1.0
        return max(0.0, 1.0 - (step - self.start) / max(1, self.steps - self.start))


class Step:
    """What every step shares: the plan's execution choices, optimizers with their LR schedules, pools,
    (de)serialisation."""
    networks: tuple = ()
    streams: tuple = ("labeled",)
    lr_fields = {"G": "lr"}         # the config field each optimizer's learning rate follows

    def __init__(self, nets: dict, cfg, meta, plan: Plan = Plan()):
        self.nets, self.cfg, self.meta, self.plan = nets, cfg, meta, plan
        # The networks as each update trains them: the plain modules, or their DistributedDataParallel
        # wrappers under torchrun (distribute()). A network that an update only reads (frozen) is called
        # plain, so that its wrapper sees one forward per backward of its own update.
        self.train_nets = dict(nets)
        self.ops = plan.ops()
        self.device = next(next(iter(nets.values())).parameters()).device
        self.optimizers: dict = {}
        self.pools: dict = {}

    def adam(self, params, lr: float | None = None, betas: tuple | None = None) -> torch.optim.Adam:
        extra = {"fused": True} if self.plan.fused_adam else {}
        return torch.optim.Adam(params, self.cfg.lr if lr is None else lr, betas=betas or (self.cfg.beta1, 0.999),
                                **extra)

    def autocast(self):
        if self.plan.autocast:
            return torch.autocast(self.device.type, dtype=getattr(torch, self.plan.autocast))
        return contextlib.nullcontext()

    def compiled(self, fn):
        """fn compiled as one graph (forward, and its backward through AOTAutograd) when the plan says so."""
        if not self.plan.compile:
            return fn
        return torch.compile(fn, fullgraph=True, dynamic=False, backend=self.plan.compile_backend)

    def distribute(self, wrap) -> None:
        """Train through wrap(module) (DistributedDataParallel) from now on."""
        self.train_nets = {k: wrap(v) for k, v in self.nets.items()}

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """x in the plan's memory format."""
        return x.contiguous(memory_format=torch.channels_last) if self.plan.channels_last else x

    def image(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> network input in [-1, 1], in the plan's memory format."""
        return self.layout(to_input(images))

    def _schedule(self) -> None:
        self.schedulers = {k: torch.optim.lr_scheduler.LambdaLR(o, LinearDecay(self.cfg.steps))
                           for k, o in self.optimizers.items()}

    def _lr_step(self) -> None:
        for s in self.schedulers.values():
            s.step()

    def lr(self) -> float:
        return self.schedulers["G"].get_last_lr()[0]

    def inputs(self, batch: dict):
        """(x (B, C, H, W) float in [-1, 1], y (B, H, W) uint8) of the labeled batch."""
        return self.image(batch["images"]), batch["masks"]

    def state_dict(self) -> dict:
        """Optimizers and schedulers (the same on every process of a distributed run)."""
        return {"optimizers": {k: v.state_dict() for k, v in self.optimizers.items()},
                "schedulers": {k: v.state_dict() for k, v in self.schedulers.items()}}

    def load_state_dict(self, state: dict) -> None:
        for group in ("optimizers", "schedulers"):
            for k, obj in getattr(self, group).items():
                obj.load_state_dict(state[group][k])

    def pool_state(self) -> dict:
        """The history pools (each process of a distributed run has its own)."""
        return {k: v.state_dict() for k, v in self.pools.items()}

    def load_pool_state(self, state: dict) -> None:
        for k, pool in self.pools.items():
            pool.load_state_dict(state[k])

    def reschedule(self, steps: int, lr_scale: dict) -> None:
        """A resumed run's new --steps and learning rates ({optimizer: factor on its rate}), from now on:
        the linear decay is redrawn over `steps` (the checkpoint restored the old one) and each rate is
        set for the current step."""
        for k, sched in self.schedulers.items():
            sched.base_lrs = [b * lr_scale.get(k, 1.0) for b in sched.base_lrs]
            sched.lr_lambdas = [LinearDecay(steps) for _ in sched.lr_lambdas]
            for group, base, decay in zip(sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
                group["initial_lr"] = base
                group["lr"] = base * decay(sched.last_epoch)
            sched._last_lr = [g["lr"] for g in sched.optimizer.param_groups]

    def steps_done(self) -> int:
        """Updates made so far (the LR schedulers count them, and they are checkpointed)."""
        return self.schedulers["G"].last_epoch


class SupervisedStep(Step):
    """Partial / Full: G_IS trained by cross-entropy on the labeled batch alone."""
    networks = ("G_IS",)

    def __init__(self, nets, cfg, meta, plan: Plan = Plan()):
        super().__init__(nets, cfg, meta, plan)
        self.optimizers = {"G": self.adam(nets["G_IS"].parameters())}
        self._schedule()
        self.loss = self.compiled(self._loss)

    def _loss(self, x, y):
        with self.autocast():
            return supervised_objective(self.train_nets["G_IS"], x, y, self.meta.ignore_index, self.ops,
                                        self.meta.num_classes, self.cfg.dice)

    def __call__(self, batch: dict) -> dict:
        loss, terms = self.loss(*self.inputs(batch))
        self.optimizers["G"].zero_grad(set_to_none=True)
        loss.backward()
        self.optimizers["G"].step()
        self._lr_step()
        return terms


class CycleGANStep(Step):
    """The method (objective.py): G_IS and G_SI updated with the discriminators frozen, then D_S and
    D_I updated on real data and pooled fakes."""
    networks = ("G_IS", "G_SI", "D_S", "D_I")
    streams = ("labeled", "unlabeled")
    lr_fields = {"G": "lr", "D": "lr_d"}

    def __init__(self, nets, cfg, meta, plan: Plan = Plan()):
        super().__init__(nets, cfg, meta, plan)
        chain = itertools.chain
        self.optimizers = {"G": self.adam(chain(nets["G_IS"].parameters(), nets["G_SI"].parameters())),
                           "D": self.adam(chain(nets["D_S"].parameters(), nets["D_I"].parameters()), cfg.lr_d)}
        self.pools = {k: ImagePool(cfg.pool_size, cfg.seed + off) for k, off in POOL_SEED_OFFSETS.items()}
        self._schedule()
        self.ramp = torch.ones((), device=self.device)
        self.generator_loss = self.compiled(self._generator_loss)
        self.discriminator_loss = self.compiled(self._discriminator_loss)

    def _generator_loss(self, x, y, x_unl, ramp):
        n, t = self.nets, self.train_nets                           # discriminators frozen: called plain
        with self.autocast():
            return generator_objective(t["G_IS"], t["G_SI"], n["D_S"], n["D_I"], x, y, x_unl, self.meta.num_classes,
                                       self.cfg.lambdas, self.meta.ignore_index, self.ops, self.plan.merge_passes,
                                       ramp, self.cfg.dice, self.cfg.hard_cycle)

    def _discriminator_loss(self, y, fake_seg, x_unl, fake_img):
        n, k, ign = self.train_nets, self.meta.num_classes, self.meta.ignore_index
        merge = self.plan.merge_passes and self.cfg.disc_norm != "batch"   # batch norm mixes real and fake
        real_seg = one_hot(y, k, ign, x_unl.dtype)
        with self.autocast():
            return discriminator_objective(n["D_S"], n["D_I"], real_seg, fake_seg, x_unl, fake_img, self.ops, merge)

    def __call__(self, batch: dict) -> dict:
        n = self.nets
        x, y = self.inputs(batch)                                   # (B, C, H, W), (B, H, W)
        x_unl = self.image(batch["unlabeled"])                      # (B, C, H, W)
        discriminators = (n["D_S"], n["D_I"])

        # 1. generator update, discriminators frozen
        for d in discriminators:
            d.requires_grad_(False)
        # the ramp-up weight of the unlabeled terms: a device scalar (an input of a compiled step, and filled
        # in place: no host-to-device copy)
        self.ramp.fill_(sigmoid_rampup(self.steps_done(), round(self.cfg.rampup * self.cfg.steps)))
        loss_g, terms, fakes = self.generator_loss(x, y, x_unl, self.ramp)
        self.optimizers["G"].zero_grad(set_to_none=True)
        loss_g.backward()
        self.optimizers["G"].step()
        for d in discriminators:
            d.requires_grad_(True)

        # 2. discriminator update: real masks / unlabeled images against pooled fakes
        pooled = {k: self.layout(self.pools[k].query(fakes[k])) for k in ("seg", "img")}
        loss_d, d_terms = self.discriminator_loss(y, pooled["seg"], x_unl, pooled["img"])
        self.optimizers["D"].zero_grad(set_to_none=True)
        loss_d.backward()
        self.optimizers["D"].step()
        self._lr_step()
        return {**terms, **d_terms}


class AdversarialStep(Step):
    """Hung et al. (2018), the paper's comparison row: G_IS with a fully convolutional discriminator D_H
    on its softmax (objective.adversarial_objective), self-training on confident unlabeled pixels from a
    quarter of the run on (their 5000 of 20000 iterations). Their weights: 0.01 adversarial on labeled,
    0.001 on unlabeled, 0.1 self-training, confidence threshold 0.2; D_H: Adam, betas (0.9, 0.99), at
    0.4 x the segmenter's learning rate (their 1e-4 against 2.5e-4). G_IS's optimizer is every arm's."""
    networks = ("G_IS", "D_H")
    streams = ("labeled", "unlabeled")
    lr_fields = {"G": "lr", "D": "lr"}                          # D_H runs at 0.4 x --lr
    SELF_TRAINING_START = 0.25

    def __init__(self, nets, cfg, meta, plan: Plan = Plan()):
        super().__init__(nets, cfg, meta, plan)
        self.optimizers = {"G": self.adam(nets["G_IS"].parameters()),
                           "D": self.adam(nets["D_H"].parameters(), 0.4 * cfg.lr, betas=(0.9, 0.99))}
        self._schedule()
        self.self_training = torch.zeros((), device=self.device)
        self.generator_loss = self.compiled(self._generator_loss)
        self.discriminator_loss = self.compiled(self._discriminator_loss)

    def _generator_loss(self, x, y, x_unl, self_training):
        with self.autocast():
            return adversarial_objective(self.train_nets["G_IS"], self.nets["D_H"], x, y, x_unl, self.meta.num_classes,
                                         self.meta.ignore_index, self.ops, self_training=self_training,
                                         dice=self.cfg.dice)

    def _discriminator_loss(self, y, fake_labeled, fake_unlabeled):
        real = self.layout(one_hot(y, self.meta.num_classes, self.meta.ignore_index, fake_labeled.dtype))
        with self.autocast():
            return adversarial_discriminator_objective(self.train_nets["D_H"], real, fake_labeled, fake_unlabeled,
                                                       y != self.meta.ignore_index)

    def __call__(self, batch: dict) -> dict:
        x, y = self.inputs(batch)
        x_unl = self.image(batch["unlabeled"])
        d = self.nets["D_H"]

        # 1. segmenter update, D_H frozen
        d.requires_grad_(False)
        self.self_training.fill_(float(self.steps_done() >= self.SELF_TRAINING_START * self.cfg.steps))
        loss, terms, fakes = self.generator_loss(x, y, x_unl, self.self_training)
        self.optimizers["G"].zero_grad(set_to_none=True)
        loss.backward()
        self.optimizers["G"].step()
        d.requires_grad_(True)

        # 2. D_H update: one-hot ground truth against the segmenter's softmax maps
        loss_d, d_terms = self.discriminator_loss(y, fakes["labeled"], fakes["unlabeled"])
        self.optimizers["D"].zero_grad(set_to_none=True)
        loss_d.backward()
        self.optimizers["D"].step()
        self._lr_step()
        return {**terms, **d_terms}


STEPS = {"semi": CycleGANStep, "partial": SupervisedStep, "full": SupervisedStep, "adversarial": AdversarialStep}
