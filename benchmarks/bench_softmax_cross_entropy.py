"""Softmax cross-entropy at the training shapes (B = 8, 256x256, K in {4, 19, 21})."""
import pytest
import torch

from cycleseg import ops, reference
from common import DEVICE, PASSES, VARIANTS, bench, variant_fn


@pytest.mark.parametrize("k", [4, 19, 21])
@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_softmax_cross_entropy(benchmark, variant, pass_, k):
    benchmark.group = f"softmax_cross_entropy K={k} {pass_}"
    x = torch.randn(8, k, 256, 256, device=DEVICE, requires_grad=pass_ == "fwd_bwd")
    t = torch.randint(0, k, (8, 256, 256), device=DEVICE, dtype=torch.uint8)
    t[:, :4] = 255
    fn = variant_fn(variant, lambda a, b: reference.softmax_cross_entropy(a, b, ignore_index=255),
                    lambda a, b: ops.softmax_cross_entropy(a, b, ignore_index=255))
    ops.set_validation(False)                                       # as in training: masks checked at load
    px, s = x[:, 0].numel(), x.element_size()
    floor = px * (k * s + 1) if pass_ == "fwd" else px * (2 * k * s + 1)
    bench(benchmark, fn, [x, t], pass_, floor)
    ops.set_validation(True)
