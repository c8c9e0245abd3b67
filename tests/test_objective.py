"""Each term of the objective against a computation by hand on tiny tensors and networks (fp64)."""
import dataclasses

import pytest
import torch

from cycleseg.config import RECIPES
from cycleseg.models import build_networks
from cycleseg.objective import (Lambdas, discriminator_objective, generator_objective, one_hot,
                                supervised_objective)

LAMBDAS_2019 = Lambdas(*(RECIPES["2019"][f"lambda{i}"] for i in range(1, 6)))  # every term on

K, IGN = 3, 255
TERMS = {"gen_img": "gen_img", "cycle_seg": "cycle_seg", "cycle_img": "cycle_img",
         "disc_seg": "disc_seg", "disc_img": "disc_img"}     # Lambdas field -> term name


@pytest.fixture
def setup():
    torch.manual_seed(0)
    nets = {k: v.double() for k, v in build_networks(3, K, ngf=4, n_blocks=1, ndf=4).items()}
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64) * 2 - 1
    y = torch.randint(0, K, (2, 8, 8))
    y[0, 0, :3] = IGN
    xu = torch.rand(3, 3, 8, 8, dtype=torch.float64) * 2 - 1
    return nets, x, y, xu


def hand_ce(logits, y):
    """Mean over non-ignored pixels of -log softmax(logits)[y], written out."""
    p = logits.exp() / logits.exp().sum(1, keepdim=True)
    total, count = 0.0, 0
    for n in range(y.shape[0]):
        for i in range(y.shape[1]):
            for j in range(y.shape[2]):
                if y[n, i, j] != IGN:
                    total = total - torch.log(p[n, y[n, i, j], i, j])
                    count += 1
    return total / count


def hand_one_hot(y):
    oh = torch.zeros(y.shape[0], K, *y.shape[1:], dtype=torch.float64)
    for c in range(K):
        oh[:, c] = (y == c).double()
    return oh


def hand_terms(nets, x, y, xu):
    g_is, g_si, d_s, d_i = nets["G_IS"], nets["G_SI"], nets["D_S"], nets["D_I"]
    fake_img = g_si(hand_one_hot(y))
    s = torch.softmax(g_is(xu), 1)
    return {
        "gen_seg": hand_ce(g_is(x), y),
        "gen_img": ((fake_img - x) ** 2).mean(),
        "cycle_seg": hand_ce(g_is(fake_img), y),
        "disc_img": ((d_i(fake_img) - 1) ** 2).mean(),
        "cycle_img": (g_si(s) - xu).abs().mean(),
        "disc_seg": ((d_s(s) - 1) ** 2).mean(),
    }


def run(nets, x, y, xu, lambdas=LAMBDAS_2019):
    return generator_objective(nets["G_IS"], nets["G_SI"], nets["D_S"], nets["D_I"], x, y, xu, K, lambdas, IGN)


def test_one_hot_zeroes_ignored_pixels(setup):
    _, _, y, _ = setup
    oh = one_hot(y, K, IGN, torch.float64)
    torch.testing.assert_close(oh, hand_one_hot(y))
    assert (oh[0, :, 0, :3] == 0).all() and (oh.sum(1)[y != IGN] == 1).all()


def test_each_term_equals_hand_computation(setup):
    nets, x, y, xu = setup
    loss, terms, fakes = run(nets, x, y, xu)
    hand = hand_terms(nets, x, y, xu)
    assert set(terms) == set(hand)
    for name, value in hand.items():
        torch.testing.assert_close(terms[name], value.detach(), rtol=1e-10, atol=1e-12, msg=name)
    lam = LAMBDAS_2019
    expect = (hand["gen_seg"] + lam.gen_img * hand["gen_img"] + lam.cycle_seg * hand["cycle_seg"]
              + lam.cycle_img * hand["cycle_img"] + lam.disc_seg * hand["disc_seg"] + lam.disc_img * hand["disc_img"])
    torch.testing.assert_close(loss, expect, rtol=1e-10, atol=1e-12)
    assert not fakes["seg"].requires_grad and not fakes["img"].requires_grad
    torch.testing.assert_close(fakes["seg"].sum(1), torch.ones(3, 8, 8, dtype=torch.float64))


@pytest.mark.parametrize("field", list(TERMS))
def test_zero_lambda_removes_exactly_that_term(setup, field):
    nets, x, y, xu = setup
    full, terms, _ = run(nets, x, y, xu)
    lam = LAMBDAS_2019
    without, terms0, _ = run(nets, x, y, xu, dataclasses.replace(lam, **{field: 0.0}))
    assert TERMS[field] not in terms0 and set(terms) - set(terms0) == {TERMS[field]}
    torch.testing.assert_close(without, full - getattr(lam, field) * terms[TERMS[field]], rtol=1e-10, atol=1e-12)


def test_disc_seg_alone_trains_g_is(setup):
    """The 2019 code fed D_S a detached argmax, so this gradient was zero."""
    nets, x, y, xu = setup
    zero = Lambdas(0.0, 0.0, 0.0, 0.0, 0.0)
    grads = []
    for lam in (zero, dataclasses.replace(zero, disc_seg=1.0)):
        nets["G_IS"].zero_grad()
        run(nets, x, y, xu, lam)[0].backward()
        grads.append(torch.cat([p.grad.flatten() for p in nets["G_IS"].parameters()]))
    diff = grads[1] - grads[0]                                      # = d L_disc^S / d theta_G_IS
    assert diff.abs().max() > 1e-8


def test_discriminator_step_leaves_generator_gradients_untouched(setup):
    nets, x, y, xu = setup
    loss, _, fakes = run(nets, x, y, xu)
    loss.backward()
    before = {n: p.grad.clone() for g in ("G_IS", "G_SI") for n, p in nets[g].named_parameters()}
    for g in ("D_S", "D_I"):
        nets[g].zero_grad()
    d_loss, d_terms = discriminator_objective(nets["D_S"], nets["D_I"], one_hot(y, K, IGN, x.dtype),
                                              fakes["seg"], xu, fakes["img"])
    d_loss.backward()
    after = {n: p.grad for g in ("G_IS", "G_SI") for n, p in nets[g].named_parameters()}
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for g in ("D_S", "D_I") for p in nets[g].parameters())
    # eq. 4-5 by hand
    ds, di = nets["D_S"], nets["D_I"]
    hand_seg = 0.5 * (((ds(hand_one_hot(y)) - 1) ** 2).mean() + (ds(fakes["seg"]) ** 2).mean())
    hand_img = 0.5 * (((di(xu) - 1) ** 2).mean() + (di(fakes["img"]) ** 2).mean())
    torch.testing.assert_close(d_terms["d_seg"], hand_seg.detach())
    torch.testing.assert_close(d_terms["d_img"], hand_img.detach())
    torch.testing.assert_close(d_loss, hand_seg + hand_img)


def test_supervised_objective(setup):
    nets, x, y, _ = setup
    loss, terms = supervised_objective(nets["G_IS"], x, y, IGN)
    torch.testing.assert_close(loss, hand_ce(nets["G_IS"](x), y))
    assert set(terms) == {"gen_seg"}


def test_soft_dice_by_hand():
    from cycleseg.objective import soft_dice_loss
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])                 # (1, 2, 1, 2): two pixels, two classes
    y = torch.tensor([[[0, 255]]])                                       # the second pixel ignored
    p0 = torch.softmax(torch.tensor([2.0, 0.0]), 0)                      # the first pixel's probabilities
    dice0 = (2 * p0[0] + 1e-5) / (p0[0] ** 2 + 1 + 1e-5)               # class 0: in the truth
    dice1 = (0 + 1e-5) / (p0[1] ** 2 + 1e-5)                             # class 1: absent, predicted p0[1]
    expect = 1 - (dice0 + dice1) / 2
    assert soft_dice_loss(logits, y, 2, 255).item() == pytest.approx(expect.item(), rel=1e-5)


def test_unlabeled_weight_scales_only_the_unlabeled_terms(setup):
    nets, x, y, xu = setup
    loss1, terms, _ = generator_objective(nets["G_IS"], nets["G_SI"], nets["D_S"], nets["D_I"], x, y, xu, K,
                                          LAMBDAS_2019)
    loss0, _, _ = generator_objective(nets["G_IS"], nets["G_SI"], nets["D_S"], nets["D_I"], x, y, xu, K,
                                      LAMBDAS_2019, unlabeled_weight=torch.tensor(0.0))
    lam = LAMBDAS_2019
    assert (loss1 - loss0).item() == pytest.approx(
        (lam.cycle_img * terms["cycle_img"] + lam.disc_seg * terms["disc_seg"]).item(), rel=1e-5)


@pytest.mark.parametrize("ops_name", ["reference", "ops"])
def test_a_batch_without_a_labeled_pixel_contributes_no_loss(ops_name):
    """Unannotated images (every pixel 255): the supervised loss is 0 with a zero gradient, not the NaN of
    a mean over no pixel; with labeled pixels it is the op's mean, bit for bit (sum / count is the
    division the mean makes)."""
    import importlib

    from cycleseg.objective import cross_entropy

    ops = importlib.import_module(f"cycleseg.{ops_name}")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 6, 5, generator=g, requires_grad=True)
    y = torch.randint(0, 4, (3, 6, 5), generator=g)
    y[1] = 255                                                      # one unannotated image
    mean = ops.softmax_cross_entropy(x, y, ignore_index=255)
    ours = cross_entropy(x, y, 255, ops)
    assert torch.equal(ours, mean)
    (g_mean,) = torch.autograd.grad(mean, x)
    (g_ours,) = torch.autograd.grad(ours, x)
    assert torch.equal(g_mean, g_ours)
    none = torch.full_like(y, 255)
    assert torch.isnan(ops.softmax_cross_entropy(x, none, ignore_index=255))   # the op keeps PyTorch's semantics
    empty = cross_entropy(x, none, 255, ops)
    (g_empty,) = torch.autograd.grad(empty, x)
    assert empty.item() == 0.0 and torch.equal(g_empty, torch.zeros_like(x))


def test_mean_teacher_objective_by_hand(setup):
    from cycleseg.objective import mean_teacher_objective
    nets, x, y, xu = setup
    torch.manual_seed(1)
    teacher = {k: v.double() for k, v in build_networks(3, K, ngf=4, n_blocks=1, ndf=4).items()}["G_IS"]
    noise = torch.randn_like(xu) * 0.2
    loss, terms = mean_teacher_objective(nets["G_IS"], teacher, x, y, xu, noise, K, IGN, 0.3)
    cons = ((torch.softmax(nets["G_IS"](xu), 1) - torch.softmax(teacher(xu + noise), 1)) ** 2).mean()
    assert terms["consistency"].item() == pytest.approx(cons.item(), rel=1e-6)           # softmaxes in fp32
    assert loss.item() == pytest.approx(hand_ce(nets["G_IS"](x), y).item() + 0.3 * cons.item(), rel=1e-6)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())                 # the teacher takes no gradient


class Lookup(torch.nn.Module):
    """A 'network' returning fixed logits for each of its known inputs (by first pixel value)."""

    def __init__(self, table):
        super().__init__()
        self.table = table

    def forward(self, x):
        return torch.cat([self.table[round(float(v), 6)] for v in x[:, 0, 0, 0]])


@pytest.mark.parametrize("loss_name", ["dice", "ce"])
def test_fixmatch_objective_by_hand(loss_name):
    """Pseudo-labels are the weak view's argmax where its softmax max >= the threshold, the partner's
    inside each CutMix box; the strong view's loss: soft Dice over confident pixels, or cross-entropy
    summed over them and divided by every unlabeled pixel."""
    from cycleseg.objective import fixmatch_objective
    torch.manual_seed(2)
    x, xw, xs = (torch.full((n, 1, 4, 4), v, dtype=torch.float64) for n, v in ((1, 0.1), (2, 0.2), (2, 0.3)))
    xw[1], xs[1] = 0.25, 0.35
    logits = {0.1: torch.randn(1, K, 4, 4, dtype=torch.float64), 0.2: torch.randn(1, K, 4, 4, dtype=torch.float64) * 4,
              0.25: torch.randn(1, K, 4, 4, dtype=torch.float64) * 4,
              0.3: torch.randn(1, K, 4, 4, dtype=torch.float64, requires_grad=True),
              0.35: torch.randn(1, K, 4, 4, dtype=torch.float64, requires_grad=True)}
    y = torch.randint(0, K, (1, 4, 4))
    box = torch.zeros(2, 4, 4, dtype=torch.bool)
    box[0, 1:3, 1:4] = True
    loss, terms = fixmatch_objective(Lookup(logits), x, y, xw, xs, box, K, IGN, 0.9, 0.5, unlabeled_loss=loss_name)
    weak = torch.cat([logits[0.2], logits[0.25]])
    conf, arg = torch.softmax(weak, 1).max(1)
    pseudo = arg.clone()
    pseudo[0][box[0]], conf0 = arg[1][box[0]], conf.clone()
    conf0[0][box[0]] = conf[1][box[0]]
    keep = conf0 >= 0.9
    assert 0 < keep.sum() < keep.numel()
    strong = torch.cat([logits[0.3], logits[0.35]])
    if loss_name == "ce":
        logp = torch.log_softmax(strong, 1).gather(1, pseudo[:, None])[:, 0]
        unl = -(logp * keep).sum() / keep.numel()
    else:
        p = torch.softmax(strong, 1)
        dices = []
        for c in range(K):
            t = ((pseudo == c) & keep).double()
            inter, total = (p[:, c] * t).sum(), (p[:, c] ** 2 * keep).sum() + t.sum()
            dices.append((2 * inter + 1e-5) / (total + 1e-5))
        unl = 1 - sum(dices) / K
    assert terms["confident"].item() == pytest.approx(keep.double().mean().item())
    assert terms["consistency"].item() == pytest.approx(unl.item(), rel=1e-6)     # the Dice runs in fp32
    assert loss.item() == pytest.approx(hand_ce(logits[0.1], y).item() + 0.5 * unl.item(), rel=1e-6)
    loss.backward()
    assert logits[0.3].grad is not None and logits[0.2].grad is None           # the weak view is detached


class Calls(torch.nn.Module):
    """A BatchNorm network that records the batch sizes it is called with."""

    def __init__(self):
        super().__init__()
        self.net, self.calls = torch.nn.Sequential(torch.nn.Conv2d(1, K, 1), torch.nn.BatchNorm2d(K)).double(), []

    def forward(self, x):
        self.calls.append(len(x))
        return self.net(x)


def test_fixmatch_with_batchnorm_reads_the_strong_views_apart():
    """For a BatchNorm G_IS the strong views get a call of their own after the labeled and weak images (the
    calls UniMatch makes): their statistics never mix into the labeled images' predictions."""
    from cycleseg.objective import fixmatch_objective

    torch.manual_seed(0)
    x, xw, xs = torch.randn(2, 1, 4, 4).double(), torch.randn(3, 1, 4, 4).double(), torch.randn(3, 1, 4, 4).double() * 5
    y, box = torch.randint(0, K, (2, 4, 4)), torch.zeros(3, 4, 4, dtype=torch.bool)
    net = Calls()
    loss, terms = fixmatch_objective(net, x, y, xw, xs, box, K, IGN, 0.0, 1.0, merge_passes=True, strong_apart=True)
    assert net.calls == [5, 3]
    sup = hand_ce(net.net(torch.cat([x, xw]))[:2], y)
    assert terms["gen_seg"].item() == pytest.approx(sup.item(), rel=1e-9)
    net.calls.clear()
    fixmatch_objective(net, x, y, xw, xs, box, K, IGN, 0.0, 1.0, merge_passes=True)
    assert net.calls == [8]
