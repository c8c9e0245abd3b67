import pytest
import torch

from cycleseg.models import (PixelDiscriminator, ResnetGenerator, build_networks, count_parameters,
                             init_weights, use_ops, NormReLU)


def test_paper_parameter_counts():
    nets = build_networks(in_ch=3, num_classes=21, ngf=64, n_blocks=9)
    assert count_parameters(nets["G_IS"]) == 11_434_645
    assert count_parameters(nets["G_SI"]) == 11_434_627
    # D: 1x1 convs in->64 (+b), 64->128 (+b, instance norm), 128->1 (+b)
    assert count_parameters(nets["D_S"]) == 21 * 64 + 64 + 64 * 128 + 128 + 128 + 1
    assert count_parameters(nets["D_I"]) == 3 * 64 + 64 + 64 * 128 + 128 + 128 + 1


def test_generator_shapes_and_ranges():
    g_is = ResnetGenerator(3, 5, ngf=8, n_blocks=2)
    g_si = ResnetGenerator(5, 3, ngf=8, n_blocks=2, out_act="tanh")
    x = torch.randn(2, 3, 36, 44)
    logits = g_is(x)
    assert logits.shape == (2, 5, 36, 44)
    img = g_si(torch.softmax(logits, 1))
    assert img.shape == (2, 3, 36, 44) and img.abs().max() <= 1.0
    assert PixelDiscriminator(5, 8)(logits).shape == (2, 1, 36, 44)


def test_init_statistics():
    torch.manual_seed(0)
    g = init_weights(ResnetGenerator(3, 4, ngf=32, n_blocks=2))
    convs = [m for m in g.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    w = torch.cat([m.weight.flatten() for m in convs])
    assert abs(w.mean().item()) < 1e-3
    assert w.std().item() == pytest.approx(0.02, rel=0.02)
    assert all((m.bias == 0).all() for m in convs)


def test_dropout_option_and_norm_options():
    g = ResnetGenerator(3, 4, ngf=8, n_blocks=3, dropout=0.5)
    assert sum(isinstance(m, torch.nn.Dropout) for m in g.modules()) == 3
    assert not any(isinstance(m, torch.nn.Dropout) for m in ResnetGenerator(3, 4, ngf=8, n_blocks=3).modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in PixelDiscriminator(4, 8, "batch").modules())
    with pytest.raises(ValueError, match="norm"):
        PixelDiscriminator(4, 8, "group")


def test_norm_relu_matches_torch_modules():
    x = torch.randn(2, 6, 9, 11, dtype=torch.float64) * 3 + 1
    expect = torch.relu(torch.nn.InstanceNorm2d(6)(x))
    torch.testing.assert_close(NormReLU()(x), expect)
    torch.testing.assert_close(NormReLU(relu=False)(x), torch.nn.InstanceNorm2d(6)(x))


def test_use_ops_routes_every_norm():
    from cycleseg import ops
    g = use_ops(ResnetGenerator(3, 4, ngf=8, n_blocks=2), ops)
    routed = [m.ops is ops for m in g.modules() if isinstance(m, NormReLU)]
    assert len(routed) == 3 + 2 * 2 + 2 and all(routed)


def test_reflection_pad_keeps_bf16_under_autocast():
    """Autocast runs reflection_pad2d in fp32: a bf16 activation would be cast up for the pad and down again
    for the next convolution. The generators' pad keeps the input's dtype (and its values: padding only
    moves them), under autocast and outside it."""
    from cycleseg.models import ReflectionPad

    x = torch.randn(2, 8, 6, 6).bfloat16().contiguous(memory_format=torch.channels_last)
    want = torch.nn.ReflectionPad2d(2)(x.float()).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.nn.ReflectionPad2d(2)(x).dtype == torch.float32      # what autocast alone does
        y = ReflectionPad(2)(x)
        assert torch.is_autocast_enabled("cpu")                            # left as it was
    assert y.dtype == torch.bfloat16 and torch.equal(y, want)
    assert torch.equal(ReflectionPad(2)(x.float()), torch.nn.ReflectionPad2d(2)(x.float()))
