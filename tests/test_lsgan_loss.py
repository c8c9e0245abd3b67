"""The fused least-squares GAN losses against the reference in fp64, on every backend."""
import pytest
import torch

from cycleseg import ops, reference
from cycleseg.ops.lsgan_loss import _disc_fwd, _fwd
from ops_helpers import DEVICE, assert_close, backend  # noqa: F401


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 1, 31, 37), (2, 1, 64, 64)])
@pytest.mark.parametrize("target", [0.0, 1.0])
def test_lsgan_loss(backend, dtype, shape, target):
    d = torch.randn(shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(DEVICE)
    do, dr = d.to(dtype).requires_grad_(), d.to(dtype).double().requires_grad_()
    out, ref = ops.lsgan_loss(do, target), reference.lsgan_loss(dr, target)
    assert out.dtype == dtype and out.shape == ()
    assert_close(out, ref, dtype, "forward")
    (out * 0.7).backward()
    (ref * 0.7).backward()
    assert_close(do.grad, dr.grad, dtype, "grad")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_lsgan_disc_loss(backend, dtype):
    g = torch.Generator().manual_seed(3)
    r, f = (torch.randn(2, 1, 9, 11, generator=g, dtype=torch.float64).to(DEVICE) for _ in range(2))
    ro, fo = r.to(dtype).detach().requires_grad_(), f.to(dtype).detach().requires_grad_()
    rr, fr = r.clone().requires_grad_(), f.clone().requires_grad_()
    out, ref = ops.lsgan_disc_loss(ro, fo), reference.lsgan_disc_loss(rr, fr)
    assert_close(out, ref, dtype, "forward")
    out.backward()
    ref.backward()
    assert_close(ro.grad, rr.grad, dtype, "grad real")
    assert_close(fo.grad, fr.grad, dtype, "grad fake")


def test_errors():
    with pytest.raises(ValueError, match="non-empty floating"):
        ops.lsgan_loss(torch.ones(2, 2, dtype=torch.long), 1.0)
    with pytest.raises(ValueError, match="share dtype"):
        ops.lsgan_disc_loss(torch.ones(2), torch.ones(2, dtype=torch.float64))


def test_gradcheck_cpp():
    ops.set_cpu_backend("cpp")
    a = torch.randn(2, 1, 3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 1, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: ops.lsgan_loss(v, 1.0), (a,))
    assert torch.autograd.gradcheck(ops.lsgan_disc_loss, (a, b))


def test_opcheck(backend):
    a = torch.randn(2, 1, 5, 6, device=DEVICE, requires_grad=True)
    b = torch.randn(2, 1, 5, 6, device=DEVICE, requires_grad=True)
    torch.library.opcheck(_fwd, (a, 1.0))
    torch.library.opcheck(_disc_fwd, (a, b))


def test_compile_fullgraph_equals_eager(backend):
    a = torch.randn(2, 1, 8, 8, device=DEVICE)

    def f(v):
        return ops.lsgan_loss(v * 2, 1.0) + ops.lsgan_disc_loss(v, v * 0.5)

    ae, ac = a.clone().requires_grad_(), a.clone().requires_grad_()
    le = f(ae)
    le.backward()
    torch._dynamo.reset()
    lc = torch.compile(f, fullgraph=True, backend="aot_eager" if DEVICE == "cpu" else "inductor")(ac)
    lc.backward()
    torch.testing.assert_close(lc, le)
    torch.testing.assert_close(ac.grad, ae.grad)


def test_device_mismatch_error():
    with pytest.raises(ValueError, match="share dtype and device"):
        ops.lsgan_disc_loss(torch.ones(2), torch.ones(2, device="meta"))
