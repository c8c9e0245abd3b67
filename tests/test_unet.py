"""--generator unet (SSL4MIS's 2D UNet as G_IS), --optimizer sgd (its SGD + poly) and --augment ssl4mis (its
RandomGenerator): the network's size, every mode's step on both paths, a run that resumes exactly, the
options' checks (each mode's exact state round trip: tests/test_steps.py)."""
import numpy as np
import pytest
import torch

from cycleseg.assemble import make_step, networks_of
from cycleseg.config import Config, from_flat
from cycleseg.data.augment import augment, ssl4mis_view
from cycleseg.data.h5format import Meta
from cycleseg.fastpath import Plan
from cycleseg.models import UNet, count_parameters, mixes_batch, networks_from_config, use_ops
from cycleseg.steps import PolyDecay
from cycleseg.usage import UsageError
from test_steps import batches

MODES = ["partial", "semi", "meanteacher", "fixmatch", "adversarial"]
FAST_CPU = Plan(fused_ops=True, merge_passes=True, fused_adam=True)


def test_parameter_count_and_shapes_are_ssl4mis():
    """1,813,764 parameters at 1 channel and 4 classes: the count of SSL4MIS's networks/unet.py UNet
    (checked against their module, whose weights loaded into ours give the same output, 2026-12-02)."""
    net = UNet(1, 4)
    assert count_parameters(net) == 1_813_764
    assert count_parameters(UNet(3, 21)) == 1_813_764 + 2 * 16 * 9 + 17 * 16 * 9 + 17   # input and output convs
    assert net(torch.randn(2, 1, 32, 48)).shape == (2, 4, 32, 48)
    assert mixes_batch(net) and not mixes_batch(networks_from_config(cfg("partial", "resnet"), META)["G_IS"])
    dropouts = [m.p for m in net.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts == [0.05, 0.1, 0.2, 0.3, 0.5, 0.0, 0.0, 0.0, 0.0]


META = Meta(num_classes=4, class_names=list("abcd"), palette=[[0, 0, 0]] * 4, channels=1)


def cfg(mode, generator="unet", **kw):
    return from_flat(dict(device="cpu", mode=mode, generator=generator, ngf=4, n_blocks=1, ndf=4, steps=8, pool_size=2,
                          optimizer="sgd", image_size=32, **kw)).resolved()


def build(mode, plan, **kw):
    c = cfg(mode, **kw)
    torch.manual_seed(0)
    nets = networks_of(c, META)
    for net in nets.values():
        use_ops(net, plan.ops())
    return nets, make_step(c, nets, META, plan)


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_steps_alike_on_the_fast_path_and_the_eager_baseline(mode):
    """From the same weights, batch and RNG state, one step of the fast path (fused ops, fused Adam) and
    of --no-fast give the same loss terms: the UNet's inputs go through it in one call on both paths
    (BatchNorm mixes a batch), so both compute one model."""
    terms = {}
    for name, plan in (("eager", Plan()), ("fast", FAST_CPU)):
        nets, step = build(mode, plan)
        assert step.merge
        torch.manual_seed(5)
        from cycleseg import ops
        with ops.validation(False):
            terms[name] = [step(b) for b in batches(2, 32)]
    for a, b in zip(terms["eager"], terms["fast"]):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.isfinite(a[k]) and b[k].item() == pytest.approx(a[k].item(), rel=1e-3, abs=1e-5), k


def test_sgd_is_ssl4mis_optimizer_and_the_rest_keep_adam():
    nets, step = build("semi", FAST_CPU)
    g, s, d = step.optimizers["G"], step.optimizers["S"], step.optimizers["D"]
    assert isinstance(g, torch.optim.SGD) and g.defaults["momentum"] == 0.9 and g.defaults["weight_decay"] == 1e-4
    assert {id(p) for p in g.param_groups[0]["params"]} == {id(p) for p in nets["G_IS"].parameters()}
    assert isinstance(s, torch.optim.Adam) and isinstance(d, torch.optim.Adam)
    assert g.param_groups[0]["lr"] == 0.01 and s.param_groups[0]["lr"] == d.param_groups[0]["lr"] == 1e-3
    f = PolyDecay(1000)
    assert f(0) == 1.0 and f(1000) == 0.0 and f(500) == pytest.approx(0.5 ** 0.9)
    _, adv = build("adversarial", FAST_CPU)
    assert adv.optimizers["D"].param_groups[0]["lr"] == pytest.approx(0.4 * 1e-3)   # Hung's share of Adam's rate
    c = Config(device="cpu", optimizer="sgd", lr=0.05).resolved()
    assert c.lr == 0.05 and Config(device="cpu").resolved().optimizer == "adam"


def test_fixmatch_reads_the_strong_views_apart_only_with_batchnorm():
    assert build("fixmatch", FAST_CPU)[1].strong_apart
    assert not build("fixmatch", FAST_CPU, generator="resnet")[1].strong_apart


def test_options_are_checked():
    with pytest.raises(UsageError, match="multiple of 16"):
        Config(device="cpu", generator="unet", image_size=72).resolved()
    Config(device="cpu", generator="resnet", image_size=72).resolved()
    with pytest.raises(UsageError, match="--augment ssl4mis .* drop --flip"):
        Config(device="cpu", augment="ssl4mis", flip=True).resolved()
    for field, bad in (("generator", "vgg"), ("augment", "randaug"), ("optimizer", "lbfgs")):
        with pytest.raises(UsageError, match=field):
            Config(device="cpu", **{field: bad}).resolved()


def test_ssl4mis_view_moves_image_and_mask_together():
    """Every pixel keeps its class: the image is the mask scaled (x60), so after the view it must still be;
    rotations fill corners with 0 in both; both kinds of view occur; the same RNG gives the same views."""
    rng = np.random.default_rng(0)
    masks = rng.integers(0, 4, (64, 24, 24), dtype=np.uint8)
    images = (masks * 60)[..., None].copy()
    before = masks.copy()
    augment(images, masks, np.random.default_rng(3), False, None, policy="ssl4mis")
    assert np.array_equal(images[..., 0], masks * 60)
    changed = [not np.array_equal(a, b) for a, b in zip(masks, before)]
    same_set = [sorted(np.bincount(a.ravel(), minlength=4)) == sorted(np.bincount(b.ravel(), minlength=4))
                for a, b in zip(masks, before)]
    assert sum(changed) > 40 and 10 < sum(same_set) < 64            # rot/flip keep the counts, rotations do not
    again_i, again_m = (before * 60)[..., None].copy(), before.copy()
    augment(again_i, again_m, np.random.default_rng(3), False, None, policy="ssl4mis")
    assert np.array_equal(again_m, masks)
    img, msk = np.zeros((8, 12, 1), np.uint8), np.zeros((8, 12), np.uint8)
    for seed in range(20):                                          # non-square: no 90-degree turn
        ssl4mis_view(img, msk, np.random.default_rng(seed))
        assert img.shape == (8, 12, 1) and msk.shape == (8, 12)


def test_the_tuned_recipe_weights_l_disc_s_for_the_unet():
    """The tuned recipe's lambda4 is the one re-found for each G_IS (0.01 for the ResNet, 0.1 for the UNet); the
    2019 recipe's and an explicit --lambda4 win."""
    from cycleseg.config import get

    def lam4(**kw):
        return get(Config(device="cpu", **kw).resolved(), "lambda4")

    assert lam4() == 0.01 and lam4(generator="unet") == 0.1
    assert lam4(generator="unet", recipe="2019") == lam4(recipe="2019") == 0.5
    assert lam4(generator="unet", **{"semi": from_flat({"lambda4": 0.02}).semi}) == 0.02
