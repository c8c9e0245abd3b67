"""G_IS at inference, one path for `predict`, `evaluate`, the experiment grid and a run's validations:
eval mode, no autograd (torch.inference_mode: no statistics saved for a backward), the fused forward ops,
channels_last, and bf16 autocast where the device runs bf16 natively (GPUs; CPUs with AVX512-BF16 / AMX),
the class scores in fp32.

    net = inference.prepare(nets["G_IS"], device)          # a checkpoint's network (evaluate, predict)
    inference.attach(run_net, plan)                        # a training network: the run's own plan
    labels = inference.segment(net, x)                     # (N, C, H, W) in [-1, 1] -> (N, H, W) int64
    scores = inference.logits(net, x)                      # -> (N, K, H, W) float32

`--precision fp32` (evaluate, predict) keeps fp32 throughout; bf16's predictions are checked against fp32's
(argmax agreement, Dice: benchmarks/RESULTS.md, tests/test_inference.py).
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass

import torch

from . import native, ops
from .data.pixels import to_uint8
from .fastpath import PRECISIONS, place, wants_bf16
from .objective import one_hot


@dataclass(frozen=True)
class InferencePlan:
    bf16: bool = False              # bf16 autocast (the weights stay fp32; the scores come back fp32)
    channels_last: bool = False     # inputs in the networks' layout


def plan_of(device, precision: str = "auto") -> InferencePlan:
    """bf16 where the device runs it natively (or as `precision` says), channels_last always."""
    return InferencePlan(bf16=wants_bf16(device, precision), channels_last=True)


class eval_mode:
    """`with eval_mode(net):` runs net in eval mode and restores its previous mode."""

    def __init__(self, net):
        self.net = net

    def __enter__(self):
        self.was_training = self.net.training
        self.net.eval()
        return self.net

    def __exit__(self, *exc):
        self.net.train(self.was_training)


def fused_ops_for(device):
    """cycleseg.ops where its kernels can run on `device` (the C++ ones build on first use), else PyTorch's
    own ops with a note: a machine without a compiler still predicts."""
    if torch.device(device).type == "cpu":
        try:
            ops.cpu.extension()
        except (RuntimeError, OSError) as e:                       # no compiler; an unusable build folder
            print(f"note: inference with PyTorch's own ops ({str(e).splitlines()[0]})", file=sys.stderr)
            return native
    return ops


def prepare(net: torch.nn.Module, device, precision: str = "auto") -> torch.nn.Module:
    """A checkpoint's network made ready for inference on `device` (in place): the fused ops, its plan's
    layout, the plan attached."""
    plan = plan_of(device, precision)
    return attach(place(net, device, fused_ops_for(device), plan.channels_last), plan)


def attach(net: torch.nn.Module, plan) -> torch.nn.Module:
    """Record how `net` runs at inference: an InferencePlan, or a training run's fastpath.Plan (its
    autocast and layout; its ops are the network's already)."""
    if not isinstance(plan, InferencePlan):
        plan = InferencePlan(bf16=plan.autocast == "bfloat16", channels_last=plan.channels_last)
    net.inference_plan = plan
    return net


def _autocast(x: torch.Tensor, plan: InferencePlan):
    if not plan.bf16:
        return contextlib.nullcontext()
    return torch.autocast(x.device.type, dtype=torch.bfloat16)


@torch.inference_mode()
def logits(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) images in [-1, 1] -> (N, K, H, W) float32 class scores, as the network's plan says
    (fp32 NCHW for a network without one)."""
    plan = getattr(net, "inference_plan", InferencePlan())
    if plan.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with eval_mode(net), _autocast(x, plan):
        out = net(x)
    return out.float()


@torch.inference_mode()
def segment(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) images in [-1, 1] -> (N, H, W) int64 class ids."""
    return logits(net, x).argmax(dim=1)


@torch.inference_mode()
def synthesize(g_si: torch.nn.Module, masks: torch.Tensor, num_classes: int, ignore_index: int = -1) -> torch.Tensor:
    """G_SI's images of (N, H, W) class-id masks (ignored pixels: no class) as uint8 (N, H, W, C) on the CPU:
    what evaluate's samples and predict's <name>_gsi.png show."""
    with eval_mode(g_si):
        fake = g_si(one_hot(masks, num_classes, ignore_index))
    return to_uint8(fake).permute(0, 2, 3, 1)
