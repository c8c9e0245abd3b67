"""From a run's config to the objects that train it: its networks (with the plan's ops and layout) and
its step object. With train.py the only code that reads the whole config: everything it builds takes
explicit arguments."""
from __future__ import annotations

import torch

from .fastpath import Plan
from .models import networks_from_config, use_ops
from .objective import HungWeights
from .steps import STEPS, AdversarialStep, CycleGANStep, FixMatchStep, Hung, MeanTeacherStep, Optim, SupervisedStep


def optim_of(cfg) -> Optim:
    return Optim(lr=cfg.lr, lr_d=cfg.lr_d, beta1=cfg.beta1, steps=cfg.steps, kind=cfg.optimizer)


def make_step(cfg, nets: dict, meta, plan: Plan):
    """The step object of cfg.mode over `nets`."""
    common = dict(plan=plan, optim=optim_of(cfg), num_classes=meta.num_classes, ignore_index=meta.ignore_index,
                  dice=cfg.dice)
    if STEPS[cfg.mode] is SupervisedStep:
        return SupervisedStep(nets, **common)
    if STEPS[cfg.mode] is CycleGANStep:
        return CycleGANStep(nets, **common, lambdas=cfg.lambdas, pool_size=cfg.pool_size, seed=cfg.seed,
                            rampup_steps=round(cfg.rampup * cfg.steps), hard_cycle=cfg.hard_cycle,
                            merge_discriminators=cfg.disc_norm != "batch")
    if STEPS[cfg.mode] is MeanTeacherStep:
        return MeanTeacherStep(nets, **common, consistency=cfg.mt_consistency, ema_decay=cfg.mt_ema, noise=cfg.mt_noise,
                               rampup_steps=round(cfg.mt_rampup * cfg.steps), start_steps=round(cfg.mt_start * cfg.steps))
    if STEPS[cfg.mode] is FixMatchStep:
        return FixMatchStep(nets, **common, threshold=cfg.fm_threshold, weight=cfg.fm_weight, cutmix=cfg.fm_cutmix,
                            unlabeled_loss=cfg.fm_loss, rampup_steps=round(cfg.fm_rampup * cfg.steps))
    weights = HungWeights(adv=cfg.adv_lambda, semi_adv=cfg.adv_semi_lambda, self_training=cfg.adv_self_training,
                          threshold=cfg.adv_threshold)
    hung = Hung(weights, start=cfg.adv_start, lr_d_scale=cfg.adv_lr_d_scale, betas_d=(cfg.adv_beta1_d, cfg.adv_beta2_d))
    return AdversarialStep(nets, **common, hung=hung)


def build(cfg, meta, device, plan: Plan):
    """(networks, step) of a run, on `device`, initialised from cfg.seed, running as `plan` says."""
    torch.manual_seed(cfg.seed)
    nets = networks_from_config(cfg, meta, STEPS[cfg.mode].networks)
    for net in nets.values():
        use_ops(net.to(device), plan.ops())
        if plan.channels_last:
            net.to(memory_format=torch.channels_last)
    return nets, make_step(cfg, nets, meta, plan)
