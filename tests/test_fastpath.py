"""The fast path computes the same model as the eager baseline (--no-fast), and resumes exactly."""
import dataclasses

import pytest
import torch

from cycleseg import ops
from cycleseg.config import Config, from_flat
from cycleseg.data.h5format import Meta
from cycleseg.fastpath import Plan, busy_cpu_note, cpu_has_native_bf16, plan_for
from cycleseg.models import NormReLU, use_ops
from cycleseg.assemble import make_step as step_for, networks_of

FAST_CPU = Plan(fused_ops=True, merge_passes=True, fused_adam=True)


def setup(mode="semi", lr=1e-3, **cfg_kw):
    cfg = from_flat(dict(device="cpu", mode=mode, ngf=8, n_blocks=2, ndf=8, steps=100, lr=lr, pool_size=4,
                         **cfg_kw)).resolved()
    meta = Meta(num_classes=5, class_names=list("abcde"), palette=[[0, 0, 0]] * 5, channels=3)
    g = torch.Generator().manual_seed(1)
    data = [{"images": torch.randint(0, 256, (4, 3, 32, 32), generator=g, dtype=torch.uint8),
             "masks": torch.randint(0, 5, (4, 32, 32), generator=g, dtype=torch.uint8),
             "unlabeled": torch.randint(0, 256, (4, 3, 32, 32), generator=g, dtype=torch.uint8)} for _ in range(6)]
    return cfg, meta, data


def make_step(cfg, meta, plan):
    torch.manual_seed(0)
    nets = networks_of(cfg, meta)
    for net in nets.values():
        use_ops(net, plan.ops())
    return nets, step_for(cfg, nets, meta, plan)


def inert(nets, name: str) -> bool:
    """Biases of convolutions followed by an instance norm: the norm removes them, so their true gradient
    is 0 and Adam (which divides by the gradient's magnitude) turns rounding noise into full-size steps.
    They do not change what the network computes."""
    modules = dict(nets.named_modules())
    if not name.endswith("bias"):
        return False
    parent, idx = name.rsplit(".", 2)[0], int(name.rsplit(".", 2)[1])
    seq = modules[parent]
    return idx + 1 < len(seq) and isinstance(seq[idx + 1], NormReLU)


def relative(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30)).item()


@pytest.mark.parametrize("mode", ["semi", "partial"])
def test_one_step_same_losses_and_gradients(mode):
    """From the same weights and batch: the fast step's loss terms and every gradient equal the eager
    baseline's to fp32 rounding (lr 1e-30, below the weights' rounding: the step leaves the weights as
    they are and the gradients of both updates in .grad)."""
    cfg, meta, data = setup(mode, lr=1e-30)
    grads, terms = {}, {}
    for name, plan in (("eager", Plan()), ("fast", FAST_CPU)):
        nets, step = make_step(cfg, meta, plan)
        from cycleseg import ops
        with ops.validation(False):
            terms[name] = step(data[0])
        grads[name] = {f"{k}.{n}": p.grad.clone() for k, net in nets.items() for n, p in net.named_parameters()}
    assert terms["fast"].keys() == terms["eager"].keys()
    for k in terms["eager"]:
        assert terms["fast"][k].item() == pytest.approx(terms["eager"][k].item(), rel=2e-5, abs=1e-7), k
    for k, g in grads["eager"].items():
        net, param = k.split(".", 1)
        if inert(nets[net], param):
            assert grads["fast"][k].abs().max() < 1e-5 * max(v.abs().max() for v in grads["eager"].values())
        else:
            assert relative(grads["fast"][k], g) < 1e-4, k


def test_steps_follow_each_other():
    """Five steps from the same seed on the same batches (lr 1e-4): the loss terms agree within 1e-3,
    every conv weight within 2e-3 and every network's output on probe inputs within 1e-2 (relative).
    Measured: 4e-4 for the weights, 3e-3 for G_IS's logits after five steps. Not tighter, and biases not
    compared: Adam's first steps are ~lr * sign(gradient), so rounding-level differences in near-zero
    gradient entries (biases before an instance norm, the directions a one-hot input cannot see) become
    lr-sized differences that training then amplifies; at lr 1e-3 the same pair drifts 10x faster, and two
    eager runs differing only in batching drift the same way."""
    from cycleseg import native, ops
    from cycleseg.objective import one_hot

    cfg, meta, data = setup(lr=1e-4)
    g = torch.Generator().manual_seed(5)
    probe, mask = torch.rand(3, 3, 32, 32, generator=g) * 2 - 1, torch.randint(0, 5, (3, 32, 32), generator=g)
    runs = {}
    for name, plan in (("eager", Plan()), ("fast", FAST_CPU)):
        nets, step = make_step(cfg, meta, plan)
        with ops.validation(False):
            losses = [step(b) for b in data[:5]]
        for net in nets.values():
            use_ops(net, native)
        with torch.no_grad():
            outputs = {"G_IS": nets["G_IS"](probe), "G_SI": nets["G_SI"](one_hot(mask, 5, 255)),
                       "D_S": nets["D_S"](one_hot(mask, 5, 255)), "D_I": nets["D_I"](probe)}
        runs[name] = (nets, losses, outputs)
    for a, b in zip(runs["eager"][1], runs["fast"][1]):
        for k in a:
            assert b[k].item() == pytest.approx(a[k].item(), rel=1e-3, abs=1e-6), k
    for name, net in runs["eager"][0].items():
        for (pname, p), q in zip(net.named_parameters(), runs["fast"][0][name].parameters()):
            if pname.endswith("weight"):
                assert relative(q, p) < 2e-3, (name, pname)
        assert relative(runs["fast"][2][name], runs["eager"][2][name]) < 1e-2, name


def test_bf16_autocast_step_close_to_fp32():
    """The CUDA fast path's bf16 autocast (run here on the CPU): the loss terms of one step within 2 %
    of fp32 (bf16 keeps 8 bits of mantissa: ~0.4 % per rounding, through a 12-layer generator)."""
    cfg, meta, data = setup(lr=1e-30)
    out = {}
    for name, plan in (("fp32", FAST_CPU), ("bf16", dataclasses.replace(FAST_CPU, autocast="bfloat16"))):
        _, step = make_step(cfg, meta, plan)
        out[name] = step(data[0])
    for k in out["fp32"]:
        assert out["bf16"][k].float().item() == pytest.approx(out["fp32"][k].item(), rel=2e-2, abs=1e-3), k


def test_compiled_step_is_one_graph_per_update():
    """torch.compile(fullgraph=True) traces each update's loss without a graph break (aot_eager: no code
    generation, so this runs in seconds) and gives the eager fast path's losses."""
    cfg, meta, data = setup(lr=1e-30)
    torch._dynamo.reset()
    compiled = dataclasses.replace(FAST_CPU, compile=True, compile_backend="aot_eager")
    _, eager = make_step(cfg, meta, FAST_CPU)
    _, comp = make_step(cfg, meta, compiled)
    for b in data[:2]:
        a, c = eager(b), comp(b)
        for k in a:
            assert c[k].item() == pytest.approx(a[k].item(), rel=1e-5, abs=1e-7), k


def test_one_channel_convolutions_read_tensors_the_compiler_lays_out():
    """A one-channel tensor's channel stride is arbitrary: cuDNN picks a convolution's output layout from
    it (when the weight does not fix one), and torch.compile, which does not track that stride, can
    expect the other layout: on grayscale data the compiled GPU step failed so at D_I's first 1x1
    convolution of G_SI's output. In the compiled graphs of the GPU plan's step (forward and backward),
    every convolution that reads one channel reads a reflection padding, a tensor the compiler lays out
    itself (D_I's first layer is a broadcast product, models.Conv1x1)."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd
    aten = torch.ops.aten
    graphs = []

    def keep(gm, example_inputs):
        graphs.append(gm)
        return make_boxed_func(gm.forward)

    cfg, meta, _ = setup()
    meta = dataclasses.replace(meta, channels=1)
    g = torch.Generator().manual_seed(2)
    batch = {"images": torch.randint(0, 256, (2, 1, 16, 16), generator=g, dtype=torch.uint8),
             "masks": torch.randint(0, 5, (2, 16, 16), generator=g, dtype=torch.uint8),
             "unlabeled": torch.randint(0, 256, (2, 1, 16, 16), generator=g, dtype=torch.uint8)}
    plan = dataclasses.replace(FAST_CPU, channels_last=True, autocast="bfloat16", compile=True,
                               compile_backend=aot_autograd(fw_compiler=keep, bw_compiler=keep))
    torch._dynamo.reset()
    nets, step = make_step(cfg, meta, plan)
    for net in nets.values():
        net.to(memory_format=torch.channels_last)
    step(batch)
    assert len(graphs) == 4                                         # G and D updates, forward and backward
    seen = 0
    for gm in graphs:
        for node in gm.graph.nodes:
            if node.target is not aten.convolution.default or node.args[0].meta["val"].shape[1] != 1:
                continue
            src = node.args[0]
            while src.target in (aten._to_copy.default, torch.ops.prims.convert_element_type.default):
                src = src.args[0]                                   # autocast's cast to bf16
            assert src.target is aten.reflection_pad2d.default, f"{node.name} reads {src.name}"
            seen += 1
    assert seen >= 1                                                # G_IS's first convolution


def test_plan_per_device_and_choice_of_compile():
    cfg = Config(device="cpu").resolved()
    plan = plan_for(cfg, "cpu")
    assert plan.fused_ops and plan.merge_passes and plan.fused_adam and plan.channels_last
    assert plan.autocast == ("bfloat16" if cpu_has_native_bf16() else None)
    assert plan_for(dataclasses.replace(cfg, precision="fp32"), "cpu").autocast is None
    assert plan_for(dataclasses.replace(cfg, precision="bf16"), "cpu").autocast == "bfloat16"
    assert not plan.compile and "measured no faster" in plan.describe()      # compiling does not pay on the CPU
    assert not plan_for(dataclasses.replace(cfg, steps=20000), "cpu").compile
    gpu = dataclasses.replace(cfg, device="cuda")
    assert not plan_for(dataclasses.replace(gpu, steps=299), "cuda").compile       # too short to win it back
    assert plan_for(dataclasses.replace(gpu, steps=300), "cuda").compile
    assert plan_for(dataclasses.replace(cfg, compile="on"), "cpu").compile
    assert plan_for(dataclasses.replace(cfg, fast=False), "cpu") == Plan()
    assert "eager baseline" in Plan().describe()
    assert Plan.from_state(plan.state_dict()) == plan
    assert "fused Adam" in plan.describe() and "fused Adam" not in plan.describe(adam=False)


def test_the_log_names_fused_adam_only_where_a_run_has_adam(tiny, capsys):
    """A Partial run under --optimizer sgd has no Adam: its fast-path line does not name one."""
    from cycleseg.train import train

    for name, flags, adam in [("sgd", ("--mode", "partial", "--optimizer", "sgd"), False),
                              ("semi-sgd", ("--optimizer", "sgd"), True)]:      # G_IS's SGD, the discriminators' Adam
        train(tiny(name, "--steps", "1", "--eval-every", "1", *flags))
        said = capsys.readouterr()
        line = next(l for l in (said.out + said.err).splitlines() if l.startswith("fast path:"))
        assert ("fused Adam" in line) == adam, line


@pytest.mark.parametrize("recipe", [(), ("--mode", "meanteacher", "--generator", "unet", "--optimizer", "sgd",
                                          "--augment", "ssl4mis")], ids=["semi", "meanteacher-unet-sgd-ssl4mis"])
def test_resume_keeps_the_plan_and_is_exact(tmp_path, tiny, recipe):
    """A fast-path run killed after step 3 and resumed logs the same losses and ends with the same
    weights as a run that was never stopped, and keeps the plan it started with; also with the field's
    recipe (the UNet G_IS, SSL4MIS's SGD and augmentation, Mean Teacher's teacher in the checkpoint)."""
    from cycleseg.runfolder import RunFolder
    from cycleseg.train import train

    args = ("--steps", "6", "--log-every", "1", "--eval-every", "100", "--ckpt-every", "100", "--pool-size", "3",
            *recipe)
    train(tiny("straight", *args))
    train(tiny("resumed", *args), until=3)
    ck = torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)
    assert ck["plan"]["fused_ops"] and ck["plan"]["merge_passes"]
    assert not recipe or (ck["config"]["generator"] == "unet" and "teacher" in ck)
    train(tiny("resumed", *args, "--resume"))
    a, b = RunFolder(tmp_path / "straight").records("train"), RunFolder(tmp_path / "resumed").records("train")
    assert [r["step"] for r in b] == list(range(1, 7))
    for ra, rb in zip(a, b):
        assert {k: v for k, v in ra.items() if k != "time"} == {k: v for k, v in rb.items() if k != "time"}
    ca, cb = (torch.load(tmp_path / r / "last.pt", weights_only=False) for r in ("straight", "resumed"))
    for name in ca["nets"]:
        for k in ca["nets"][name]:
            assert torch.equal(ca["nets"][name][k], cb["nets"][name][k]), (name, k)


def test_fast_step_never_reads_a_value_back(monkeypatch):
    """No host sync inside a fast step: no .item() / .tolist() / bool() of a tensor (on a GPU each would
    stall the queue; the training loop reads the loss terms once per --log-every steps). (PyTorch's
    default Adam, in the --no-fast baseline, reads its CPU step counter with .item(): not a device sync.)"""
    cfg, meta, data = setup()
    _, step = make_step(cfg, meta, FAST_CPU)
    from cycleseg import ops

    def forbidden(*_a, **_k):
        raise AssertionError("host read of a tensor value inside the step")

    with ops.validation(False):
        step(data[0])                                                 # the first step may set things up
        for name in ("item", "tolist", "__bool__"):
            monkeypatch.setattr(torch.Tensor, name, forbidden)
        terms = step(data[1])
    monkeypatch.undo()
    assert all(t.dim() == 0 for t in terms.values())


def test_busy_cpu_note():
    assert busy_cpu_note(0.1, 2, 2) is None                  # quiet
    assert busy_cpu_note(0.7, 2, 2) is None                  # background noise, or a run that just ended
    assert busy_cpu_note(3.0, 1, 2) is None                  # one thread cannot oversubscribe
    note = busy_cpu_note(1.0, 2, 2)                          # one of two cores taken
    assert "OMP_NUM_THREADS=1" in note and "load 1.0 on 2 cores" in note
    assert "OMP_NUM_THREADS=6" in busy_cpu_note(2.0, 8, 8)
    assert busy_cpu_note(0.5, 4, 8) is None                  # enough free cores
