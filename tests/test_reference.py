"""The reference ops against PyTorch's own functions in fp64 (they are the fused kernels' oracle)."""
import pytest
import torch
import torch.nn.functional as F

from cycleseg import reference as ref


@pytest.mark.parametrize("k", [1, 4, 21])
@pytest.mark.parametrize("ignore_index", [-100, 255])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_equals_torch(k, ignore_index, weighted, reduction):
    g = torch.Generator().manual_seed(k)
    x = torch.randn(3, k, 7, 9, dtype=torch.float64, generator=g) * 4
    t = torch.randint(0, k, (3, 7, 9), generator=g)
    t[torch.rand(3, 7, 9, generator=g) < 0.3] = ignore_index
    w = torch.rand(k, dtype=torch.float64, generator=g) + 0.5 if weighted else None
    got = ref.softmax_cross_entropy(x, t, w, ignore_index, reduction)
    expect = F.cross_entropy(x, t, w, ignore_index=ignore_index, reduction=reduction)
    torch.testing.assert_close(got, expect, rtol=1e-12, atol=1e-12)


def test_cross_entropy_all_ignored_is_nan_and_uint8_targets():
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    assert torch.isnan(ref.softmax_cross_entropy(x, torch.full((1, 4, 4), 255, dtype=torch.uint8), ignore_index=255))
    t = torch.randint(0, 3, (1, 4, 4))
    torch.testing.assert_close(ref.softmax_cross_entropy(x, t.to(torch.uint8)), F.cross_entropy(x, t))


def test_cross_entropy_errors():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="target must have shape"):
        ref.softmax_cross_entropy(x, torch.zeros(2, 4, 5, dtype=torch.long))
    with pytest.raises(TypeError, match="uint8, int32 or int64"):
        ref.softmax_cross_entropy(x, torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="weight"):
        ref.softmax_cross_entropy(x, torch.zeros(2, 4, 4, dtype=torch.long), weight=torch.ones(4))
    with pytest.raises(ValueError, match="reduction"):
        ref.softmax_cross_entropy(x, torch.zeros(2, 4, 4, dtype=torch.long), reduction="avg")


def test_lsgan():
    d = torch.randn(2, 1, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(ref.lsgan_loss(d, 1.0), F.mse_loss(d, torch.ones_like(d)))
    torch.testing.assert_close(ref.lsgan_loss(d, 0.0), (d ** 2).mean())
    r, f = torch.randn(3, 1, 4, 4, dtype=torch.float64), torch.randn(3, 1, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(ref.lsgan_disc_loss(r, f), 0.5 * (((r - 1) ** 2).mean() + (f ** 2).mean()))


@pytest.mark.parametrize("offset", [0.0, 1000.0])
def test_instance_norm_relu(offset):
    x = torch.randn(2, 5, 31, 37, dtype=torch.float64) * 0.01 + offset
    expect = torch.relu(F.instance_norm(x, eps=1e-5))
    torch.testing.assert_close(ref.instance_norm_relu(x), expect, rtol=1e-9, atol=1e-9)
    const = torch.full((1, 2, 4, 4), 3.0, dtype=torch.float64)      # variance 0 -> zeros, no NaN
    assert (ref.instance_norm_relu(const) == 0).all()


def test_half_inputs_computed_in_fp32():
    x = torch.randn(2, 4, 8, 8)
    t = torch.randint(0, 4, (2, 8, 8))
    out = ref.softmax_cross_entropy(x.bfloat16(), t)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), F.cross_entropy(x.bfloat16().float(), t), rtol=1e-2, atol=1e-2)
    y = ref.instance_norm_relu(x.half())
    assert y.dtype == torch.float16
    torch.testing.assert_close(y.float(), torch.relu(F.instance_norm(x.half().float())), rtol=2e-3, atol=2e-3)
