"""Step objects: the LR schedule, the mode -> step mapping, and a state round trip that continues exactly."""
import copy

import pytest
import torch

from cycleseg.config import Config
from cycleseg.data.h5format import Meta
from cycleseg.models import networks_from_config
from cycleseg.steps import STEPS, CycleGANStep, LinearDecay, SupervisedStep


def test_linear_decay_schedule():
    f = LinearDecay(100)
    assert [f(s) for s in (0, 24)] == [1.0, 1.0]                             # constant for the first quarter
    assert f(25) == 1.0 and f(100) == 0.0 and f(1000) == 0.0
    assert f(62) == pytest.approx(1 - 37 / 75)                              # linear in between
    assert LinearDecay(1)(0) == 1.0 and LinearDecay(1)(1) == 0.0


def test_modes_map_to_steps():
    assert STEPS["semi"] is CycleGANStep and STEPS["partial"] is STEPS["full"] is SupervisedStep
    assert CycleGANStep.networks == ("G_IS", "G_SI", "D_S", "D_I") and SupervisedStep.networks == ("G_IS",)
    assert CycleGANStep.streams == ("labeled", "unlabeled")


def make(mode):
    cfg = Config(device="cpu", mode=mode, ngf=4, n_blocks=1, ndf=4, steps=8, pool_size=2).resolved()
    meta = Meta(num_classes=3, class_names=["a", "b", "c"], palette=[[0, 0, 0]] * 3, channels=1)
    torch.manual_seed(0)
    nets = networks_from_config(cfg, meta, STEPS[mode].networks)
    return nets, STEPS[mode](nets, cfg, meta)


def batches(n):
    g = torch.Generator().manual_seed(1)
    return [{"images": torch.randint(0, 256, (2, 1, 8, 8), generator=g, dtype=torch.uint8),
             "masks": torch.randint(0, 3, (2, 8, 8), generator=g, dtype=torch.uint8),
             "unlabeled": torch.randint(0, 256, (2, 1, 8, 8), generator=g, dtype=torch.uint8)} for _ in range(n)]


@pytest.mark.parametrize("mode", ["semi", "partial"])
def test_state_round_trip_continues_exactly(mode):
    nets, step = make(mode)
    data = batches(6)
    for b in data[:3]:
        step(b)
    saved_nets = {k: copy.deepcopy(v.state_dict()) for k, v in nets.items()}
    saved = copy.deepcopy(step.state_dict())
    expect = [step(b) for b in data[3:]]
    nets2, step2 = make(mode)
    for k, v in nets2.items():
        v.load_state_dict(saved_nets[k])
    step2.load_state_dict(saved)
    got = [step2(b) for b in data[3:]]
    for a, b in zip(expect, got):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert step2.lr() == step.lr() < 1e-3
    if mode == "semi":
        assert set(step.state_dict()["pools"]) == {"seg", "img"}
