"""Least-squares GAN losses, Triton: mean((d - a)^2) and the discriminator form
0.5 (mean((d_real - 1)^2) + mean(d_fake^2)), each in two launches forward and one backward.

The bytes are negligible (two 2 MB score maps in the paper's step); the time is launches. So one
partials kernel covers both maps (programs [0, blocks_a) the first, the rest the second), one
program sums the partials in a fixed order and writes the loss (deterministic, no atomics, no host
sync), and one backward kernel writes both gradients 2 g c (d - a) / numel, reading g on the device.
"""
import torch
import triton
import triton.language as tl

from cycleseg.ops import alloc

from .common import acc_dtype

BLOCK = 4096
FINAL_BLOCK = 1024


@triton.jit
def _partials(a_ptr, b_ptr, na, nb, ta, tb, part_ptr, blocks_a, ACC: tl.constexpr, BLOCK: tl.constexpr):
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


@triton.jit
def _finalize(part_ptr, blocks_a, blocks_b, na, nb, out_ptr, DISC: tl.constexpr, ACC: tl.constexpr,
              BLOCK: tl.constexpr):
    sa = tl.zeros([BLOCK], ACC)
    for s in range(0, blocks_a, BLOCK):
        i = s + tl.arange(0, BLOCK)
        sa += tl.load(part_ptr + i, mask=i < blocks_a, other=0.0)
    loss = tl.sum(sa, axis=0) / na
    if DISC:
        sb = tl.zeros([BLOCK], ACC)
        for s in range(0, blocks_b, BLOCK):
            i = s + tl.arange(0, BLOCK)
            sb += tl.load(part_ptr + blocks_a + i, mask=i < blocks_b, other=0.0)
        loss = 0.5 * (loss + tl.sum(sb, axis=0) / nb)
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


def _flat(d: torch.Tensor) -> torch.Tensor:
    """The score map as a dense buffer (a score map from a 1-channel conv already is one: no copy)."""
    return d if d.is_contiguous() or d.is_contiguous(memory_format=torch.channels_last) else d.contiguous()


def _forward(a, b, ta: float, tb: float):
    acc, acc_tl = acc_dtype(a)
    na, nb = a.numel(), (b.numel() if b is not None else 0)
    blocks_a, blocks_b = triton.cdiv(na, BLOCK), triton.cdiv(nb, BLOCK)
    part = alloc.empty((blocks_a + blocks_b,), acc, a.device)
    out = alloc.empty((), a.dtype, a.device)
    _partials[(blocks_a + blocks_b,)](a, b if b is not None else a, na, max(nb, 1), ta, tb, part, blocks_a,
                                      ACC=acc_tl, BLOCK=BLOCK)
    _finalize[(1,)](part, blocks_a, blocks_b, na, max(nb, 1), out, DISC=b is not None, ACC=acc_tl,
                    BLOCK=FINAL_BLOCK)
    return out


def _backward(grad, a, b, ta: float, tb: float, coef: float):
    _, acc_tl = acc_dtype(a)
    na, nb = a.numel(), (b.numel() if b is not None else 0)
    blocks_a, blocks_b = triton.cdiv(na, BLOCK), triton.cdiv(nb, BLOCK)
    da = alloc.empty_like(a)
    db = alloc.empty_like(b) if b is not None else da
    _bwd[(blocks_a + blocks_b,)](grad, a, b if b is not None else a, da, db, na, max(nb, 1), ta, tb, blocks_a,
                                 coef, ACC=acc_tl, BLOCK=BLOCK)
    return da, (db if b is not None else None)


def lsgan_loss_fwd(d, target: float):
    return _forward(_flat(d), None, target, 0.0)


def lsgan_loss_bwd(grad, d, target: float):
    return _backward(grad, _flat(d), None, target, 0.0, 1.0)[0]


def lsgan_disc_loss_fwd(d_real, d_fake):
    return _forward(_flat(d_real), _flat(d_fake), 1.0, 0.0)


def lsgan_disc_loss_bwd(grad, d_real, d_fake):
    return _backward(grad, _flat(d_real), _flat(d_fake), 1.0, 0.0, 0.5)
