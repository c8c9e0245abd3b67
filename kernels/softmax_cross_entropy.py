"""Pixelwise softmax cross-entropy, Triton forward and backward.

Tile: [BLOCK_K = next_pow2(K), BLOCK_P pixels] of one image, loads coalesced along pixels (classes of a
pixel are H*W apart in NCHW; any strides work, channels_last included). All K logits of a pixel stay
in registers, so softmax needs no online rescaling. The target logit is picked with `k == t` inside the
tile: no indirect load, and a target outside [0, K) reads nothing (its pixel gets NaN).
Forward writes the per-pixel weighted loss, the log-sum-exp, and one (loss, weight) partial per
program; the launcher sums the partials (deterministic, no atomics) and divides on the device.
Backward recomputes softmax from the logits and the saved log-sum-exp.
"""
import torch
import triton
import triton.language as tl

from .common import acc_dtype, next_pow2


@triton.jit
def _fwd(x_ptr, t_ptr, w_ptr, loss_ptr, lse_ptr, part_l_ptr, part_w_ptr, K, HW, W,
         sxn, sxk, sxh, sxw, ignore_index,
         HAS_WEIGHT: tl.constexpr, ACC: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr):
    pid_p, n = tl.program_id(0), tl.program_id(1)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)                   # (P,) pixel ids
    pmask = p < HW
    k = tl.arange(0, BLOCK_K)                                     # (K,)
    n64 = n.to(tl.int64)
    offs = (n64 * sxn + k[:, None].to(tl.int64) * sxk
            + (p // W)[None, :].to(tl.int64) * sxh + (p % W)[None, :].to(tl.int64) * sxw)
    m2 = (k[:, None] < K) & pmask[None, :]
    x = tl.load(x_ptr + offs, mask=m2, other=float("-inf")).to(ACC)  # (K, P)
    mx = tl.where(pmask, tl.max(x, axis=0), 0.0)
    lse = mx + tl.log(tl.sum(tl.exp(x - mx[None, :]), axis=0))    # (P,)
    t = tl.load(t_ptr + n64 * HW + p, mask=pmask, other=-1).to(tl.int64)
    valid = (t != ignore_index) & pmask
    ok = valid & (t >= 0) & (t < K)
    xt = tl.sum(tl.where((k[:, None] == t[None, :]) & m2, x, 0.0), axis=0)  # (P,) target logit
    xt = tl.where(ok, xt, 0.0)
    if HAS_WEIGHT:
        wt = tl.load(w_ptr + t, mask=ok, other=0.0).to(ACC)
    else:
        wt = tl.where(ok, 1.0, 0.0).to(ACC)
    nan = float("nan")
    lse = tl.where(pmask, lse, 0.0)
    loss = tl.where(ok, (lse - xt) * wt, tl.where(valid, nan, 0.0))
    wsum = tl.where(ok, wt, tl.where(valid, nan, 0.0))
    tl.store(loss_ptr + n64 * HW + p, loss, mask=pmask)
    tl.store(lse_ptr + n64 * HW + p, lse, mask=pmask)
    pid = n * tl.num_programs(0) + pid_p
    tl.store(part_l_ptr + pid, tl.sum(loss, axis=0))
    tl.store(part_w_ptr + pid, tl.sum(wsum, axis=0))


@triton.jit
def _bwd(x_ptr, t_ptr, w_ptr, lse_ptr, g_ptr, denom_ptr, dx_ptr, K, HW, W,
         sxn, sxk, sxh, sxw, sdn, sdk, sdh, sdw, ignore_index,
         HAS_WEIGHT: tl.constexpr, PER_PIXEL: tl.constexpr, ACC: tl.constexpr,
         BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr):
    pid_p, n = tl.program_id(0), tl.program_id(1)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = p < HW
    k = tl.arange(0, BLOCK_K)
    n64 = n.to(tl.int64)
    h, w = (p // W)[None, :].to(tl.int64), (p % W)[None, :].to(tl.int64)
    k64 = k[:, None].to(tl.int64)
    m2 = (k[:, None] < K) & pmask[None, :]
    x = tl.load(x_ptr + n64 * sxn + k64 * sxk + h * sxh + w * sxw, mask=m2, other=0.0).to(ACC)
    lse = tl.load(lse_ptr + n64 * HW + p, mask=pmask, other=0.0)
    t = tl.load(t_ptr + n64 * HW + p, mask=pmask, other=0).to(tl.int64)
    valid = t != ignore_index
    ok = valid & (t >= 0) & (t < K)
    if HAS_WEIGHT:
        wt = tl.load(w_ptr + t, mask=ok & pmask, other=0.0).to(ACC)
    else:
        wt = tl.where(ok, 1.0, 0.0).to(ACC)
    if PER_PIXEL:
        g = tl.load(g_ptr + n64 * HW + p, mask=pmask, other=0.0).to(ACC)
    else:
        g = tl.load(g_ptr).to(ACC) / tl.load(denom_ptr).to(ACC)
    scale = tl.where(ok, g * wt, tl.where(valid, float("nan"), 0.0))  # (P,)
    sm = tl.exp(x - lse[None, :])
    dx = scale[None, :] * (sm - tl.where(k[:, None] == t[None, :], 1.0, 0.0))
    tl.store(dx_ptr + n64 * sdn + k64 * sdk + h * sdh + w * sdw, dx.to(dx_ptr.dtype.element_ty), mask=m2)


def _blocks(k: int, hw: int):
    bk = next_pow2(k)
    return bk, max(16, min(1024, 4096 // bk, next_pow2(hw)))


def softmax_cross_entropy_fwd(logits, target, weight, ignore_index: int, reduction: str):
    """-> (loss: () or (N, H, W) in logits.dtype, lse: (N, H, W) acc dtype, denom: () acc dtype)."""
    n, k, h, w = logits.shape
    acc, acc_tl = acc_dtype(logits)
    t = target.contiguous()
    loss = torch.empty((n, h, w), dtype=acc, device=logits.device)
    lse = torch.empty((n, h, w), dtype=acc, device=logits.device)
    bk, bp = _blocks(k, h * w)
    grid = (triton.cdiv(h * w, bp), n)
    part_l = torch.empty(grid[0] * n, dtype=acc, device=logits.device)
    part_w = torch.empty_like(part_l)
    _fwd[grid](logits, t, weight if weight is not None else t, loss, lse, part_l, part_w, k, h * w, w,
               *logits.stride(), ignore_index, HAS_WEIGHT=weight is not None, ACC=acc_tl,
               BLOCK_K=bk, BLOCK_P=bp)
    if reduction == "none":
        return loss.to(logits.dtype), lse, torch.ones((), dtype=acc, device=logits.device)
    total = part_l.sum()
    if reduction == "sum":
        return total.to(logits.dtype), lse, torch.ones((), dtype=acc, device=logits.device)
    denom = part_w.sum()
    return (total / denom).to(logits.dtype), lse, denom


def softmax_cross_entropy_bwd(grad, logits, target, weight, lse, denom, ignore_index: int, reduction: str):
    n, k, h, w = logits.shape
    _, acc_tl = acc_dtype(logits)
    dx = torch.empty_like(logits)                                 # keeps channels_last if the input has it
    per_pixel = reduction == "none"
    g = grad.contiguous()
    bk, bp = _blocks(k, h * w)
    grid = (triton.cdiv(h * w, bp), n)
    _bwd[grid](logits, target.contiguous(), weight if weight is not None else lse, lse, g, denom, dx,
               k, h * w, w, *logits.stride(), *dx.stride(), ignore_index,
               HAS_WEIGHT=weight is not None, PER_PIXEL=per_pixel, ACC=acc_tl, BLOCK_K=bk, BLOCK_P=bp)
    return dx
