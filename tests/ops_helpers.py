"""Shared helpers of the fused-op tests: backends to run, tolerances per dtype."""
import os

import pytest
import torch

from cycleseg import ops

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# On a CPU machine: the C++ kernels, and the Triton kernels through the interpreter.
BACKENDS = ["triton"] if DEVICE == "cuda" else (["cpp", "triton"] if os.environ.get("TRITON_INTERPRET") == "1" else ["cpp"])


@pytest.fixture(params=BACKENDS)
def backend(request):
    if DEVICE == "cpu":
        ops.set_cpu_backend(request.param)
    yield request.param
    if DEVICE == "cpu":
        ops.set_cpu_backend("cpp")


def assert_close(got, expect, dtype, what=""):
    """Compare to an fp64 reference with a tolerance for the input dtype (relative norm for halves)."""
    got, expect = got.double(), expect.double()
    assert torch.equal(torch.isnan(got), torch.isnan(expect)), f"{what}: NaN pattern differs"
    g, e = got[~torch.isnan(got)], expect[~torch.isnan(expect)]
    if dtype in (torch.float64, torch.float32):
        tol = 1e-9 if dtype == torch.float64 else 2e-5
        torch.testing.assert_close(g, e, rtol=tol, atol=tol, msg=what)
    else:
        tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
        err = (g - e).norm() / e.norm().clamp(min=1e-12)
        assert err < tol, f"{what}: relative error {err:.2e} >= {tol}"
