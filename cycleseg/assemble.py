"""From a run's config to the objects that train it: its networks (with the plan's ops and layout) and
its step object. With train.py the only code that reads the whole config: everything it builds takes
explicit arguments; each method's entry (cycleseg/methods) builds its step from its own options."""
from __future__ import annotations

import torch

from . import inference
from .fastpath import Plan, place
from .methods import METHODS, RunFacts
from .models import networks_from_config
from .steps import Optim


def optim_of(cfg) -> Optim:
    return Optim(lr=cfg.lr, lr_d=cfg.lr_d, beta1=cfg.beta1, steps=cfg.steps, kind=cfg.optimizer)


def make_step(cfg, nets: dict, meta, plan: Plan):
    """The step object of cfg.mode over `nets`."""
    common = dict(plan=plan, optim=optim_of(cfg), num_classes=meta.num_classes, ignore_index=meta.ignore_index,
                  dice=cfg.dice)
    run = RunFacts(steps=cfg.steps, seed=cfg.seed, disc_norm=cfg.disc_norm)
    return METHODS[cfg.mode].build(nets, common, cfg.options(), run)


def networks_of(cfg, meta) -> dict:
    """The networks cfg.mode trains, initialised from the current torch seed."""
    return networks_from_config(cfg, meta, METHODS[cfg.mode].step.networks)


def build(cfg, meta, device, plan: Plan):
    """(networks, step) of a run, on `device`, initialised from cfg.seed, running as `plan` says."""
    torch.manual_seed(cfg.seed)
    nets = networks_of(cfg, meta)
    for net in nets.values():
        place(net, device, plan.ops(), plan.channels_last)
    inference.attach(nets["G_IS"], plan)                           # validations: the run's precision and layout
    return nets, make_step(cfg, nets, meta, plan)
