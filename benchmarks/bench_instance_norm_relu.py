"""Instance norm + ReLU at every shape of the paper generator for a batch of 8 at 256x256."""
import pytest
import torch

from cycleseg import ops, reference
from common import DEVICE, PASSES, VARIANTS, bench, variant_fn

SHAPES = [(8, 64, 256, 256), (8, 128, 128, 128), (8, 256, 64, 64)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_instance_norm_relu(benchmark, variant, pass_, shape):
    benchmark.group = f"instance_norm_relu {'x'.join(map(str, shape))} {pass_}"
    x = torch.randn(shape, device=DEVICE, requires_grad=pass_ == "fwd_bwd")
    fn = variant_fn(variant, reference.instance_norm_relu, ops.instance_norm_relu)
    bench(benchmark, fn, [x], pass_, x.numel() * x.element_size() * (2 if pass_ == "fwd" else 5))
