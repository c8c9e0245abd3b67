"""Pixelwise softmax cross-entropy, Triton forward and backward.

A program handles BLOCK_P pixels of one image as a [BLOCK_P, KC] tile of logits (KC classes at a time,
K a constexpr): the compiler coalesces the tile along whichever axis has stride 1, pixels in NCHW,
classes in channels_last, so both layouts read each logit once with wide, contiguous accesses. The
softmax is online over class chunks (one chunk when K <= 64: every class of a pixel in registers).

Bytes per pixel (s = bytes per logit; floor 2 K s + 1: logits read once, gradient written once):
  forward   reads logits and target (K s + 1), writes the log-sum-exp (4); 'mean' / 'sum' write one
            (loss, weight) partial per program, and the program that finishes last sums them in order
            and divides on the device (kernels/reduction.py): one launch, deterministic, no host sync
  backward  reads logits, target and log-sum-exp (K s + 5), writes the gradient (K s)
so forward + backward moves 3 K s + 10: 1.60x the floor at K = 21 in bf16, 1.55x in fp32. The floor
needs the gradient written by the forward, which a backward that must honour any upstream gradient on
the device cannot use without a second pass over it (4 K s); the re-read is the price of exactness.
A target outside [0, K) that is not ignore_index reads nothing and gives NaN at its pixel.
"""
import triton
import triton.language as tl

from .common import acc_dtype, counter, empty, empty_like, flat_pixels, next_pow2, tl_dtype
from .reduction import last_program, sum_partials

TILE = 1024             # logits per program tile (BLOCK_P x KC): 8 per thread with 4 warps
MAX_KC = 64             # classes held in registers at once
FINAL_BLOCK = 256
REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}


@triton.jit
def _pixel_offsets(n, p, W, sn, sh, sw, FLAT: tl.constexpr):
    """int64 offsets of pixels p (P,) of image n."""
    if FLAT:
        return n.to(tl.int64) * sn + p.to(tl.int64) * sw
    return n.to(tl.int64) * sn + (p // W).to(tl.int64) * sh + (p % W).to(tl.int64) * sw


@triton.jit
def _target_and_weight(t_ptr, w_ptr, sw_k, n, p, pmask, HW, K: tl.constexpr, ignore_index, HAS_WEIGHT: tl.constexpr,
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
def _lse_and_target_logit(x_ptr, row, pmask, t, sk, K: tl.constexpr, KC: tl.constexpr, ACC: tl.constexpr,
                          BLOCK_P: tl.constexpr):
    """(log-sum-exp, logit of the target) of each pixel; row: offsets of class 0 of each pixel. Online
    over class chunks; exact for -inf logits (a chunk of -inf contributes 0), NaN propagates."""
    m = tl.full([BLOCK_P], float("-inf"), ACC)
    s = tl.zeros([BLOCK_P], ACC)
    xt = tl.zeros([BLOCK_P], ACC)
    for k0 in tl.static_range(0, K, KC):
        k = k0 + tl.arange(0, KC)
        msk = pmask[:, None] & (k < K)[None, :]
        x = tl.load(x_ptr + row[:, None] + k.to(tl.int64)[None, :] * sk, mask=msk,
                    other=float("-inf")).to(ACC)                          # (P, KC)
        m_new = tl.maximum(m, tl.max(x, axis=1))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - shift) + tl.sum(tl.exp(x - shift[:, None]), axis=1)
        m = m_new
        xt += tl.sum(tl.where(k[None, :] == t[:, None], x, 0.0), axis=1)
    return m + tl.log(s), xt


@triton.jit
def _fwd(x_ptr, t_ptr, w_ptr, lse_ptr, out_ptr, denom_ptr, part_ptr, counter_ptr, HW, W, blocks_per_image,
         num_programs, sxn, sxk, sxh, sxw, sw_k, ignore_index, K: tl.constexpr, KC: tl.constexpr,
         HAS_WEIGHT: tl.constexpr, REDUCTION: tl.constexpr, FLAT: tl.constexpr, ACC: tl.constexpr,
         BLOCK_P: tl.constexpr, FINAL_BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    n = pid // blocks_per_image
    p = (pid % blocks_per_image) * BLOCK_P + tl.arange(0, BLOCK_P)          # (P,) pixels of image n
    pmask = p < HW
    t, valid, ok, wt = _target_and_weight(t_ptr, w_ptr, sw_k, n, p, pmask, HW, K, ignore_index, HAS_WEIGHT, ACC)
    row = _pixel_offsets(n, p, W, sxn, sxh, sxw, FLAT)
    lse, xt = _lse_and_target_logit(x_ptr, row, pmask, t, sxk, K, KC, ACC, BLOCK_P)
    tl.store(lse_ptr + n.to(tl.int64) * HW + p, lse, mask=pmask)
    nan = float("nan")
    loss = tl.where(ok, (lse - xt) * wt, tl.where(valid, nan, 0.0))      # (P,)
    if REDUCTION == 0:
        tl.store(out_ptr + n.to(tl.int64) * HW + p, loss.to(out_ptr.dtype.element_ty), mask=pmask)
        if pid == 0:
            tl.store(denom_ptr, 1.0)
    else:
        wsum = tl.where(ok, wt, tl.where(valid, nan, 0.0))
        tl.store(part_ptr + 2 * pid, tl.sum(loss, axis=0))
        tl.store(part_ptr + 2 * pid + 1, tl.sum(wsum, axis=0))
        if last_program(counter_ptr, num_programs):
            total = sum_partials(part_ptr, 0, 2, num_programs, ACC, FINAL_BLOCK)
            if REDUCTION == 1:
                weights = sum_partials(part_ptr, 1, 2, num_programs, ACC, FINAL_BLOCK)
                tl.store(out_ptr, (total / weights).to(out_ptr.dtype.element_ty))
                tl.store(denom_ptr, weights)
            else:
                tl.store(out_ptr, total.to(out_ptr.dtype.element_ty))
                tl.store(denom_ptr, 1.0)


@triton.jit
def _bwd(x_ptr, t_ptr, w_ptr, g_ptr, denom_ptr, lse_ptr, dx_ptr, HW, W, blocks_per_image, sxn, sxk, sxh, sxw,
         sdn, sdk, sdh, sdw, sw_k, ignore_index, K: tl.constexpr, KC: tl.constexpr, HAS_WEIGHT: tl.constexpr,
         PER_PIXEL: tl.constexpr, FLAT_X: tl.constexpr, FLAT_D: tl.constexpr, ACC: tl.constexpr,
         BLOCK_P: tl.constexpr):
    pid = tl.program_id(0)
    n = pid // blocks_per_image
    p = (pid % blocks_per_image) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = p < HW
    t, valid, ok, wt = _target_and_weight(t_ptr, w_ptr, sw_k, n, p, pmask, HW, K, ignore_index, HAS_WEIGHT, ACC)
    pix = n.to(tl.int64) * HW + p
    if PER_PIXEL:
        g = tl.load(g_ptr + pix, mask=pmask, other=0.0).to(ACC)
    else:
        g = tl.load(g_ptr).to(ACC) / tl.load(denom_ptr).to(ACC)
    scale = tl.where(ok, g * wt, tl.where(valid, float("nan"), 0.0))      # (P,) 0 at ignored pixels
    lse = tl.load(lse_ptr + pix, mask=pmask, other=0.0)
    xrow = _pixel_offsets(n, p, W, sxn, sxh, sxw, FLAT_X)
    drow = _pixel_offsets(n, p, W, sdn, sdh, sdw, FLAT_D)
    for k0 in tl.static_range(0, K, KC):
        k = k0 + tl.arange(0, KC)
        k64 = k.to(tl.int64)[None, :]
        msk = pmask[:, None] & (k < K)[None, :]
        x = tl.load(x_ptr + xrow[:, None] + k64 * sxk, mask=msk, other=0.0).to(ACC)      # (P, KC)
        dx = scale[:, None] * (tl.exp(x - lse[:, None]) - tl.where(k[None, :] == t[:, None], 1.0, 0.0))
        tl.store(dx_ptr + drow[:, None] + k64 * sdk, dx.to(dx_ptr.dtype.element_ty), mask=msk)


def blocks(k: int):
    """(KC, BLOCK_P): classes per chunk and pixels per program for K classes."""
    kc = min(next_pow2(k), MAX_KC)
    return kc, max(16, TILE // kc)


def grid(n: int, hw: int, block_p: int):
    """(programs per image, grid): one axis, so the number of images is not bounded by a grid axis."""
    per_image = triton.cdiv(hw, block_p)
    return per_image, (n * per_image,)


def _weight_args(weight, fallback):
    return (weight, weight.stride(0)) if weight is not None else (fallback, 0)


def softmax_cross_entropy_fwd(logits, target, weight, ignore_index: int, reduction: str):
    """-> (loss: () acc dtype, or (N, H, W) logits dtype for 'none'; denom: () acc, the mean's divisor;
    lse: (N, H, W) acc, saved for the backward)."""
    n, k, h, w = logits.shape
    acc = acc_dtype(logits.dtype)
    t = target.contiguous()
    kc, block_p = blocks(k)
    per_image, g = grid(n, h * w, block_p)
    mode = REDUCTIONS[reduction]
    out = empty((n, h, w), logits.dtype, logits.device) if mode == 0 else empty((), acc, logits.device)
    denom = empty((), acc, logits.device)
    lse = empty((n, h, w), acc, logits.device)
    part = empty((2 * g[0],), acc, logits.device) if mode else denom
    wt, sw_k = _weight_args(weight, t)
    sxn, sxk, sxh, sxw = logits.stride()
    _fwd[g](logits, t, wt, lse, out, denom, part, counter(logits.device), h * w, w, per_image, g[0],
            sxn, sxk, sxh, sxw, sw_k, ignore_index, K=k, KC=kc, HAS_WEIGHT=weight is not None, REDUCTION=mode,
            FLAT=flat_pixels(h, w, sxh, sxw), ACC=tl_dtype(acc), BLOCK_P=block_p, FINAL_BLOCK=FINAL_BLOCK)
    return out, denom, lse


def softmax_cross_entropy_bwd(grad, logits, target, weight, denom, lse, ignore_index: int, reduction: str):
    n, k, h, w = logits.shape
    dx = empty_like(logits)                                       # keeps channels_last if the input has it
    kc, block_p = blocks(k)
    per_image, g = grid(n, h * w, block_p)
    wt, sw_k = _weight_args(weight, denom)
    sx, sd = logits.stride(), dx.stride()
    _bwd[g](logits, target.contiguous(), wt, grad.contiguous(), denom, lse, dx, h * w, w, per_image, *sx, *sd,
            sw_k, ignore_index, K=k, KC=kc, HAS_WEIGHT=weight is not None, PER_PIXEL=reduction == "none",
            FLAT_X=flat_pixels(h, w, sx[2], sx[3]), FLAT_D=flat_pixels(h, w, sd[2], sd[3]),
            ACC=tl_dtype(acc_dtype(logits.dtype)), BLOCK_P=block_p)
    return dx

