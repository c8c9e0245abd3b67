"""The fused least-squares GAN losses against the reference in fp64, on every backend."""
import pytest
import torch

from cycleseg import ops, reference
from cycleseg.kernels.common import acc_dtype
from cycleseg.ops.lsgan_loss import _disc_bwd, _disc_fwd, _fwd

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 1, 31, 37), (2, 1, 64, 64)])
@pytest.mark.parametrize("target", [0.0, 1.0])
def test_lsgan_loss(backend, close, dtype, shape, target):
    d = torch.randn(shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(DEVICE)
    do, dr = d.to(dtype).requires_grad_(), d.to(dtype).double().requires_grad_()
    out, ref = ops.lsgan_loss(do, target), reference.lsgan_loss(dr, target)
    assert out.dtype == acc_dtype(dtype) and out.shape == ()     # fp32 for halves, as F.mse_loss under autocast
    close(out, ref, dtype, "forward")
    (out * 0.7).backward()
    (ref * 0.7).backward()
    close(do.grad, dr.grad, dtype, "grad")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("sizes", [((2, 1, 9, 11), (2, 1, 9, 11)), ((3, 1, 70, 70), (1, 1, 5, 3))])
def test_lsgan_disc_loss(backend, close, dtype, sizes):
    g = torch.Generator().manual_seed(3)
    r, f = (torch.randn(s, generator=g, dtype=torch.float64).to(DEVICE) for s in sizes)
    ro, fo = r.to(dtype).detach().requires_grad_(), f.to(dtype).detach().requires_grad_()
    rr, fr = r.clone().requires_grad_(), f.clone().requires_grad_()
    out, ref = ops.lsgan_disc_loss(ro, fo), reference.lsgan_disc_loss(rr, fr)
    close(out, ref, dtype, "forward")
    (out * 1.3).backward()
    (ref * 1.3).backward()
    close(ro.grad, rr.grad, dtype, "grad real")
    close(fo.grad, fr.grad, dtype, "grad fake")


def test_strided_scores(backend, close):
    d = torch.randn(2, 1, 8, 16, dtype=torch.float64, device=DEVICE)[..., ::2]
    do, dr = d.clone().requires_grad_(), d.clone().requires_grad_()
    out, ref = ops.lsgan_loss(do[..., :3], 1.0), reference.lsgan_loss(dr[..., :3], 1.0)
    close(out, ref, torch.float64, "forward")
    out.backward()
    ref.backward()
    close(do.grad, dr.grad, torch.float64, "grad")


def test_every_output_element_written(backend):
    a, b = (torch.randn(2, 1, 50, 45, device=DEVICE) for _ in range(2))
    with ops.poisoned():
        loss = _disc_fwd(a, b)
        da, db = _disc_bwd(torch.ones((), device=DEVICE), a, b)
        single = _fwd(a, 0.0)
    for t in (loss, da, db, single):
        assert not torch.isnan(t).any()


def test_errors():
    with pytest.raises(ValueError, match="non-empty floating"):
        ops.lsgan_loss(torch.ones(2, 2, dtype=torch.long), 1.0)
    with pytest.raises(ValueError, match="share dtype"):
        ops.lsgan_disc_loss(torch.ones(2), torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="share dtype and device"):
        ops.lsgan_disc_loss(torch.ones(2), torch.ones(2, device="meta"))


def test_gradcheck_cpp():
    a = torch.randn(2, 1, 3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 1, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: ops.lsgan_loss(v, 1.0), (a,))
    assert torch.autograd.gradcheck(ops.lsgan_disc_loss, (a, b))


def test_opcheck(backend):
    a = torch.randn(2, 1, 5, 6, device=DEVICE, requires_grad=True)
    b = torch.randn(2, 1, 5, 6, device=DEVICE, requires_grad=True)
    torch.library.opcheck(_fwd, (a, 1.0))
    torch.library.opcheck(_disc_fwd, (a, b))


def test_compile_fullgraph_equals_eager(backend, compile_matches_eager):
    def f(v):
        return ops.lsgan_loss(v * 2, 1.0) + ops.lsgan_disc_loss(v, v * 0.5)

    compile_matches_eager(f, torch.randn(2, 1, 8, 8, device=DEVICE))
