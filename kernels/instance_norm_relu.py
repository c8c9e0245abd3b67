"""Instance norm (affine=False, biased variance) + leaky ReLU, Triton forward and backward.

    y = act((x - mean) rstd),  act(v) = v < 0 ? slope v : v   (slope 0: ReLU; 1: no activation)

`act` is written with `where(v < 0, ...)` so that NaN propagates (tl.maximum drops NaN on the GPU).
Backward recomputes x_hat from the saved mean and rstd: g = dy * act'(x_hat), a = mean(g),
b = mean(g x_hat), dx = rstd (g - a - x_hat b). Statistics in fp32 (fp64 for fp64 inputs).

Two designs, chosen by the launcher:
  plane   NCHW-contiguous planes of up to PLANE_MAX elements: one program per (n, c) plane holds the
          whole plane in registers, exact two-pass statistics, so forward reads x once and writes y
          (2 passes) and backward reads x and dy once and writes dx (3 passes): the floor
  tiles   any layout (channels_last, strided) and larger planes: a program handles BLOCK_C channels of
          one image over a chunk of the plane's pixels, in [BLOCK_R, BLOCK_C] tiles coalesced along
          whichever axis is contiguous; per-chunk statistics (Chan's merge, no E[x^2] - E[x]^2
          cancellation) are merged in a fixed order by a second kernel that re-reads its chunk and
          writes the output: 3 + 5 passes (the re-reads hit L2 when a chunk fits). Planes are split
          into chunks so that small N*C still fills the device; merges are deterministic, no atomics.
"""
import torch
import triton
import triton.language as tl

from cycleseg.ops import alloc

from .common import acc_dtype, flat_pixels, next_pow2, sm_count

PLANE_MAX = 16384


@triton.jit
def _act(v, SLOPE: tl.constexpr):
    if SLOPE == 1.0:
        return v
    if SLOPE == 0.0:
        return tl.where(v < 0, 0.0, v)
    return tl.where(v < 0, v * SLOPE, v)


@triton.jit
def _gate(dy, xh, SLOPE: tl.constexpr):
    """dy * act'(x_hat): dy where x_hat > 0, slope * dy elsewhere (0 at x_hat = 0 for ReLU, as PyTorch)."""
    if SLOPE == 1.0:
        return dy
    if SLOPE == 0.0:
        return tl.where(xh > 0, dy, 0.0)
    return tl.where(xh > 0, dy, dy * SLOPE)


# -- plane: one NCHW plane per program, held in registers ------------------------------------------

@triton.jit
def _plane(HW, BLOCK: tl.constexpr):
    """(plane q of this program, element offsets of the plane, mask)."""
    q = tl.program_id(0)
    i = tl.arange(0, BLOCK)
    return q, q.to(tl.int64) * HW + i, i < HW


@triton.jit
def _plane_fwd(x_ptr, y_ptr, mean_ptr, rstd_ptr, HW, eps, SLOPE: tl.constexpr, ACC: tl.constexpr,
               BLOCK: tl.constexpr):
    q, off, msk = _plane(HW, BLOCK)
    x = tl.load(x_ptr + off, mask=msk, other=0.0).to(ACC)
    mean = tl.sum(x, axis=0) / HW
    d = tl.where(msk, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=0) / HW + eps)
    tl.store(y_ptr + off, _act(d * rstd, SLOPE).to(y_ptr.dtype.element_ty), mask=msk)
    tl.store(mean_ptr + q, mean)
    tl.store(rstd_ptr + q, rstd)


@triton.jit
def _plane_bwd(dy_ptr, x_ptr, mean_ptr, rstd_ptr, dx_ptr, HW, SLOPE: tl.constexpr, ACC: tl.constexpr,
               BLOCK: tl.constexpr):
    q, off, msk = _plane(HW, BLOCK)
    mean = tl.load(mean_ptr + q)
    rstd = tl.load(rstd_ptr + q)
    xh = (tl.load(x_ptr + off, mask=msk, other=0.0).to(ACC) - mean) * rstd
    g = tl.where(msk, _gate(tl.load(dy_ptr + off, mask=msk, other=0.0).to(ACC), xh, SLOPE), 0.0)
    a = tl.sum(g, axis=0) / HW
    b = tl.sum(g * xh, axis=0) / HW
    tl.store(dx_ptr + off, (rstd * (g - a - xh * b)).to(dx_ptr.dtype.element_ty), mask=msk)


# -- tiles: any layout, planes split into chunks ----------------------------------------------------

@triton.jit
def _tile_offsets(n, c, r, W, sn, sc, sh, sw, FLAT: tl.constexpr):
    """Offsets (R, C) of pixels r (R,) and channels c (C,) of image n."""
    if FLAT:
        pix = r.to(tl.int64) * sw
    else:
        pix = (r // W).to(tl.int64) * sh + (r % W).to(tl.int64) * sw
    return n.to(tl.int64) * sn + c.to(tl.int64)[None, :] * sc + pix[:, None]


@triton.jit
def _tiles_stats(x_ptr, part_ptr, C, HW, W, chunk, S, sn, sc, sh, sw, FLAT: tl.constexpr, ACC: tl.constexpr,
                 BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Per chunk s of image n: (mean, M2) of each channel over the chunk's pixels -> part[n, s, :, c]."""
    n, cb, s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    start = s * chunk
    end = tl.minimum(start + chunk, HW)
    cnt = tl.sum(tl.zeros([BLOCK_C], ACC), axis=0)                   # 0-d accumulator of type ACC
    mean = tl.zeros([BLOCK_C], ACC)
    m2 = tl.zeros([BLOCK_C], ACC)
    for r0 in range(start, end, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        rmask = r < end
        m = rmask[:, None] & cmask[None, :]
        x = tl.load(x_ptr + _tile_offsets(n, c, r, W, sn, sc, sh, sw, FLAT), mask=m, other=0.0).to(ACC)
        nb = tl.sum(rmask.to(ACC), axis=0)
        mb = tl.sum(x, axis=0) / nb                                  # (C,)
        d = tl.where(m, x - mb[None, :], 0.0)
        m2b = tl.sum(d * d, axis=0)
        tot = cnt + nb
        delta = mb - mean
        mean = mean + delta * (nb / tot)
        m2 = m2 + m2b + delta * delta * (cnt * nb / tot)
        cnt = tot
    off = ((n * S + s) * 2).to(tl.int64) * C + c
    tl.store(part_ptr + off, mean, mask=cmask)
    tl.store(part_ptr + off + C, m2, mask=cmask)


@triton.jit
def _merge_stats(part_ptr, n, c, cmask, C, HW, chunk, S, eps, ACC: tl.constexpr, BLOCK_C: tl.constexpr):
    """(mean, rstd) of channels c of image n from the S chunk statistics, merged in chunk order."""
    cnt = tl.sum(tl.zeros([BLOCK_C], ACC), axis=0)
    mean = tl.zeros([BLOCK_C], ACC)
    m2 = tl.zeros([BLOCK_C], ACC)
    for s in range(0, S):
        off = ((n * S + s) * 2).to(tl.int64) * C + c
        mb = tl.load(part_ptr + off, mask=cmask, other=0.0)
        m2b = tl.load(part_ptr + off + C, mask=cmask, other=0.0)
        nb = (tl.minimum(chunk, HW - s * chunk)).to(ACC)
        tot = cnt + nb
        delta = mb - mean
        mean = mean + delta * (nb / tot)
        m2 = m2 + m2b + delta * delta * (cnt * nb / tot)
        cnt = tot
    return mean, 1.0 / tl.sqrt(m2 / HW + eps)


@triton.jit
def _tiles_fwd(x_ptr, y_ptr, part_ptr, mean_ptr, rstd_ptr, C, HW, W, chunk, S, eps, sxn, sxc, sxh, sxw,
               syn, syc, syh, syw, SLOPE: tl.constexpr, FLAT_X: tl.constexpr, FLAT_Y: tl.constexpr,
               ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    n, cb, s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    mean, rstd = _merge_stats(part_ptr, n, c, cmask, C, HW, chunk, S, eps, ACC, BLOCK_C)
    if s == 0:
        tl.store(mean_ptr + n.to(tl.int64) * C + c, mean, mask=cmask)
        tl.store(rstd_ptr + n.to(tl.int64) * C + c, rstd, mask=cmask)
    start = s * chunk
    end = tl.minimum(start + chunk, HW)
    for r0 in range(start, end, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        m = (r < end)[:, None] & cmask[None, :]
        x = tl.load(x_ptr + _tile_offsets(n, c, r, W, sxn, sxc, sxh, sxw, FLAT_X), mask=m, other=0.0).to(ACC)
        y = _act((x - mean[None, :]) * rstd[None, :], SLOPE)
        tl.store(y_ptr + _tile_offsets(n, c, r, W, syn, syc, syh, syw, FLAT_Y), y.to(y_ptr.dtype.element_ty),
                 mask=m)


@triton.jit
def _tile_program(mean_ptr, rstd_ptr, C, BLOCK_C: tl.constexpr):
    """(image n, chunk s, channels c, their mask, their saved mean and rstd) of a backward program."""
    n, cb, s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    mean = tl.load(mean_ptr + n.to(tl.int64) * C + c, mask=cmask, other=0.0)
    rstd = tl.load(rstd_ptr + n.to(tl.int64) * C + c, mask=cmask, other=0.0)
    return n, s, c, cmask, mean, rstd


@triton.jit
def _tile_xh_and_gate(dy_ptr, x_ptr, n, c, cmask, r, end, W, mean, rstd, sgn, sgc, sgh, sgw, sxn, sxc, sxh, sxw,
                      SLOPE: tl.constexpr, FLAT_G: tl.constexpr, FLAT_X: tl.constexpr, ACC: tl.constexpr):
    """(mask, x_hat, g = dy act'(x_hat)) of the tile of pixels r and channels c (g is 0 where masked)."""
    m = (r < end)[:, None] & cmask[None, :]
    x = tl.load(x_ptr + _tile_offsets(n, c, r, W, sxn, sxc, sxh, sxw, FLAT_X), mask=m, other=0.0).to(ACC)
    dy = tl.load(dy_ptr + _tile_offsets(n, c, r, W, sgn, sgc, sgh, sgw, FLAT_G), mask=m, other=0.0).to(ACC)
    xh = (x - mean[None, :]) * rstd[None, :]
    return m, xh, tl.where(m, _gate(dy, xh, SLOPE), 0.0)


@triton.jit
def _tiles_bwd_sums(dy_ptr, x_ptr, mean_ptr, rstd_ptr, part_ptr, C, HW, W, chunk, S, sgn, sgc, sgh, sgw,
                    sxn, sxc, sxh, sxw, SLOPE: tl.constexpr, FLAT_G: tl.constexpr, FLAT_X: tl.constexpr,
                    ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Per chunk: sum(g) and sum(g x_hat) of each channel -> part[n, s, :, c]."""
    n, s, c, cmask, mean, rstd = _tile_program(mean_ptr, rstd_ptr, C, BLOCK_C)
    a = tl.zeros([BLOCK_C], ACC)
    b = tl.zeros([BLOCK_C], ACC)
    end = tl.minimum(s * chunk + chunk, HW)
    for r0 in range(s * chunk, end, BLOCK_R):
        _, xh, g = _tile_xh_and_gate(dy_ptr, x_ptr, n, c, cmask, r0 + tl.arange(0, BLOCK_R), end, W, mean, rstd,
                                     sgn, sgc, sgh, sgw, sxn, sxc, sxh, sxw, SLOPE, FLAT_G, FLAT_X, ACC)
        a += tl.sum(g, axis=0)
        b += tl.sum(g * xh, axis=0)
    off = ((n * S + s) * 2).to(tl.int64) * C + c
    tl.store(part_ptr + off, a, mask=cmask)
    tl.store(part_ptr + off + C, b, mask=cmask)


@triton.jit
def _tiles_bwd(dy_ptr, x_ptr, mean_ptr, rstd_ptr, part_ptr, dx_ptr, C, HW, W, chunk, S, sgn, sgc, sgh, sgw,
               sxn, sxc, sxh, sxw, sdn, sdc, sdh, sdw, SLOPE: tl.constexpr, FLAT_G: tl.constexpr,
               FLAT_X: tl.constexpr, FLAT_D: tl.constexpr, ACC: tl.constexpr, BLOCK_R: tl.constexpr,
               BLOCK_C: tl.constexpr):
    n, s, c, cmask, mean, rstd = _tile_program(mean_ptr, rstd_ptr, C, BLOCK_C)
    a = tl.zeros([BLOCK_C], ACC)
    b = tl.zeros([BLOCK_C], ACC)
    for j in range(0, S):                                            # chunk sums, in chunk order
        off = ((n * S + j) * 2).to(tl.int64) * C + c
        a += tl.load(part_ptr + off, mask=cmask, other=0.0)
        b += tl.load(part_ptr + off + C, mask=cmask, other=0.0)
    a = a / HW
    b = b / HW
    end = tl.minimum(s * chunk + chunk, HW)
    for r0 in range(s * chunk, end, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        m, xh, g = _tile_xh_and_gate(dy_ptr, x_ptr, n, c, cmask, r, end, W, mean, rstd,
                                     sgn, sgc, sgh, sgw, sxn, sxc, sxh, sxw, SLOPE, FLAT_G, FLAT_X, ACC)
        dx = rstd[None, :] * (g - a[None, :] - xh * b[None, :])
        tl.store(dx_ptr + _tile_offsets(n, c, r, W, sdn, sdc, sdh, sdw, FLAT_D), dx.to(dx_ptr.dtype.element_ty),
                 mask=m)


# -- launchers ---------------------------------------------------------------------------------------

def _nchw(t: torch.Tensor) -> bool:
    return t.is_contiguous()


def use_plane(x: torch.Tensor, *others) -> bool:
    h, w = x.shape[2:]
    return h * w <= PLANE_MAX and all(_nchw(t) for t in (x, *others))


def _plane_warps(block: int) -> int:
    return max(1, min(16, block // 512))                             # ~16 elements per thread


def _tiles(x: torch.Tensor, chunks: int | None = None):
    """(BLOCK_R, BLOCK_C, chunk, S, grid) of the tiles design for x."""
    n, c, h, w = x.shape
    hw = h * w
    if x.stride(1) == 1 and c > 1:                                   # channels contiguous (channels_last)
        block_c = min(64, next_pow2(c))
        block_r = max(16, 2048 // block_c)
    else:                                                            # pixels contiguous (NCHW) or strided
        block_c = min(8, next_pow2(c))
        block_r = max(16, 2048 // block_c)
    c_blocks = triton.cdiv(c, block_c)
    if chunks is None:                                               # enough programs for ~4 per SM
        chunks = triton.cdiv(4 * sm_count(x.device), n * c_blocks)
    chunks = max(1, min(chunks, triton.cdiv(hw, block_r)))
    chunk = triton.cdiv(triton.cdiv(hw, chunks), block_r) * block_r  # a whole number of row tiles
    s = triton.cdiv(hw, chunk)
    return block_r, block_c, chunk, s, (n, c_blocks, s)


def instance_norm_relu_fwd(x, eps: float, slope: float = 0.0, chunks: int | None = None):
    """-> (y like x, mean (N, C), rstd (N, C)); `chunks` forces the tiles design with that many chunks."""
    n, c, h, w = x.shape
    acc, acc_tl = acc_dtype(x)
    y = alloc.empty_like(x)
    mean = alloc.empty((n, c), acc, x.device)
    rstd = alloc.empty((n, c), acc, x.device)
    if chunks is None and use_plane(x, y):
        block = max(16, next_pow2(h * w))
        _plane_fwd[(n * c,)](x, y, mean, rstd, h * w, eps, SLOPE=float(slope), ACC=acc_tl, BLOCK=block,
                             num_warps=_plane_warps(block))
        return y, mean, rstd
    br, bc, chunk, s, grid = _tiles(x, chunks)
    part = alloc.empty((n, s, 2, c), acc, x.device)
    sx, sy = x.stride(), y.stride()
    _tiles_stats[grid](x, part, c, h * w, w, chunk, s, *sx, FLAT=flat_pixels(h, w, sx[2], sx[3]), ACC=acc_tl,
                       BLOCK_R=br, BLOCK_C=bc)
    _tiles_fwd[grid](x, y, part, mean, rstd, c, h * w, w, chunk, s, eps, *sx, *sy, SLOPE=float(slope),
                     FLAT_X=flat_pixels(h, w, sx[2], sx[3]), FLAT_Y=flat_pixels(h, w, sy[2], sy[3]), ACC=acc_tl,
                     BLOCK_R=br, BLOCK_C=bc)
    return y, mean, rstd


def instance_norm_relu_bwd(grad, x, mean, rstd, slope: float = 0.0, chunks: int | None = None):
    n, c, h, w = x.shape
    acc, acc_tl = acc_dtype(x)
    dx = alloc.empty_like(x)
    if chunks is None and use_plane(x, grad, dx):
        block = max(16, next_pow2(h * w))
        _plane_bwd[(n * c,)](grad, x, mean, rstd, dx, h * w, SLOPE=float(slope), ACC=acc_tl, BLOCK=block,
                             num_warps=_plane_warps(block))
        return dx
    br, bc, chunk, s, grid = _tiles(x, chunks)
    part = alloc.empty((n, s, 2, c), acc, x.device)
    sg, sx, sd = grad.stride(), x.stride(), dx.stride()
    fg, fx, fd = (flat_pixels(h, w, st[2], st[3]) for st in (sg, sx, sd))
    _tiles_bwd_sums[grid](grad, x, mean, rstd, part, c, h * w, w, chunk, s, *sg, *sx, SLOPE=float(slope),
                          FLAT_G=fg, FLAT_X=fx, ACC=acc_tl, BLOCK_R=br, BLOCK_C=bc)
    _tiles_bwd[grid](grad, x, mean, rstd, part, dx, c, h * w, w, chunk, s, *sg, *sx, *sd, SLOPE=float(slope),
                     FLAT_G=fg, FLAT_X=fx, FLAT_D=fd, ACC=acc_tl, BLOCK_R=br, BLOCK_C=bc)
    return dx
