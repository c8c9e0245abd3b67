"""The fused softmax cross-entropy against F.cross_entropy in fp64, on every backend."""
import pytest
import torch
import torch.nn.functional as F

from cycleseg import ops
from cycleseg.kernels.common import acc_dtype
from cycleseg.ops.softmax_cross_entropy import _bwd, _fwd
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def make(n, k, h, w, dtype, ignore_index, frac_ignored, seed=0, weighted=False):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, k, h, w, generator=g, dtype=torch.float64) * 3).to(DEVICE)
    t = torch.randint(0, k, (n, h, w), generator=g)
    t[torch.rand(n, h, w, generator=g) < frac_ignored] = ignore_index
    wt = (torch.rand(k, generator=g, dtype=torch.float64) + 0.5).to(DEVICE) if weighted else None
    return x.to(dtype), t.to(DEVICE), wt


def check(close, x, t, wt, ignore_index, reduction, upstream_seed=1):
    """Forward and input gradient of ops vs F.cross_entropy on the fp64 copy of x."""
    xo = x.detach().clone().requires_grad_()
    xr = x.detach().double().requires_grad_()
    out = ops.softmax_cross_entropy(xo, t, wt.to(x.dtype) if wt is not None and x.dtype == torch.float64 else wt,
                                    ignore_index, reduction)
    ref = F.cross_entropy(xr, t.long(), wt.double() if wt is not None else None, ignore_index=ignore_index,
                          reduction=reduction)
    # 'mean' / 'sum' in the accumulation dtype (fp32 for halves, as F.cross_entropy under autocast)
    assert out.dtype == (x.dtype if reduction == "none" else acc_dtype(x.dtype)) and out.shape == ref.shape
    close(out, ref, x.dtype, "forward")
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(upstream_seed), dtype=torch.float64)
    g = g.to(DEVICE) if reduction == "none" else torch.tensor(1.7, dtype=torch.float64, device=DEVICE)
    out.backward(g.to(out.dtype))
    ref.backward(g)
    assert xo.grad.dtype == x.dtype and xo.grad.stride() == xo.stride()
    close(xo.grad, xr.grad, x.dtype, "grad")


@pytest.mark.parametrize("k", [1, 4, 19, 21, 33])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(backend, close, k, reduction, dtype):
    n = 1 + (k % 3)                                                 # N in {1, 2, 3}
    ignore_index = 255 if k % 2 else -100
    x, t, wt = make(n, k, 31, 37, dtype, ignore_index, 0.2, seed=k, weighted=(k % 4 == 1))
    check(close, x, t, wt, ignore_index, reduction)


@pytest.mark.parametrize("frac", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("ignore_index", [-100, 255])
@pytest.mark.parametrize("weighted", [False, True])
def test_ignored_fractions_fp64(backend, close, frac, ignore_index, weighted):
    x, t, wt = make(2, 5, 9, 13, torch.float64, ignore_index, frac, seed=3, weighted=weighted)
    for reduction in ("mean", "sum", "none"):
        check(close, x, t, wt, ignore_index, reduction)
    if frac == 1.0:                                                  # all ignored: NaN like PyTorch
        assert torch.isnan(ops.softmax_cross_entropy(x, t, wt, ignore_index, "mean"))


@pytest.mark.parametrize("tdtype", [torch.uint8, torch.int32, torch.int64])
def test_target_dtypes_and_channels_last(backend, close, tdtype):
    x, t, wt = make(2, 4, 12, 10, torch.float32, 255, 0.1, seed=5, weighted=True)
    check(close, x.contiguous(memory_format=torch.channels_last), t.to(tdtype), wt, 255, "mean")
    check(close, x.contiguous(memory_format=torch.channels_last), t.to(tdtype), None, 255, "none")


def test_strided_logits_and_weight(backend, close):
    """Any strides: a logits view with gaps between pixels and a non-contiguous class weight (the
    Triton path once read the weight as if contiguous: 1.9111 instead of 1.9451)."""
    g = torch.Generator().manual_seed(8)
    wide = torch.randn(2, 4, 10, 28, dtype=torch.float64, generator=g).to(DEVICE)
    t = torch.randint(0, 4, (2, 10, 14), generator=g).to(DEVICE)
    t[0, 0] = 255
    w = torch.rand(8, generator=g, dtype=torch.float64).to(DEVICE)[::2]
    assert not w.is_contiguous() and not wide[..., ::2].is_contiguous()
    for reduction in ("mean", "none"):
        a, b = wide.clone().requires_grad_(), wide.clone().requires_grad_()
        out = ops.softmax_cross_entropy(a[..., ::2], t, w, 255, reduction)
        ref = F.cross_entropy(b[..., ::2], t, w, ignore_index=255, reduction=reduction)
        close(out, ref, torch.float64, "forward")
        up = torch.rand(ref.shape, generator=g, dtype=torch.float64).to(DEVICE)
        out.backward(up)
        ref.backward(up)
        close(a.grad, b.grad, torch.float64, "grad")
    x = torch.randn(1, 8, 3, 3, dtype=torch.float32, generator=g).to(DEVICE)
    t = torch.randint(0, 4, (1, 3, 3), generator=g).to(DEVICE)
    w32 = torch.rand(8, generator=g).to(DEVICE)[::2]
    close(ops.softmax_cross_entropy(x[:, :4], t, w32), F.cross_entropy(x[:, :4].double(), t, w32.double()),
          torch.float32, "loss with a strided weight")


def test_many_classes_and_a_flat_grid(backend, close):
    """K has no upper limit (the classes are a loop); the launch grid is one-dimensional, so the number
    of images is not bounded by a grid axis limit (65535)."""
    x, t, wt = make(1, 300, 3, 5, torch.float64, 255, 0.2, seed=6, weighted=True)
    check(close, x, t, wt, 255, "mean")
    if backend == "triton":
        from cycleseg.kernels.softmax_cross_entropy import grid
        per_image, g = grid(100_000, 16, 16)
        assert len(g) == 1 and g[0] == 100_000 * per_image


@pytest.mark.skipif(DEVICE != "cuda", reason="70,000 images in one launch: fast on a GPU only")
def test_more_images_than_a_grid_axis_holds(close):
    x, t, _ = make(70_000, 3, 2, 2, torch.float32, 255, 0.1, seed=7)
    check(close, x, t, None, 255, "mean")


def test_no_grad_and_inputs_untouched(backend, close):
    x, t, _ = make(2, 6, 8, 8, torch.float32, 255, 0.2)
    before = x.clone()
    with torch.no_grad():
        out = ops.softmax_cross_entropy(x, t, ignore_index=255)
    assert torch.equal(x, before)
    close(out, F.cross_entropy(x.double(), t, ignore_index=255), torch.float32)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_every_output_element_written(backend, reduction):
    """Outputs start NaN-filled (ops.poisoned): every element of the loss, the saved log-sum-exp and the
    gradient is written, ignored pixels included (zero there)."""
    x, t, w = make(2, 5, 7, 11, torch.float32, 255, 0.5, seed=9, weighted=True)
    with ops.poisoned():
        loss, denom, lse = _fwd(x, t, w, 255, reduction)
        g = torch.ones(loss.shape, device=DEVICE)
        dx = _bwd(g, x, t, w, denom, lse, 255, reduction)
        probe = _fwd(x, t, w, 255, "none")[0]
    assert not torch.isnan(loss).any() and not torch.isnan(denom) and not torch.isnan(lse).any()
    assert not torch.isnan(dx).any() and not torch.isnan(probe).any()
    assert (dx.permute(1, 0, 2, 3)[:, t == 255] == 0).all()


def test_out_of_range_targets(backend):
    x, t, _ = make(1, 4, 5, 6, torch.float32, 255, 0.0)
    t[0, 2, 3] = 7
    with pytest.raises(ValueError, match=r"target\[0, 2, 3\] = 7 is not a class id in \[0, 4\)"):
        ops.softmax_cross_entropy(x, t, ignore_index=255)
    # Without the eager check (as under torch.compile) the kernel reads nothing out of bounds and
    # marks the result NaN.
    with ops.validation(False):
        assert torch.isnan(ops.softmax_cross_entropy(x, t, ignore_index=255))
        per_pixel = ops.softmax_cross_entropy(x, t, ignore_index=255, reduction="none")
        assert torch.isnan(per_pixel[0, 2, 3]) and not torch.isnan(per_pixel).sum() > 1
    t[0, 2, 3] = -3
    with pytest.raises(ValueError, match="-3"):
        ops.softmax_cross_entropy(x, t.long(), ignore_index=255)


def test_validation_is_scoped():
    from cycleseg.ops.validation import validation_enabled
    assert validation_enabled()
    with pytest.raises(RuntimeError):
        with ops.validation(False):
            assert not validation_enabled()
            raise RuntimeError("the block fails")
    assert validation_enabled()


def test_shape_and_dtype_errors():
    x = torch.randn(2, 3, 4, 4, device=DEVICE)
    with pytest.raises(ValueError, match="target must have shape"):
        ops.softmax_cross_entropy(x, torch.zeros(2, 4, 3, dtype=torch.long, device=DEVICE))
    with pytest.raises(TypeError, match="uint8, int32 or int64"):
        ops.softmax_cross_entropy(x, torch.zeros(2, 4, 4, device=DEVICE))
    with pytest.raises(ValueError, match=r"\(N, K, H, W\)"):
        ops.softmax_cross_entropy(x[0], torch.zeros(3, 4, 4, dtype=torch.long, device=DEVICE))


def test_gradcheck_cpp():
    x, t, wt = make(2, 3, 4, 5, torch.float64, 255, 0.3, seed=2, weighted=True)
    x = x.cpu().requires_grad_()
    for reduction in ("mean", "sum", "none"):
        assert torch.autograd.gradcheck(
            lambda v: ops.softmax_cross_entropy(v, t.cpu(), wt.cpu(), 255, reduction), (x,))


def test_opcheck(backend):
    x, t, wt = make(2, 4, 6, 5, torch.float32, 255, 0.2, weighted=True)
    t_all = torch.where(t == 255, torch.zeros_like(t), t)             # valid everywhere for ignore_index -100
    for args in [(x.requires_grad_(), t, wt, 255, "mean"), (x, t_all, None, -100, "none"),
                 (x, t.to(torch.uint8), None, 255, "sum")]:
        torch.library.opcheck(_fwd, args)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_compile_fullgraph_equals_eager(backend, compile_matches_eager, reduction):
    x, t, wt = make(2, 5, 8, 12, torch.float32, 255, 0.2, weighted=True)

    def f(v):
        out = ops.softmax_cross_entropy(v * 1.5, t, wt, 255, reduction)
        return out if reduction == "mean" else (out * out).sum()

    compile_matches_eager(f, x)


def test_out_of_range_target_under_compile_gives_nan(backend):
    """Under torch.compile the eager value check is skipped: the loss is NaN, nothing raises or misreads."""
    x, t, _ = make(1, 4, 5, 6, torch.float32, 255, 0.0)
    t[0, 1, 1] = 9
    torch._dynamo.reset()
    f = torch.compile(lambda a, b: ops.softmax_cross_entropy(a, b, ignore_index=255), fullgraph=True,
                      backend="aot_eager" if DEVICE == "cpu" else "inductor")
    assert torch.isnan(f(x, t))


def test_compile_with_inductor_cpp():
    """The same op inside an Inductor-compiled function (C++ codegen around the opaque custom op)."""
    x, t, wt = make(2, 5, 8, 12, torch.float32, 255, 0.2, weighted=True)
    x = x.cpu()

    def f(v):
        return ops.softmax_cross_entropy(torch.tanh(v) * 3, t.cpu(), wt.cpu(), 255)

    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    f(xe).backward()
    torch._dynamo.reset()
    lc = torch.compile(f, fullgraph=True)(xc)
    lc.backward()
    torch.testing.assert_close(lc, f(x))
    torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-5, atol=1e-6)


def test_class_count_and_device_errors():
    with pytest.raises(ValueError, match="at least one class"):
        ops.softmax_cross_entropy(torch.randn(2, 0, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long))
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="target is on meta but logits are on cpu"):
        ops.softmax_cross_entropy(x, torch.zeros(2, 4, 4, dtype=torch.long, device="meta"))
    with pytest.raises(ValueError, match="weight is on meta"):
        ops.softmax_cross_entropy(x, torch.zeros(2, 4, 4, dtype=torch.long), weight=torch.ones(3, device="meta"))
