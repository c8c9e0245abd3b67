"""The discriminator step's LSGAN loss on two 8x1x256x256 score maps, fused vs the plain expression
(eager and compiled). Bytes are tiny: this measures launches."""
import pytest
import torch

from cycleseg import native, ops
from common import DEVICE, DTYPES, PASSES, VARIANTS, bench, variant_fn


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_lsgan_disc_loss(benchmark, variant, pass_, dtype):
    benchmark.group = f"lsgan_disc_loss 2x8x1x256x256 {str(dtype)[6:]} {pass_}"
    g = pass_ == "fwd_bwd"
    r, f = (torch.randn(8, 1, 256, 256).to(DEVICE, dtype).requires_grad_(g) for _ in range(2))
    fn = variant_fn(variant, native.lsgan_disc_loss, ops.lsgan_disc_loss)
    # bytes as the op's roofline counts them: fwd reads both maps (s), bwd reads them and writes their gradients (2 s)
    bench(benchmark, fn, [r, f], pass_, 2 * r.numel() * r.element_size() * (1 if pass_ == "fwd" else 3))
