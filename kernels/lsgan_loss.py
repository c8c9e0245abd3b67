"""Least-squares GAN losses, Triton: mean((d - a)^2) and the discriminator form
0.5 (mean((d_real - 1)^2) + mean(d_fake^2)), one launch forward and one backward.

The bytes are negligible (two 2 MB score maps in the paper's step); the time is launches. So one
kernel covers both maps (programs [0, blocks_a) the first, the rest the second): each program stores
its partial sum of squares, and the program that finishes last sums them in a fixed order and writes
the loss (kernels/reduction.py: deterministic, no atomics on floats, no host sync); one backward
kernel writes both gradients 2 g c (d - a) / numel, reading g on the device. The loss is in the
accumulation dtype (fp32 for bf16 scores, as F.mse_loss under autocast).
"""
import torch
import triton
import triton.language as tl

from .common import acc_dtype, counter, empty, empty_like, tl_dtype
from .reduction import last_program, sum_partials

BLOCK = 1024            # scores per program (8 per thread with 4 warps)
FINAL_BLOCK = 256


@triton.jit
def _fwd(a_ptr, b_ptr, na, nb, ta, tb, part_ptr, counter_ptr, out_ptr, blocks_a, num_programs, DISC: tl.constexpr,
         ACC: tl.constexpr, BLOCK: tl.constexpr, FINAL_BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    if pid < blocks_a:
        i = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        v = tl.load(a_ptr + i, mask=i < na, other=0.0).to(ACC) - ta
        v = tl.where(i < na, v, 0.0)
    else:
        i = (pid - blocks_a).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        v = tl.load(b_ptr + i, mask=i < nb, other=0.0).to(ACC) - tb
        v = tl.where(i < nb, v, 0.0)
    tl.store(part_ptr + pid, tl.sum(v * v, axis=0))
    if last_program(counter_ptr, num_programs):
        loss = sum_partials(part_ptr, 0, 1, blocks_a, ACC, FINAL_BLOCK) / na
        if DISC:
            loss = 0.5 * (loss + sum_partials(part_ptr, blocks_a, 1, num_programs - blocks_a, ACC, FINAL_BLOCK) / nb)
        tl.store(out_ptr, loss.to(out_ptr.dtype.element_ty))


@triton.jit
def _bwd(g_ptr, a_ptr, b_ptr, da_ptr, db_ptr, na, nb, ta, tb, blocks_a, coef, ACC: tl.constexpr,
         BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    g = tl.load(g_ptr).to(ACC) * coef
    if pid < blocks_a:
        i = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        d = tl.load(a_ptr + i, mask=i < na, other=0.0).to(ACC)
        tl.store(da_ptr + i, (2.0 * g / na * (d - ta)).to(da_ptr.dtype.element_ty), mask=i < na)
    else:
        i = (pid - blocks_a).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        d = tl.load(b_ptr + i, mask=i < nb, other=0.0).to(ACC)
        tl.store(db_ptr + i, (2.0 * g / nb * (d - tb)).to(db_ptr.dtype.element_ty), mask=i < nb)


def _dense(d):
    """The score map as a dense buffer (a score map from a 1-channel conv already is one: no copy)."""
    return d if d.is_contiguous() or d.is_contiguous(memory_format=torch.channels_last) else d.contiguous()


def _forward(a, b, ta: float, tb: float):
    acc = acc_dtype(a.dtype)
    na, nb = a.numel(), (b.numel() if b is not None else 0)
    blocks_a, blocks_b = triton.cdiv(na, BLOCK), triton.cdiv(nb, BLOCK)
    programs = blocks_a + blocks_b
    part = empty((programs,), acc, a.device)
    out = empty((), acc, a.device)
    _fwd[(programs,)](a, b if b is not None else a, na, max(nb, 1), ta, tb, part, counter(a.device), out, blocks_a,
                      programs, DISC=b is not None, ACC=tl_dtype(acc), BLOCK=BLOCK, FINAL_BLOCK=FINAL_BLOCK)
    return out


def _backward(grad, a, b, ta: float, tb: float, coef: float):
    na, nb = a.numel(), (b.numel() if b is not None else 0)
    blocks_a, blocks_b = triton.cdiv(na, BLOCK), triton.cdiv(nb, BLOCK)
    da = empty_like(a)
    db = empty_like(b) if b is not None else da
    _bwd[(blocks_a + blocks_b,)](grad, a, b if b is not None else a, da, db, na, max(nb, 1), ta, tb, blocks_a,
                                 coef, ACC=tl_dtype(acc_dtype(a.dtype)), BLOCK=BLOCK)
    return da, (db if b is not None else None)


def lsgan_loss_fwd(d, target: float):
    return _forward(_dense(d), None, target, 0.0)


def lsgan_loss_bwd(grad, d, target: float):
    return _backward(grad, _dense(d), None, target, 0.0, 1.0)[0]


def lsgan_disc_loss_fwd(d_real, d_fake):
    return _forward(_dense(d_real), _dense(d_fake), 1.0, 0.0)


def lsgan_disc_loss_bwd(grad, d_real, d_fake):
    return _backward(grad, _dense(d_real), _dense(d_fake), 1.0, 0.0, 0.5)
