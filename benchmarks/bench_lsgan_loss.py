"""The discriminator step's LSGAN loss on two 8x1x256x256 score maps (launch-bound: bytes are tiny)."""
import pytest
import torch

from cycleseg import ops, reference
from common import DEVICE, PASSES, VARIANTS, bench, variant_fn


@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_lsgan_disc_loss(benchmark, variant, pass_):
    benchmark.group = f"lsgan_disc_loss 8x1x256x256 {pass_}"
    g = pass_ == "fwd_bwd"
    r, f = (torch.randn(8, 1, 256, 256, device=DEVICE, requires_grad=g) for _ in range(2))
    fn = variant_fn(variant, reference.lsgan_disc_loss, ops.lsgan_disc_loss)
    bench(benchmark, fn, [r, f], pass_, 2 * r.numel() * r.element_size() * (1 if pass_ == "fwd" else 3))
