"""Every fused op launches under its input's device (Triton launches on the *current* CUDA device and
stream, so a tensor on cuda:1 while cuda:0 is current would otherwise run on the wrong device)."""
import contextlib

import pytest
import torch

from cycleseg import ops
from cycleseg.ops.cuda import device_guard
from cycleseg.ops.registry import LAUNCHERS

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


class FakeCudaTensor:
    is_cuda = True
    device = torch.device("cuda", 1)


def test_guard_of_a_cuda_tensor_selects_its_device():
    guard = device_guard(FakeCudaTensor())
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1


def test_every_launch_enters_the_guard(guard_log):
    """Every Triton launch (CUDA tensors, or CPU tensors through the interpreter) enters the guard."""
    with ops.cpu_backend("triton") if DEVICE == "cpu" else contextlib.nullcontext():
        device = launch_all_ops()
    launched = {name for name, _ in guard_log}
    registered = {name for fused in ops.REGISTRY.values() for name in fused.dispatcher_ops}
    assert launched == set(LAUNCHERS) == registered                  # every forward and backward op
    assert all(dev == device for _, dev in guard_log)


def launch_all_ops():
    """Every registered op's variants (its `exercise`), forward and backward."""
    for fused in ops.REGISTRY.values():
        fused.exercise(2, 6, 5, torch.float32, torch.contiguous_format, DEVICE)
    return torch.empty(0, device=DEVICE).device                     # cuda -> cuda:0, as the guard sees it


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs: the input on cuda:1 while cuda:0 is current")
def test_second_gpu_while_first_is_current():
    torch.cuda.set_device(0)
    x = torch.randn(2, 4, 8, 8, device="cuda:1", requires_grad=True)
    t = torch.randint(0, 4, (2, 8, 8), device="cuda:1")
    xr = x.detach().double().requires_grad_()
    y = ops.instance_norm_relu(x)
    torch.testing.assert_close(y.double(), torch.relu(torch.nn.functional.instance_norm(xr)), rtol=1e-4, atol=1e-4)
    loss = ops.softmax_cross_entropy(x, t)
    ref = torch.nn.functional.cross_entropy(xr, t)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-5)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(x.grad.double(), xr.grad, rtol=1e-4, atol=1e-6)
    assert y.device == x.grad.device == torch.device("cuda", 1)
