"""Softmax cross-entropy, fused vs F.cross_entropy (eager and compiled), at the training shapes:
K = 4 (ACDC), 19 (Cityscapes), 21 (VOC); batch 8 at 256x256 on a GPU, the CPU preset's 8 x 64x64 and
one 256x256 batch on the CPU; logits in channels_last (the fast path's layout) and NCHW."""
import pytest
import torch

from cycleseg import native, ops
from common import DEVICE, DTYPES, PASSES, QUICK, VARIANTS, bench, variant_fn

SIZES = [(8, 256, 256)] if DEVICE == "cuda" else [(8, 64, 64), (8, 256, 256)]
KS = [4, 21] if QUICK else [4, 19, 21]
LAYOUTS = ["channels_last"] if QUICK else ["channels_last", "nchw"]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_softmax_cross_entropy(benchmark, variant, pass_, dtype, k, size, layout):
    n, h, w = size
    benchmark.group = f"softmax_cross_entropy {n}x{k}x{h}x{w} {layout} {str(dtype)[6:]} {pass_}"
    x = torch.randn(n, k, h, w).to(DEVICE, dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(pass_ == "fwd_bwd")
    t = torch.randint(0, k, (n, h, w), dtype=torch.uint8).to(DEVICE)
    t[:, :4] = 255
    fn = variant_fn(variant, lambda a, b: native.softmax_cross_entropy(a, b, ignore_index=255),
                    lambda a, b: ops.softmax_cross_entropy(a, b, ignore_index=255))
    px, s = n * h * w, x.element_size()
    floor = px * (k * s + 1) if pass_ == "fwd" else px * (2 * k * s + 1)
    with ops.validation(False):                                     # as in training: masks checked at load
        bench(benchmark, fn, [x, t], pass_, floor)
