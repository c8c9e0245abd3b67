"""One training step per method, each a small object that owns its optimizers, LR schedules and history
pools, built from explicit arguments (the entry point, assemble.py, reads them from the config):

    SupervisedStep   Partial / Full: G_IS alone, cross-entropy on the labeled batch
    CycleGANStep     the method: one generator update, then one discriminator update
    AdversarialStep  Hung et al. (2018): G_IS against a discriminator on its softmax
    MeanTeacherStep  Mean Teacher (Tarvainen & Valpola 2017), as SSL4MIS trains it
    FixMatchStep     weak-to-strong consistency (FixMatch, Sohn et al. 2020), as UniMatch's baseline

    terms = step(batch)          # batch: {"images", "masks"[, "unlabeled"]} uint8 on the device

`plan` (fastpath.py) says how the step runs: which ops, merged network calls, fused Adam, autocast,
channels_last, torch.compile of each update's loss (forward and backward). `terms` are detached device
tensors (no host sync). A new method is one more class and one more entry in STEPS; `networks` says
which networks it trains, `streams` which batches it reads.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import math
from dataclasses import dataclass

import torch

from .data.pixels import to_input
from .fastpath import Plan
from .models import mixes_batch
from .objective import (HungWeights, Lambdas, adversarial_discriminator_objective, adversarial_objective,
                        discriminator_objective, fixmatch_objective, generator_objective, mean_teacher_objective,
                        one_hot, supervised_objective)
from .pool import ImagePool
from .views import strong_view

# Each pool's RNG seed is the run seed plus its offset (distinct from the streams' seeds).
POOL_SEED_OFFSETS = {"seg": 11, "img": 12}


@dataclass(frozen=True)
class Optim:
    """How a step's optimizers run: Adam with betas (beta1, 0.999) at `lr` (the discriminators at `lr_d`),
    constant for the first quarter of `steps`, then linear to 0. kind "sgd": G_IS alone by SSL4MIS's
    optimizer instead (SGD at `lr`, momentum 0.9, weight decay 1e-4, poly decay), every other network
    (G_SI included) by Adam at `lr_d`."""
    lr: float
    lr_d: float
    beta1: float
    steps: int
    kind: str = "adam"


SGD_MOMENTUM, SGD_WEIGHT_DECAY, POLY_POWER = 0.9, 1e-4, 0.9     # SSL4MIS's train_*_2D.py


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


class PolyDecay:
    """LR factor (1 - step / steps)^0.9: SSL4MIS's schedule for its SGD."""

    def __init__(self, steps: int):
        self.steps = steps

    def __call__(self, step: int) -> float:
        return max(0.0, 1.0 - step / max(1, self.steps)) ** POLY_POWER


class Step:
    """What every step shares: the plan's execution choices, optimizers (built by the `optimizers_for`
    hook) with their LR schedules, the update of one optimizer, freezing, (de)serialisation."""
    networks: tuple = ()
    streams: tuple = ("labeled",)

    def __init__(self, nets: dict, plan: Plan, optim: Optim, num_classes: int, ignore_index: int,
                 dice: float = 0.0):
        self.nets, self.plan, self.optim = nets, plan, optim
        self.num_classes, self.ignore_index, self.dice = num_classes, ignore_index, dice
        # G_IS's inputs in one call when the plan merges calls, and always when its output for an image
        # depends on the rest of the batch (BatchNorm: the UNet), so that every path computes one model
        self.merge = plan.merge_passes or mixes_batch(nets["G_IS"])
        # The networks as each update trains them: the plain modules, or their DistributedDataParallel
        # wrappers under torchrun (distribute()). A network that an update only reads (frozen) is called
        # plain, so that its wrapper sees one forward per backward of its own update.
        self.train_nets = dict(nets)
        self.ops = plan.ops()
        self.device = next(next(iter(nets.values())).parameters()).device
        self.pools: dict = {}
        self.optimizers = self.optimizers_for(self.learning_rates(optim))
        self.schedulers = {k: torch.optim.lr_scheduler.LambdaLR(o, self.decay(k, optim))
                           for k, o in self.optimizers.items()}

    # -- the hooks of a method ------------------------------------------------------------------------
    def learning_rates(self, optim: Optim) -> dict:
        """{optimizer name: its base learning rate} under `optim`."""
        return {"G": optim.lr}

    def optimizers_for(self, lrs: dict) -> dict:
        """{optimizer name: optimizer} at the base rates `lrs`."""
        return {"G": self.segmenter_optimizer(self.nets["G_IS"].parameters(), lrs["G"])}

    # -- what the methods share -----------------------------------------------------------------------
    def adam(self, params, lr: float, betas: tuple | None = None) -> torch.optim.Adam:
        extra = {"fused": True} if self.plan.fused_adam else {}
        return torch.optim.Adam(params, lr, betas=betas or (self.optim.beta1, 0.999), **extra)

    def segmenter_optimizer(self, params, lr: float) -> torch.optim.Optimizer:
        """G_IS's optimizer, the same in every mode: Adam, or SSL4MIS's SGD (Optim.kind)."""
        if self.optim.kind == "sgd":
            return torch.optim.SGD(params, lr, momentum=SGD_MOMENTUM, weight_decay=SGD_WEIGHT_DECAY)
        return self.adam(params, lr)

    def decay(self, name: str, optim: Optim):
        """The LR factor of optimizer `name`: poly for G_IS's SGD, the linear decay otherwise."""
        return PolyDecay(optim.steps) if optim.kind == "sgd" and name == "G" else LinearDecay(optim.steps)

    def _update(self, names, loss: torch.Tensor) -> None:
        """One step of optimizer `names` (a name, or a tuple of names stepped together) on the gradient of `loss`."""
        opts = [self.optimizers[n] for n in ((names,) if isinstance(names, str) else names)]
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in opts:
            opt.step()

    @contextlib.contextmanager
    def frozen(self, *nets):
        """The networks take no gradient inside the block (an update that only reads them)."""
        for net in nets:
            net.requires_grad_(False)
        try:
            yield
        finally:
            for net in nets:
                net.requires_grad_(True)

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

    def inputs(self, batch: dict):
        """(x (B, C, H, W) float in [-1, 1], y (B, H, W) uint8) of the labeled batch."""
        return self.image(batch["images"]), batch["masks"]

    # -- schedules and state --------------------------------------------------------------------------
    def _lr_step(self) -> None:
        for s in self.schedulers.values():
            s.step()

    def lr(self) -> float:
        return self.schedulers["G"].get_last_lr()[0]

    def steps_done(self) -> int:
        """Updates made so far (the LR schedulers count them, and they are checkpointed)."""
        return self.schedulers["G"].last_epoch

    def reschedule(self, optim: Optim) -> None:
        """A resumed run's new --steps and learning rates, from now on: the linear decay is redrawn over
        optim.steps (the checkpoint restored the old one) and each rate set for the current step."""
        self.optim = optim
        lrs = self.learning_rates(optim)
        for k, sched in self.schedulers.items():
            sched.base_lrs = [lrs[k] for _ in sched.base_lrs]
            sched.lr_lambdas = [self.decay(k, optim) for _ in sched.lr_lambdas]
            for group, base, decay in zip(sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
                group["initial_lr"] = base
                group["lr"] = base * decay(sched.last_epoch)
            sched._last_lr = [g["lr"] for g in sched.optimizer.param_groups]

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


STEPS = {"semi": CycleGANStep, "partial": SupervisedStep, "full": SupervisedStep, "adversarial": AdversarialStep,
         "meanteacher": MeanTeacherStep, "fixmatch": FixMatchStep}
