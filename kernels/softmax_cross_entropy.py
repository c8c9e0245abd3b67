"""Pixelwise softmax cross-entropy, Triton forward and backward.

One program handles BLOCK_P pixels of one image; the classes are a loop (any K, no padding of K to a
power of two), so every max / sum over classes stays inside a thread (no shared memory) and each load
is a vector of BLOCK_P pixels: coalesced and vectorised in NCHW, strided in channels_last (any strides
work). Each softmax is two passes over the classes (max, then sum of exp and the target logit): exact
for -inf logits; the second pass re-reads the program's tile from L1 / L2, not from DRAM.

Bytes (floor: logits read once, gradient written once, targets read):
  forward   reads logits + targets; writes one (loss, weight) partial per program (mean / sum) or the
            per-pixel loss ('none'); `_finalize` (one program) sums the partials in a fixed order and
            divides on the device: deterministic, no atomics, no host sync
  backward  recomputes the log-sum-exp (no saved statistics) and writes the gradient
so forward + backward moves 3 K s + 2 bytes per pixel against a floor of 2 K s + 1: at most ~67 % of
copy bandwidth at the floor's bytes (the price of not writing a gradient in the forward).
A target outside [0, K) that is not ignore_index reads nothing and gives NaN at its pixel.
"""
import torch
import triton
import triton.language as tl

from cycleseg.ops import alloc

from .common import acc_dtype, flat_pixels

BLOCK_P = 512           # pixels per program: 4 per thread with 4 warps (16-byte loads in NCHW fp32)
FINAL_BLOCK = 1024


@triton.jit
def _pixel_offsets(p, W, sh, sw, FLAT: tl.constexpr):
    if FLAT:
        return p.to(tl.int64) * sw
    return (p // W).to(tl.int64) * sh + (p % W).to(tl.int64) * sw


@triton.jit
def _target_and_weight(t_ptr, w_ptr, sw_k, n, p, pmask, HW, K, ignore_index, HAS_WEIGHT: tl.constexpr,
                       ACC: tl.constexpr):
    """(t, valid, ok, w_t): valid = not ignored, ok = valid and t in [0, K)."""
    t = tl.load(t_ptr + n.to(tl.int64) * HW + p, mask=pmask, other=0).to(tl.int64)
    valid = pmask & (t != ignore_index)
    ok = valid & (t >= 0) & (t < K)
    if HAS_WEIGHT:
        wt = tl.load(w_ptr + tl.where(ok, t, 0) * sw_k, mask=ok, other=0.0).to(ACC)
    else:
        wt = tl.where(ok, 1.0, 0.0).to(ACC)
    return t, valid, ok, wt


@triton.jit
def _log_sum_exp(xb, sk, K, pmask, BLOCK_P: tl.constexpr, ACC: tl.constexpr):
    """(lse, max) over the K classes of each pixel; xb points at class 0 of each pixel."""
    m = tl.full([BLOCK_P], float("-inf"), ACC)
    for k in range(0, K):
        xk = tl.load(xb + k * sk, mask=pmask, other=0.0).to(ACC)
        m = tl.maximum(m, xk)
    s = tl.zeros([BLOCK_P], ACC)
    for k in range(0, K):
        xk = tl.load(xb + k * sk, mask=pmask, other=0.0).to(ACC)
        s += tl.exp(xk - m)
    return m + tl.log(s)


@triton.jit
def _fwd(x_ptr, t_ptr, w_ptr, out_ptr, part_ptr, K, HW, W, blocks_per_image, sxn, sxk, sxh, sxw, sw_k,
         ignore_index, HAS_WEIGHT: tl.constexpr, PER_PIXEL: tl.constexpr, FLAT: tl.constexpr,
         ACC: tl.constexpr, BLOCK_P: tl.constexpr):
    pid = tl.program_id(0)
    n = pid // blocks_per_image
    p = (pid % blocks_per_image) * BLOCK_P + tl.arange(0, BLOCK_P)        # (P,) pixels of image n
    pmask = p < HW
    xb = x_ptr + n.to(tl.int64) * sxn + _pixel_offsets(p, W, sxh, sxw, FLAT)
    sk = sxk.to(tl.int64)
    t, valid, ok, wt = _target_and_weight(t_ptr, w_ptr, sw_k, n, p, pmask, HW, K, ignore_index, HAS_WEIGHT, ACC)
    m = tl.full([BLOCK_P], float("-inf"), ACC)
    for k in range(0, K):
        m = tl.maximum(m, tl.load(xb + k * sk, mask=pmask, other=0.0).to(ACC))
    s = tl.zeros([BLOCK_P], ACC)
    xt = tl.zeros([BLOCK_P], ACC)                                         # the target's logit
    for k in range(0, K):
        xk = tl.load(xb + k * sk, mask=pmask, other=0.0).to(ACC)
        s += tl.exp(xk - m)
        xt += tl.where(t == k, xk, 0.0)
    lse = m + tl.log(s)
    nan = float("nan")
    loss = tl.where(ok, (lse - xt) * wt, tl.where(valid, nan, 0.0))       # (P,)
    if PER_PIXEL:
        tl.store(out_ptr + n.to(tl.int64) * HW + p, loss.to(out_ptr.dtype.element_ty), mask=pmask)
    else:
        wsum = tl.where(ok, wt, tl.where(valid, nan, 0.0))
        tl.store(part_ptr + 2 * pid, tl.sum(loss, axis=0))
        tl.store(part_ptr + 2 * pid + 1, tl.sum(wsum, axis=0))


@triton.jit
def _finalize(part_ptr, num_parts, out_ptr, denom_ptr, MEAN: tl.constexpr, ACC: tl.constexpr,
              BLOCK: tl.constexpr):
    """loss = sum of the partial losses (/ sum of the partial weights for 'mean'), in a fixed order."""
    acc_l = tl.zeros([BLOCK], ACC)
    acc_w = tl.zeros([BLOCK], ACC)
    for s in range(0, num_parts, BLOCK):
        i = s + tl.arange(0, BLOCK)
        acc_l += tl.load(part_ptr + 2 * i, mask=i < num_parts, other=0.0)
        acc_w += tl.load(part_ptr + 2 * i + 1, mask=i < num_parts, other=0.0)
    total, wsum = tl.sum(acc_l, axis=0), tl.sum(acc_w, axis=0)
    if MEAN:
        tl.store(out_ptr, (total / wsum).to(out_ptr.dtype.element_ty))
        tl.store(denom_ptr, wsum)
    else:
        tl.store(out_ptr, total.to(out_ptr.dtype.element_ty))
        tl.store(denom_ptr, 1.0)


@triton.jit
def _bwd(x_ptr, t_ptr, w_ptr, g_ptr, denom_ptr, dx_ptr, K, HW, W, blocks_per_image, sxn, sxk, sxh, sxw,
         sdn, sdk, sdh, sdw, sw_k, ignore_index, HAS_WEIGHT: tl.constexpr, PER_PIXEL: tl.constexpr,
         FLAT_X: tl.constexpr, FLAT_D: tl.constexpr, ACC: tl.constexpr, BLOCK_P: tl.constexpr):
    pid = tl.program_id(0)
    n = pid // blocks_per_image
    p = (pid % blocks_per_image) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = p < HW
    n64 = n.to(tl.int64)
    xb = x_ptr + n64 * sxn + _pixel_offsets(p, W, sxh, sxw, FLAT_X)
    db = dx_ptr + n64 * sdn + _pixel_offsets(p, W, sdh, sdw, FLAT_D)
    sk, dk = sxk.to(tl.int64), sdk.to(tl.int64)
    t, valid, ok, wt = _target_and_weight(t_ptr, w_ptr, sw_k, n, p, pmask, HW, K, ignore_index, HAS_WEIGHT, ACC)
    if PER_PIXEL:
        g = tl.load(g_ptr + n64 * HW + p, mask=pmask, other=0.0).to(ACC)
    else:
        g = tl.load(g_ptr).to(ACC) / tl.load(denom_ptr).to(ACC)
    scale = tl.where(ok, g * wt, tl.where(valid, float("nan"), 0.0))      # (P,) 0 at ignored pixels
    lse = _log_sum_exp(xb, sk, K, pmask, BLOCK_P, ACC)
    for k in range(0, K):
        xk = tl.load(xb + k * sk, mask=pmask, other=0.0).to(ACC)
        dxk = scale * (tl.exp(xk - lse) - tl.where(t == k, 1.0, 0.0))
        tl.store(db + k * dk, dxk.to(dx_ptr.dtype.element_ty), mask=pmask)


def _grid(n: int, hw: int):
    blocks = triton.cdiv(hw, BLOCK_P)
    return blocks, (n * blocks,)


def softmax_cross_entropy_fwd(logits, target, weight, ignore_index: int, reduction: str):
    """-> (loss: () or (N, H, W) in logits.dtype, denom: () acc dtype; the mean's divisor)."""
    n, k, h, w = logits.shape
    acc, acc_tl = acc_dtype(logits)
    t = target.contiguous()
    blocks, grid = _grid(n, h * w)
    per_pixel = reduction == "none"
    out = alloc.empty((n, h, w) if per_pixel else (), logits.dtype, logits.device)
    denom = alloc.empty((), acc, logits.device)
    part = alloc.empty((2 * grid[0],), acc, logits.device) if not per_pixel else denom
    sxn, sxk, sxh, sxw = logits.stride()
    _fwd[grid](logits, t, weight if weight is not None else t, out, part, k, h * w, w, blocks,
               sxn, sxk, sxh, sxw, weight.stride(0) if weight is not None else 0, ignore_index,
               HAS_WEIGHT=weight is not None, PER_PIXEL=per_pixel, FLAT=flat_pixels(h, w, sxh, sxw),
               ACC=acc_tl, BLOCK_P=BLOCK_P)
    if per_pixel:
        denom.fill_(1.0)
    else:
        _finalize[(1,)](part, grid[0], out, denom, MEAN=reduction == "mean", ACC=acc_tl, BLOCK=FINAL_BLOCK)
    return out, denom


def softmax_cross_entropy_bwd(grad, logits, target, weight, denom, ignore_index: int, reduction: str):
    n, k, h, w = logits.shape
    _, acc_tl = acc_dtype(logits)
    dx = alloc.empty_like(logits)                                 # keeps channels_last if the input has it
    per_pixel = reduction == "none"
    g = grad.contiguous()
    blocks, grid = _grid(n, h * w)
    sx, sd = logits.stride(), dx.stride()
    _bwd[grid](logits, target.contiguous(), weight if weight is not None else denom, g, denom, dx,
               k, h * w, w, blocks, *sx, *sd, weight.stride(0) if weight is not None else 0, ignore_index,
               HAS_WEIGHT=weight is not None, PER_PIXEL=per_pixel, FLAT_X=flat_pixels(h, w, sx[2], sx[3]),
               FLAT_D=flat_pixels(h, w, sd[2], sd[3]), ACC=acc_tl, BLOCK_P=BLOCK_P)
    return dx
