"""Step objects: the LR schedule, the mode -> step mapping, and a state round trip that continues exactly."""
import copy

import pytest
import torch

from cycleseg.config import Config, from_flat
from cycleseg.data.h5format import Meta
from cycleseg.models import networks_from_config
from cycleseg.assemble import make_step, networks_of
from cycleseg.fastpath import Plan
from cycleseg.objective import HungWeights
from cycleseg.methods import METHODS
from cycleseg.methods.fixmatch import FixMatchOptions
from cycleseg.methods.meanteacher import MeanTeacherOptions
from cycleseg.methods.cyclegan import CycleGANStep
from cycleseg.methods.supervised import SupervisedStep
from cycleseg.steps import LinearDecay


def test_linear_decay_schedule():
    f = LinearDecay(100)
    assert [f(s) for s in (0, 24)] == [1.0, 1.0]                             # constant for the first quarter
    assert f(25) == 1.0 and f(100) == 0.0 and f(1000) == 0.0
    assert f(62) == pytest.approx(1 - 37 / 75)                              # linear in between
    assert LinearDecay(1)(0) == 1.0 and LinearDecay(1)(1) == 0.0


def test_modes_map_to_steps():
    assert METHODS["semi"].step is CycleGANStep and METHODS["partial"].step is METHODS["full"].step is SupervisedStep
    assert CycleGANStep.networks == ("G_IS", "G_SI", "D_S", "D_I") and SupervisedStep.networks == ("G_IS",)
    assert CycleGANStep.streams == ("labeled", "unlabeled")
    assert METHODS["adversarial"].step.networks == ("G_IS", "D_H")


def make(mode, generator="resnet"):
    """The step of `mode` on tiny networks; the UNet G_IS with SSL4MIS's SGD (--optimizer sgd)."""
    cfg = from_flat(dict(device="cpu", mode=mode, ngf=4, n_blocks=1, ndf=4, steps=8, pool_size=2, generator=generator,
                         optimizer="sgd" if generator == "unet" else "adam")).resolved()
    meta = Meta(num_classes=3, class_names=["a", "b", "c"], palette=[[0, 0, 0]] * 3, channels=1)
    torch.manual_seed(0)
    nets = networks_of(cfg, meta)
    return nets, make_step(cfg, nets, meta, Plan())


def batches(n, size=8):
    g = torch.Generator().manual_seed(1)
    return [{"images": torch.randint(0, 256, (2, 1, size, size), generator=g, dtype=torch.uint8),
             "masks": torch.randint(0, 3, (2, size, size), generator=g, dtype=torch.uint8),
             "unlabeled": torch.randint(0, 256, (2, 1, size, size), generator=g, dtype=torch.uint8)}
            for _ in range(n)]


@pytest.mark.parametrize("generator", ["resnet", "unet"])
@pytest.mark.parametrize("mode", ["semi", "partial", "adversarial", "meanteacher", "fixmatch"])
def test_state_round_trip_continues_exactly(mode, generator):
    nets, step = make(mode, generator)
    data = batches(6, 32 if mode == "adversarial" or generator == "unet" else 8)   # Hung's D halves 5 times
    for b in data[:3]:
        step(b)
    saved_nets = {k: copy.deepcopy(v.state_dict()) for k, v in nets.items()}
    saved = copy.deepcopy(step.state_dict())
    pools = copy.deepcopy(step.pool_state())
    rng = torch.get_rng_state()                                     # Mean Teacher's noise, FixMatch's views
    expect = [step(b) for b in data[3:]]
    nets2, step2 = make(mode, generator)
    for k, v in nets2.items():
        v.load_state_dict(saved_nets[k])
    step2.load_state_dict(saved)
    step2.load_pool_state(pools)
    torch.set_rng_state(rng)
    got = [step2(b) for b in data[3:]]
    for a, b in zip(expect, got):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert step2.lr() == step.lr() < step.optim.lr                  # the decay has begun
    if mode == "semi":
        assert set(step.pool_state()) == {"seg", "img"}


def test_sigmoid_rampup():
    from cycleseg.steps import sigmoid_rampup
    assert sigmoid_rampup(0, 100) == pytest.approx(float(torch.exp(torch.tensor(-5.0))))
    assert sigmoid_rampup(50, 100) == pytest.approx(float(torch.exp(torch.tensor(-1.25))))
    assert sigmoid_rampup(100, 100) == 1.0 == sigmoid_rampup(500, 100) == sigmoid_rampup(0, 0)


def test_rampup_and_discriminator_lr_reach_the_step():
    cfg = from_flat(dict(device="cpu", mode="semi", ngf=4, n_blocks=1, ndf=4, steps=8, rampup=0.5, lr=1e-3,
                         lr_d=1e-4)).resolved()
    meta = Meta(num_classes=3, class_names=["a", "b", "c"], palette=[[0, 0, 0]] * 3, channels=1)
    torch.manual_seed(0)
    step = make_step(cfg, networks_from_config(cfg, meta), meta, Plan())
    assert step.optimizers["D"].param_groups[0]["lr"] == 1e-4 and step.optimizers["G"].param_groups[0]["lr"] == 1e-3
    weights = []
    for b in batches(5):
        step(b)
        weights.append(step.ramp.item())
    from cycleseg.steps import sigmoid_rampup
    assert weights == pytest.approx([sigmoid_rampup(i, 4) for i in range(5)])


def test_adversarial_step_terms_and_self_training_start():
    """Hung et al.'s step: the adversarial terms reach G_IS; self-training starts at a quarter of the run."""
    cfg = Config(device="cpu", mode="adversarial", ngf=4, n_blocks=1, ndf=4, steps=8, lr=1e-3).resolved()
    meta = Meta(num_classes=3, class_names=["a", "b", "c"], palette=[[0, 0, 0]] * 3, channels=1)
    torch.manual_seed(0)
    nets = networks_of(cfg, meta)
    step = make_step(cfg, nets, meta, Plan())
    on = []
    for b in batches(4, 32):
        terms = step(b)
        on.append(step.self_training.item())
    assert set(terms) == {"gen_seg", "adv", "semi_adv", "semi", "d_adv"}
    assert on == [0.0, 0.0, 1.0, 1.0]                                # from step 2 of 8
    assert step.optimizers["D"].param_groups[0]["initial_lr"] == pytest.approx(0.4e-3)
    from cycleseg.objective import adversarial_objective
    nets["D_H"].requires_grad_(False)
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    y = torch.randint(0, 3, (2, 32, 32))
    loss, terms, _ = adversarial_objective(nets["G_IS"], nets["D_H"], x, y, x, 3, 255,
                                           HungWeights(adv=1.0, semi_adv=0.0, self_training=0.0, threshold=0.2))
    nets["G_IS"].zero_grad()
    (loss - terms["gen_seg"]).backward()                              # the adversarial term alone
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in nets["G_IS"].parameters())


@pytest.mark.parametrize("rampup", [0.0, 0.5])
def test_fixmatch_weight_ramps_up_when_asked(rampup):
    """--fm-rampup 0 (UniMatch): the strong-view term at full weight from the first step; otherwise the
    sigmoid ramp-up of Mean Teacher over that fraction of the run."""
    from cycleseg.methods.fixmatch import FixMatchStep
    from cycleseg.steps import sigmoid_rampup
    cfg = Config(device="cpu", mode="fixmatch", ngf=4, n_blocks=1, steps=8,
                 fixmatch=FixMatchOptions(weight=0.5, rampup=rampup)).resolved()
    meta = Meta(num_classes=3, class_names=["a", "b", "c"], palette=[[0, 0, 0]] * 3, channels=1)
    torch.manual_seed(0)
    step = make_step(cfg, networks_from_config(cfg, meta, FixMatchStep.networks), meta, Plan())
    weights = []
    for b in batches(5):
        step(b)
        weights.append(float(step.weight))
    assert weights == pytest.approx([0.5 * sigmoid_rampup(i, round(rampup * 8)) for i in range(5)])
    assert (weights[0] == 0.5) == (rampup == 0)


def test_mean_teacher_teacher_is_an_ema_and_the_term_starts_late():
    from cycleseg.methods.meanteacher import MeanTeacherStep
    cfg = Config(device="cpu", mode="meanteacher", ngf=4, n_blocks=1, ndf=4, steps=8,
                 meanteacher=MeanTeacherOptions(start=0.25)).resolved()
    meta = Meta(num_classes=3, class_names=["a", "b", "c"], palette=[[0, 0, 0]] * 3, channels=1)
    torch.manual_seed(0)
    nets = networks_from_config(cfg, meta, MeanTeacherStep.networks)
    step = make_step(cfg, nets, meta, Plan())
    weights = []
    for t, b in enumerate(batches(4)):
        teacher = [p.clone() for p in step.teacher.parameters()]
        terms = step(b)
        weights.append(float(step.weight))
        alpha = min(1 - 1 / (t + 1), cfg.meanteacher.ema)                   # t updates before this one
        for old, new, student in zip(teacher, step.teacher.parameters(), nets["G_IS"].parameters()):
            assert torch.allclose(new, alpha * old + (1 - alpha) * student, atol=1e-7)
        assert set(terms) == {"gen_seg", "consistency"}
    assert weights[:2] == [0.0, 0.0] and 0 < weights[2] < weights[3] < cfg.meanteacher.consistency   # start at 25 %: 2 of 8
