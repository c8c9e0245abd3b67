"""Instance norm (affine=False, biased variance) + leaky ReLU, Triton forward and backward.

    y = act((x - mean) rstd),  act(v) = v < 0 ? slope v : v   (slope 0: ReLU; 1: no activation)

`act` is written with `where(v < 0, ...)` so that NaN propagates (tl.maximum drops NaN on the GPU).
Backward recomputes x_hat from the saved mean and rstd: g = dy * act'(x_hat), a = mean(g),
b = mean(g x_hat), dx = rstd (g - a - x_hat b). Statistics in fp32 (fp64 for fp64 inputs). Every
kernel indexes by strides, so any layout works; the launcher picks block shapes for the one x has.

Two designs (tensor passes: the floor is 5, forward reads x and writes y, backward reads x and dy and
writes dx):
  plane   the whole plane of BLOCK_C channels of one image in one program's registers: exact two-pass
          statistics from registers; 2 passes forward, 3 backward, the floor. In channels_last BLOCK_C
          spans one 32-byte sector per pixel (16 bf16 / 8 fp32 channels), so planes of up to 1024
          (bf16) / 2048 (fp32) pixels fit; in NCHW planes of up to 16384 pixels.
  tiles   larger planes: programs of BLOCK_C channels over a chunk of pixels, [BLOCK_R, BLOCK_C] tiles
          coalesced along the contiguous axis, per-thread partial sums reduced once per program, enough
          chunks for PROGRAMS_PER_SM programs per SM. Statistics are sums of x - pivot and (x - pivot)^2
          (pivot: the channel's first pixel), additive across chunks and free of the cancellation of
          E[x^2] - E[x]^2 on offset inputs; a second kernel sums them in chunk order (deterministic) and
          re-reads its chunk: 3 passes forward, 5 backward, 8 against the floor's 5 (1.6x) since each
          re-read crosses a launch. A plane of coalesced channels does not fit on chip at 64x64 and up
          (4096 pixels x 16 bf16 channels = 128 KB, more than a program's share of registers).
"""
import triton
import triton.language as tl

from .common import acc_dtype, empty, empty_like, flat_pixels, next_pow2, sm_count, tl_dtype

PLANE_MAX = 16384       # elements of a plane program (32 per thread with 16 warps)
TILE = 256              # elements of a tiles program's [BLOCK_R, BLOCK_C] tile (2 per thread with 4 warps)
SECTOR = 32             # bytes: the smallest full memory transaction, the channels_last plane's width
PROGRAMS_PER_SM = 8


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


@triton.jit
def _offsets(n, p, c, W, sn, sc, sh, sw, FLAT: tl.constexpr):
    """int64 offsets (P, C) of pixels p (P,) and channels c (C,) of image n."""
    if FLAT:
        pix = p.to(tl.int64) * sw
    else:
        pix = (p // W).to(tl.int64) * sh + (p % W).to(tl.int64) * sw
    return n.to(tl.int64) * sn + pix[:, None] + c.to(tl.int64)[None, :] * sc


@triton.jit
def _channels(C, BLOCK_C: tl.constexpr):
    """(image n, channels c of this program, their mask, index of their statistics)."""
    n = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    return n, c, c < C, n.to(tl.int64) * C + c


@triton.jit
def _xh_and_gate(dy_ptr, x_ptr, n, p, c, m, W, mean, rstd, sgn, sgc, sgh, sgw, sxn, sxc, sxh, sxw,
                 SLOPE: tl.constexpr, FLAT_G: tl.constexpr, FLAT_X: tl.constexpr, ACC: tl.constexpr):
    """(x_hat, g = dy act'(x_hat)) of the tile of pixels p and channels c (g is 0 where m is false)."""
    x = tl.load(x_ptr + _offsets(n, p, c, W, sxn, sxc, sxh, sxw, FLAT_X), mask=m, other=0.0).to(ACC)
    dy = tl.load(dy_ptr + _offsets(n, p, c, W, sgn, sgc, sgh, sgw, FLAT_G), mask=m, other=0.0).to(ACC)
    xh = (x - mean[None, :]) * rstd[None, :]
    return xh, tl.where(m, _gate(dy, xh, SLOPE), 0.0)


# -- plane: the whole plane of BLOCK_C channels in registers -----------------------------------------

@triton.jit
def _plane_fwd(x_ptr, y_ptr, mean_ptr, rstd_ptr, C, HW, W, eps, sxn, sxc, sxh, sxw, syn, syc, syh, syw,
               SLOPE: tl.constexpr, FLAT_X: tl.constexpr, FLAT_Y: tl.constexpr, ACC: tl.constexpr,
               BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    n, c, cmask, stat = _channels(C, BLOCK_C)
    p = tl.arange(0, BLOCK_P)
    m = (p < HW)[:, None] & cmask[None, :]
    x = tl.load(x_ptr + _offsets(n, p, c, W, sxn, sxc, sxh, sxw, FLAT_X), mask=m, other=0.0).to(ACC)  # (P, C)
    pivot = tl.sum(tl.where(p[:, None] == 0, x, 0.0), axis=0)      # the first pixel: sums of x - pivot are
    d = tl.where(m, x - pivot[None, :], 0.0)                         # exact on offset inputs in any order
    shift = tl.sum(d, axis=0) / HW
    d = tl.where(m, d - shift[None, :], 0.0)
    mean = pivot + shift
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=0) / HW + eps)
    y = _act(d * rstd[None, :], SLOPE)
    tl.store(y_ptr + _offsets(n, p, c, W, syn, syc, syh, syw, FLAT_Y), y.to(y_ptr.dtype.element_ty), mask=m)
    tl.store(mean_ptr + stat, mean, mask=cmask)
    tl.store(rstd_ptr + stat, rstd, mask=cmask)


@triton.jit
def _plane_bwd(dy_ptr, x_ptr, mean_ptr, rstd_ptr, dx_ptr, C, HW, W, sgn, sgc, sgh, sgw, sxn, sxc, sxh, sxw,
               sdn, sdc, sdh, sdw, SLOPE: tl.constexpr, FLAT_G: tl.constexpr, FLAT_X: tl.constexpr,
               FLAT_D: tl.constexpr, ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    n, c, cmask, stat = _channels(C, BLOCK_C)
    mean = tl.load(mean_ptr + stat, mask=cmask, other=0.0)
    rstd = tl.load(rstd_ptr + stat, mask=cmask, other=0.0)
    p = tl.arange(0, BLOCK_P)
    m = (p < HW)[:, None] & cmask[None, :]
    xh, g = _xh_and_gate(dy_ptr, x_ptr, n, p, c, m, W, mean, rstd, sgn, sgc, sgh, sgw, sxn, sxc, sxh, sxw,
                         SLOPE, FLAT_G, FLAT_X, ACC)
    a = tl.sum(g, axis=0) / HW
    b = tl.sum(g * xh, axis=0) / HW
    dx = rstd[None, :] * (g - a[None, :] - xh * b[None, :])
    tl.store(dx_ptr + _offsets(n, p, c, W, sdn, sdc, sdh, sdw, FLAT_D), dx.to(dx_ptr.dtype.element_ty), mask=m)


# -- tiles: planes split into chunks, two passes -------------------------------------------------------

@triton.jit
def _chunk(HW, chunk):
    """(index, first pixel, end) of this program's chunk."""
    s = tl.program_id(2)
    return s, s * chunk, tl.minimum(s * chunk + chunk, HW)


@triton.jit
def _part(n, s, S, C, c):
    """Offsets of the two partial sums of chunk s of image n, channels c, in part (N, S, 2, C)."""
    return ((n * S + s) * 2).to(tl.int64) * C + c


@triton.jit
def _pivot(x_ptr, n, c, cmask, sn, sc, ACC: tl.constexpr):
    """The first pixel of each channel: the shift of the statistics' sums."""
    return tl.load(x_ptr + n.to(tl.int64) * sn + c.to(tl.int64) * sc, mask=cmask, other=0.0).to(ACC)


@triton.jit
def _sum_chunks(part_ptr, n, c, cmask, C, S, ACC: tl.constexpr, BLOCK_C: tl.constexpr):
    """(sum of the first partials, sum of the second) of channels c over the S chunks, in chunk order."""
    u = tl.zeros([BLOCK_C], ACC)
    v = tl.zeros([BLOCK_C], ACC)
    for j in range(0, S):
        off = _part(n, j, S, C, c)
        u += tl.load(part_ptr + off, mask=cmask, other=0.0)
        v += tl.load(part_ptr + off + C, mask=cmask, other=0.0)
    return u, v


@triton.jit
def _tiles_stats(x_ptr, part_ptr, C, HW, W, chunk, S, sn, sc, sh, sw, FLAT: tl.constexpr, ACC: tl.constexpr,
                 BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Per chunk: sum(x - pivot) and sum((x - pivot)^2) of each channel -> part[n, s, :, c]."""
    n, c, cmask, _ = _channels(C, BLOCK_C)
    s, start, end = _chunk(HW, chunk)
    pivot = _pivot(x_ptr, n, c, cmask, sn, sc, ACC)
    s1 = tl.zeros([BLOCK_R, BLOCK_C], ACC)                          # per-thread partial sums
    s2 = tl.zeros([BLOCK_R, BLOCK_C], ACC)
    for r0 in range(start, end, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        m = (r < end)[:, None] & cmask[None, :]
        x = tl.load(x_ptr + _offsets(n, r, c, W, sn, sc, sh, sw, FLAT), mask=m, other=0.0).to(ACC)
        v = tl.where(m, x - pivot[None, :], 0.0)
        s1 += v
        s2 += v * v
    off = _part(n, s, S, C, c)
    tl.store(part_ptr + off, tl.sum(s1, axis=0), mask=cmask)
    tl.store(part_ptr + off + C, tl.sum(s2, axis=0), mask=cmask)


@triton.jit
def _tiles_fwd(x_ptr, y_ptr, part_ptr, mean_ptr, rstd_ptr, C, HW, W, chunk, S, eps, sxn, sxc, sxh, sxw,
               syn, syc, syh, syw, SLOPE: tl.constexpr, FLAT_X: tl.constexpr, FLAT_Y: tl.constexpr,
               ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    n, c, cmask, stat = _channels(C, BLOCK_C)
    s, start, end = _chunk(HW, chunk)
    s1, s2 = _sum_chunks(part_ptr, n, c, cmask, C, S, ACC, BLOCK_C)
    shift = s1 / HW
    var = s2 / HW - shift * shift
    var = tl.where(var < 0, 0.0, var)                               # rounding; NaN stays NaN
    mean = _pivot(x_ptr, n, c, cmask, sxn, sxc, ACC) + shift
    rstd = 1.0 / tl.sqrt(var + eps)
    if s == 0:
        tl.store(mean_ptr + stat, mean, mask=cmask)
        tl.store(rstd_ptr + stat, rstd, mask=cmask)
    for r0 in range(start, end, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        m = (r < end)[:, None] & cmask[None, :]
        x = tl.load(x_ptr + _offsets(n, r, c, W, sxn, sxc, sxh, sxw, FLAT_X), mask=m, other=0.0).to(ACC)
        y = _act((x - mean[None, :]) * rstd[None, :], SLOPE)
        tl.store(y_ptr + _offsets(n, r, c, W, syn, syc, syh, syw, FLAT_Y), y.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _tiles_bwd_sums(dy_ptr, x_ptr, mean_ptr, rstd_ptr, part_ptr, C, HW, W, chunk, S, sgn, sgc, sgh, sgw,
                    sxn, sxc, sxh, sxw, SLOPE: tl.constexpr, FLAT_G: tl.constexpr, FLAT_X: tl.constexpr,
                    ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Per chunk: sum(g) and sum(g x_hat) of each channel -> part[n, s, :, c]."""
    n, c, cmask, stat = _channels(C, BLOCK_C)
    s, start, end = _chunk(HW, chunk)
    mean = tl.load(mean_ptr + stat, mask=cmask, other=0.0)
    rstd = tl.load(rstd_ptr + stat, mask=cmask, other=0.0)
    a = tl.zeros([BLOCK_R, BLOCK_C], ACC)                           # per-thread partial sums
    b = tl.zeros([BLOCK_R, BLOCK_C], ACC)
    for r0 in range(start, end, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        m = (r < end)[:, None] & cmask[None, :]
        xh, g = _xh_and_gate(dy_ptr, x_ptr, n, r, c, m, W, mean, rstd, sgn, sgc, sgh, sgw, sxn, sxc, sxh, sxw,
                             SLOPE, FLAT_G, FLAT_X, ACC)
        a += g
        b += g * xh
    off = _part(n, s, S, C, c)
    tl.store(part_ptr + off, tl.sum(a, axis=0), mask=cmask)
    tl.store(part_ptr + off + C, tl.sum(b, axis=0), mask=cmask)


@triton.jit
def _tiles_bwd(dy_ptr, x_ptr, mean_ptr, rstd_ptr, part_ptr, dx_ptr, C, HW, W, chunk, S, sgn, sgc, sgh, sgw,
               sxn, sxc, sxh, sxw, sdn, sdc, sdh, sdw, SLOPE: tl.constexpr, FLAT_G: tl.constexpr,
               FLAT_X: tl.constexpr, FLAT_D: tl.constexpr, ACC: tl.constexpr, BLOCK_R: tl.constexpr,
               BLOCK_C: tl.constexpr):
    n, c, cmask, stat = _channels(C, BLOCK_C)
    s, start, end = _chunk(HW, chunk)
    mean = tl.load(mean_ptr + stat, mask=cmask, other=0.0)
    rstd = tl.load(rstd_ptr + stat, mask=cmask, other=0.0)
    a, b = _sum_chunks(part_ptr, n, c, cmask, C, S, ACC, BLOCK_C)
    a = a / HW
    b = b / HW
    for r0 in range(start, end, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        m = (r < end)[:, None] & cmask[None, :]
        xh, g = _xh_and_gate(dy_ptr, x_ptr, n, r, c, m, W, mean, rstd, sgn, sgc, sgh, sgw, sxn, sxc, sxh, sxw,
                             SLOPE, FLAT_G, FLAT_X, ACC)
        dx = rstd[None, :] * (g - a[None, :] - xh * b[None, :])
        tl.store(dx_ptr + _offsets(n, r, c, W, sdn, sdc, sdh, sdw, FLAT_D), dx.to(dx_ptr.dtype.element_ty), mask=m)


# -- launchers ---------------------------------------------------------------------------------------

def _channels_contiguous(x) -> bool:
    return x.stride(1) == 1 and x.shape[1] > 1


def plane_blocks(x):
    """(BLOCK_P, BLOCK_C) of the plane design for x, or None when its planes do not fit."""
    n, c, h, w = x.shape
    hwp = next_pow2(h * w)
    if _channels_contiguous(x):                                      # one sector of channels per pixel
        bc = min(next_pow2(c), max(1, SECTOR // x.element_size()))
    else:                                                            # small planes: several per program
        bc = min(next_pow2(c), max(1, 1024 // hwp))
    return (hwp, bc) if hwp * bc <= PLANE_MAX else None


def tiles(x, chunks: int | None = None):
    """(BLOCK_R, BLOCK_C, chunk, S, grid) of the tiles design for x; `chunks` forces a chunk count."""
    n, c, h, w = x.shape
    hw = h * w
    bc = min(next_pow2(c), 64 if _channels_contiguous(x) else 4)
    br = max(4, TILE // bc)
    c_blocks = triton.cdiv(c, bc)
    if chunks is None:
        chunks = triton.cdiv(PROGRAMS_PER_SM * sm_count(x.device), n * c_blocks)
    chunks = max(1, min(chunks, triton.cdiv(hw, br)))
    chunk = triton.cdiv(triton.cdiv(hw, chunks), br) * br           # a whole number of row tiles
    s = triton.cdiv(hw, chunk)
    return br, bc, chunk, s, (n, c_blocks, s)


def _plane_warps(elements: int) -> int:
    return max(1, min(16, elements // 1024))                        # ~32 elements per thread


def _flat(t):
    h, w = t.shape[2:]
    return flat_pixels(h, w, t.stride(2), t.stride(3))


def instance_norm_relu_fwd(x, eps: float, slope: float = 0.0, chunks: int | None = None):
    """-> (y like x, mean (N, C), rstd (N, C)); `chunks` forces the tiles design with that many chunks."""
    n, c, h, w = x.shape
    acc = acc_dtype(x.dtype)
    y = empty_like(x)
    mean, rstd = empty((n, c), acc, x.device), empty((n, c), acc, x.device)
    sx, sy = x.stride(), y.stride()
    common = dict(SLOPE=float(slope), FLAT_X=_flat(x), FLAT_Y=_flat(y), ACC=tl_dtype(acc))
    plane = plane_blocks(x) if chunks is None else None
    if plane:
        bp, bc = plane
        _plane_fwd[(n, triton.cdiv(c, bc))](x, y, mean, rstd, c, h * w, w, eps, *sx, *sy, **common, BLOCK_P=bp,
                                            BLOCK_C=bc, num_warps=_plane_warps(bp * bc))
        return y, mean, rstd
    br, bc, chunk, s, grid = tiles(x, chunks)
    part = empty((n, s, 2, c), acc, x.device)
    _tiles_stats[grid](x, part, c, h * w, w, chunk, s, *sx, FLAT=common["FLAT_X"], ACC=common["ACC"], BLOCK_R=br,
                       BLOCK_C=bc)
    _tiles_fwd[grid](x, y, part, mean, rstd, c, h * w, w, chunk, s, eps, *sx, *sy, **common, BLOCK_R=br, BLOCK_C=bc)
    return y, mean, rstd


def instance_norm_relu_bwd(grad, x, mean, rstd, slope: float = 0.0, chunks: int | None = None):
    n, c, h, w = x.shape
    dx = empty_like(x)
    sg, sx, sd = grad.stride(), x.stride(), dx.stride()
    common = dict(SLOPE=float(slope), FLAT_G=_flat(grad), FLAT_X=_flat(x), ACC=tl_dtype(acc_dtype(x.dtype)))
    plane = plane_blocks(x) if chunks is None else None
    if plane:
        bp, bc = plane
        _plane_bwd[(n, triton.cdiv(c, bc))](grad, x, mean, rstd, dx, c, h * w, w, *sg, *sx, *sd, **common,
                                            FLAT_D=_flat(dx), BLOCK_P=bp, BLOCK_C=bc,
                                            num_warps=_plane_warps(bp * bc))
        return dx
    br, bc, chunk, s, grid = tiles(x, chunks)
    part = empty((n, s, 2, c), mean.dtype, x.device)
    _tiles_bwd_sums[grid](grad, x, mean, rstd, part, c, h * w, w, chunk, s, *sg, *sx, **common, BLOCK_R=br,
                          BLOCK_C=bc)
    _tiles_bwd[grid](grad, x, mean, rstd, part, dx, c, h * w, w, chunk, s, *sg, *sx, *sd, **common, FLAT_D=_flat(dx),
                     BLOCK_R=br, BLOCK_C=bc)
    return dx
