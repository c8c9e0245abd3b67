"""One training step per method, each a small object built from the networks and the config that owns
its optimizers, LR schedulers and history pools:

    SupervisedStep   Partial / Full: G_IS alone, cross-entropy on the labeled batch
    CycleGANStep     the method: one generator update, then one discriminator update

    step = STEPS[cfg.mode](nets, cfg, meta, ops)
    terms = step(batch)          # batch: {"images", "masks"[, "unlabeled"]} uint8 on the device

`terms` are detached device tensors (no host sync). A new method is one more class and one more entry
in STEPS; `networks` says which networks it trains, `streams` which batches it reads.
"""
from __future__ import annotations

import itertools

import torch

from . import reference
from .data.pixels import to_input
from .objective import discriminator_objective, generator_objective, one_hot, supervised_objective
from .pool import ImagePool

# Each pool's RNG seed is the run seed plus its offset (distinct from the streams' seeds).
POOL_SEED_OFFSETS = {"seg": 11, "img": 12}


class LinearDecay:
    """LR factor: 1 for the first quarter of the steps, then linear decay to 0 at the last step."""

    def __init__(self, steps: int):
        self.steps, self.start = steps, steps // 4

    def __call__(self, step: int) -> float:
        if step < self.start:
            return 1.0
        return max(0.0, 1.0 - (step - self.start) / max(1, self.steps - self.start))


def adam(params, cfg) -> torch.optim.Adam:
    return torch.optim.Adam(params, cfg.lr, betas=(cfg.beta1, 0.999))


class Step:
    """What every step shares: optimizers with their LR schedules, pools, (de)serialisation."""
    networks: tuple = ()
    streams: tuple = ("labeled",)

    def __init__(self, nets: dict, cfg, meta, ops=reference):
        self.nets, self.cfg, self.meta, self.ops = nets, cfg, meta, ops
        self.optimizers: dict = {}
        self.pools: dict = {}

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
        return to_input(batch["images"]), batch["masks"]

    def state_dict(self) -> dict:
        return {"optimizers": {k: v.state_dict() for k, v in self.optimizers.items()},
                "schedulers": {k: v.state_dict() for k, v in self.schedulers.items()},
                "pools": {k: v.state_dict() for k, v in self.pools.items()}}

    def load_state_dict(self, state: dict) -> None:
        for group in ("optimizers", "schedulers", "pools"):
            for k, obj in getattr(self, group).items():
                obj.load_state_dict(state[group][k])


class SupervisedStep(Step):
    """Partial / Full: G_IS trained by cross-entropy on the labeled batch alone."""
    networks = ("G_IS",)

    def __init__(self, nets, cfg, meta, ops=reference):
        super().__init__(nets, cfg, meta, ops)
        self.optimizers = {"G": adam(nets["G_IS"].parameters(), cfg)}
        self._schedule()

    def __call__(self, batch: dict) -> dict:
        x, y = self.inputs(batch)
        loss, terms = supervised_objective(self.nets["G_IS"], x, y, self.meta.ignore_index, self.ops)
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

    def __init__(self, nets, cfg, meta, ops=reference):
        super().__init__(nets, cfg, meta, ops)
        chain = itertools.chain
        self.optimizers = {"G": adam(chain(nets["G_IS"].parameters(), nets["G_SI"].parameters()), cfg),
                           "D": adam(chain(nets["D_S"].parameters(), nets["D_I"].parameters()), cfg)}
        self.pools = {k: ImagePool(cfg.pool_size, cfg.seed + off) for k, off in POOL_SEED_OFFSETS.items()}
        self._schedule()

    def __call__(self, batch: dict) -> dict:
        n, k, ign = self.nets, self.meta.num_classes, self.meta.ignore_index
        x, y = self.inputs(batch)                                   # (B, C, H, W), (B, H, W)
        x_unl = to_input(batch["unlabeled"])                        # (B, C, H, W)
        discriminators = (n["D_S"], n["D_I"])

        # 1. generator update, discriminators frozen
        for d in discriminators:
            d.requires_grad_(False)
        loss_g, terms, fakes = generator_objective(n["G_IS"], n["G_SI"], n["D_S"], n["D_I"], x, y, x_unl, k,
                                                   self.cfg.lambdas, ign, self.ops)
        self.optimizers["G"].zero_grad(set_to_none=True)
        loss_g.backward()
        self.optimizers["G"].step()
        for d in discriminators:
            d.requires_grad_(True)

        # 2. discriminator update: real masks / unlabeled images against pooled fakes
        loss_d, d_terms = discriminator_objective(
            n["D_S"], n["D_I"], one_hot(y, k, ign, x.dtype), self.pools["seg"].query(fakes["seg"]),
            x_unl, self.pools["img"].query(fakes["img"]), self.ops)
        self.optimizers["D"].zero_grad(set_to_none=True)
        loss_d.backward()
        self.optimizers["D"].step()
        self._lr_step()
        return {**terms, **d_terms}


STEPS = {"semi": CycleGANStep, "partial": SupervisedStep, "full": SupervisedStep}
