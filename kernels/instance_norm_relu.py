"""Instance norm (affine=False, biased variance) + ReLU, Triton forward and backward.

One program per (n, c) plane; any strides (NCHW or channels_last). Forward: blockwise statistics
merged with Chan's formula (exact two-pass inside each block, fp32 or fp64 accumulation; no
E[x^2] - E[x]^2 cancellation on offset inputs), then y = max(0, (x - mean) * rstd); saves mean and rstd.
Planes that fit one block are read once for the statistics. Backward recomputes x_hat:
g = dy [x_hat > 0], a = mean(g), b = mean(g x_hat), dx = rstd (g - a - x_hat b).
"""
import torch
import triton
import triton.language as tl

from .common import acc_dtype, next_pow2


@triton.jit
def _plane_offsets(q, C, i, W, sn, sc, sh, sw):
    n, c = (q // C).to(tl.int64), (q % C).to(tl.int64)
    return n * sn + c * sc + (i // W).to(tl.int64) * sh + (i % W).to(tl.int64) * sw


@triton.jit
def _fwd(x_ptr, y_ptr, mean_ptr, rstd_ptr, C, HW, W, sxn, sxc, sxh, sxw, syn, syc, syh, syw, eps,
         ACC: tl.constexpr, BLOCK: tl.constexpr):
    q = tl.program_id(0)
    zero = tl.sum(tl.zeros([BLOCK], dtype=ACC), axis=0)            # a 0-d accumulator of type ACC
    cnt, mean, m2 = zero, zero, zero
    for s in range(0, HW, BLOCK):
        i = s + tl.arange(0, BLOCK)
        msk = i < HW
        x = tl.load(x_ptr + _plane_offsets(q, C, i, W, sxn, sxc, sxh, sxw), mask=msk, other=0.0).to(ACC)
        nb = tl.sum(msk.to(ACC), axis=0)
        mb = tl.sum(x, axis=0) / nb
        d = tl.where(msk, x - mb, 0.0)
        m2b = tl.sum(d * d, axis=0)
        tot = cnt + nb
        delta = mb - mean
        mean = mean + delta * nb / tot
        m2 = m2 + m2b + delta * delta * cnt * nb / tot
        cnt = tot
    rstd = 1.0 / tl.sqrt(m2 / cnt + eps)
    tl.store(mean_ptr + q, mean)
    tl.store(rstd_ptr + q, rstd)
    for s in range(0, HW, BLOCK):
        i = s + tl.arange(0, BLOCK)
        msk = i < HW
        x = tl.load(x_ptr + _plane_offsets(q, C, i, W, sxn, sxc, sxh, sxw), mask=msk, other=0.0).to(ACC)
        y = tl.maximum((x - mean) * rstd, 0.0)
        tl.store(y_ptr + _plane_offsets(q, C, i, W, syn, syc, syh, syw), y.to(y_ptr.dtype.element_ty), mask=msk)


@triton.jit
def _xhat_and_gated_grad(dy_ptr, x_ptr, q, C, i, msk, W, sgn, sgc, sgh, sgw, sxn, sxc, sxh, sxw, mean, rstd,
                         ACC: tl.constexpr):
    """x_hat = (x - mean) rstd and g = dy [x_hat > 0] for the elements i of plane q (0 where masked)."""
    x = tl.load(x_ptr + _plane_offsets(q, C, i, W, sxn, sxc, sxh, sxw), mask=msk, other=0.0).to(ACC)
    dy = tl.load(dy_ptr + _plane_offsets(q, C, i, W, sgn, sgc, sgh, sgw), mask=msk, other=0.0).to(ACC)
    xh = (x - mean) * rstd
    return xh, tl.where(msk & (xh > 0), dy, 0.0)


@triton.jit
def _bwd(dy_ptr, x_ptr, mean_ptr, rstd_ptr, dx_ptr, C, HW, W, sgn, sgc, sgh, sgw, sxn, sxc, sxh, sxw,
         sdn, sdc, sdh, sdw, ACC: tl.constexpr, BLOCK: tl.constexpr):
    q = tl.program_id(0)
    mean = tl.load(mean_ptr + q)
    rstd = tl.load(rstd_ptr + q)
    a = tl.sum(tl.zeros([BLOCK], dtype=ACC), axis=0)
    b = tl.sum(tl.zeros([BLOCK], dtype=ACC), axis=0)
    for s in range(0, HW, BLOCK):
        i = s + tl.arange(0, BLOCK)
        msk = i < HW
        xh, g = _xhat_and_gated_grad(dy_ptr, x_ptr, q, C, i, msk, W, sgn, sgc, sgh, sgw, sxn, sxc, sxh, sxw,
                                     mean, rstd, ACC)
        a += tl.sum(g, axis=0)
        b += tl.sum(g * xh, axis=0)
    a = a / HW
    b = b / HW
    for s in range(0, HW, BLOCK):
        i = s + tl.arange(0, BLOCK)
        msk = i < HW
        xh, g = _xhat_and_gated_grad(dy_ptr, x_ptr, q, C, i, msk, W, sgn, sgc, sgh, sgw, sxn, sxc, sxh, sxw,
                                     mean, rstd, ACC)
        dx = rstd * (g - a - xh * b)
        tl.store(dx_ptr + _plane_offsets(q, C, i, W, sdn, sdc, sdh, sdw), dx.to(dx_ptr.dtype.element_ty), mask=msk)


def _block(hw: int) -> int:
    return max(16, min(4096, next_pow2(hw)))


def instance_norm_relu_fwd(x, eps: float):
    n, c, h, w = x.shape
    acc, acc_tl = acc_dtype(x)
    y = torch.empty_like(x)
    mean = torch.empty((n, c), dtype=acc, device=x.device)
    rstd = torch.empty((n, c), dtype=acc, device=x.device)
    _fwd[(n * c,)](x, y, mean, rstd, c, h * w, w, *x.stride(), *y.stride(), eps, ACC=acc_tl, BLOCK=_block(h * w))
    return y, mean, rstd


def instance_norm_relu_bwd(grad, x, mean, rstd):
    n, c, h, w = x.shape
    _, acc_tl = acc_dtype(x)
    dx = torch.empty_like(x)
    _bwd[(n * c,)](grad, x, mean, rstd, dx, c, h * w, w, *grad.stride(), *x.stride(), *dx.stride(),
                   ACC=acc_tl, BLOCK=_block(h * w))
    return dx
