"""Instance norm + ReLU, fused vs F.relu(F.instance_norm(x)) (eager and compiled), at the shapes of the
paper generator for a batch of 8 at 256x256 on a GPU (NCHW, and channels_last as the GPU fast path runs
it), and of the CPU preset (8 x 64x64, ngf 16) on the CPU (NCHW, and channels_last as the CPU fast path runs it
where the CPU has native bf16)."""
import pytest
import torch

from cycleseg import native, ops
from common import DEVICE, DTYPES, PASSES, QUICK, VARIANTS, bench, variant_fn

if DEVICE == "cuda":
    SHAPES = [(8, 64, 256, 256, "channels_last"), (8, 128, 128, 128, "channels_last"),
              (8, 256, 64, 64, "channels_last"), (8, 256, 64, 64, "nchw")]
    if not QUICK:
        SHAPES += [(8, 64, 256, 256, "nchw"), (8, 128, 128, 128, "nchw")]
else:
    SHAPES = [(8, 16, 64, 64, "nchw"), (8, 32, 32, 32, "nchw"), (8, 64, 16, 16, "nchw"), (8, 64, 256, 256, "nchw"),
              (8, 16, 64, 64, "channels_last"), (8, 64, 16, 16, "channels_last")]   # the CPU fast path's layout


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:4])) + f"-{s[4]}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_instance_norm_relu(benchmark, variant, pass_, dtype, shape):
    *dims, layout = shape
    benchmark.group = f"instance_norm_relu {'x'.join(map(str, dims))} {layout} {str(dtype)[6:]} {pass_}"
    x = torch.randn(dims).to(DEVICE, dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(pass_ == "fwd_bwd")
    fn = variant_fn(variant, native.instance_norm_relu, ops.instance_norm_relu)
    bench(benchmark, fn, [x], pass_, x.numel() * x.element_size() * (2 if pass_ == "fwd" else 5))
