"""What every method's training step shares: the Step base class (optimizers, LR schedules, updates,
autocast, compile, state), the optimizer settings (Optim) and the ramp-up and decay schedules. Each
method's step is a subclass in cycleseg/methods/<method>.py, built from explicit arguments (never the
config), beside its options:

    terms = step(batch)          # batch: {"images", "masks"[, "unlabeled"]} uint8 on the device

`plan` (fastpath.py) says how the step runs: which ops, merged network calls, fused Adam, autocast,
channels_last, torch.compile of each update's loss (forward and backward). `terms` are detached device
tensors (no host sync). `networks` says which networks a step trains, `streams` which batches it reads.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from .data.pixels import to_input
from .fastpath import Plan
from .models import mixes_batch


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
