"""Least-squares GAN loss mean((d - a)^2), Triton forward (per-program partials, summed by the
launcher: deterministic, no atomics) and backward 2 (d - a) g / numel (g read on the device).
The bytes are negligible: this op's time is launch overhead, so it matters only fused into a step."""
import torch
import triton
import triton.language as tl

from .common import acc_dtype

BLOCK = 1024


@triton.jit
def _fwd(d_ptr, part_ptr, n, target, ACC: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    i = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    d = tl.load(d_ptr + i, mask=i < n, other=0.0).to(ACC)
    v = tl.where(i < n, d - target, 0.0)
    tl.store(part_ptr + pid, tl.sum(v * v, axis=0))


@triton.jit
def _bwd(g_ptr, d_ptr, dd_ptr, n, target, ACC: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    d = tl.load(d_ptr + i, mask=i < n, other=0.0).to(ACC)
    g = tl.load(g_ptr).to(ACC)
    tl.store(dd_ptr + i, (2.0 * g / n * (d - target)).to(dd_ptr.dtype.element_ty), mask=i < n)


def lsgan_loss_fwd(d, target: float):
    acc, acc_tl = acc_dtype(d)
    d = d.contiguous()
    grid = (triton.cdiv(d.numel(), BLOCK),)
    part = torch.empty(grid[0], dtype=acc, device=d.device)
    _fwd[grid](d, part, d.numel(), target, ACC=acc_tl, BLOCK=BLOCK)
    return (part.sum() / d.numel()).to(d.dtype)


def lsgan_loss_bwd(grad, d, target: float):
    _, acc_tl = acc_dtype(d)
    d = d.contiguous()
    dd = torch.empty_like(d)
    _bwd[(triton.cdiv(d.numel(), BLOCK),)](grad, d, dd, d.numel(), target, ACC=acc_tl, BLOCK=BLOCK)
    return dd
