"""The inference path (cycleseg.inference): the fused forward ops, channels_last and bf16 where native give
the same model as PyTorch's eager fp32 (fp32: within float rounding; bf16: the same predictions on a
trained model, within stated tolerances), without autograd, in predict, evaluate and validation alike."""
import numpy as np
import pytest
import torch

from cycleseg import inference, native
from cycleseg.assemble import build
from cycleseg.checkpoint import load_run, networks_from_checkpoint
from cycleseg.config import Config
from cycleseg.data.h5format import Meta
from cycleseg.fastpath import Plan, plan_for
from cycleseg.models import build_networks, use_ops


@pytest.mark.parametrize("generator", ["resnet", "unet"])
def test_fp32_path_equals_eager_pytorch(generator):
    def fresh():
        torch.manual_seed(0)
        return build_networks(1, 4, ngf=8, n_blocks=2, with_cycle=False, generator=generator)["G_IS"]

    net, eager = fresh(), use_ops(fresh(), native).eval()
    x = torch.rand(3, 1, 32, 48) * 2 - 1
    with torch.no_grad():
        expect = eager(x)
    inference.prepare(net, "cpu", "fp32")
    got = inference.logits(net, x)
    assert net.inference_plan == inference.InferencePlan(bf16=False, channels_last=True)
    assert got.dtype == torch.float32 and torch.is_inference(got) and not got.requires_grad
    torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-4)
    assert torch.equal(inference.segment(net, x), got.argmax(1))
    assert net.training                         # eval mode inside (BatchNorm: equal to the eval-mode eager), restored after


def test_bf16_keeps_a_trained_models_predictions(tiny_checkpoint):
    """bf16 autocast against fp32 on a trained model's validation images (evaluate.precision_agreement, as
    benchmarks/precision_check.py measures it on ACDC: RESULTS.md): the argmax agrees on >= 99 % of the
    pixels and the slice mIoU moves by < 0.01; bf16's logits come back as fp32."""
    from cycleseg.evaluate import precision_agreement

    r = precision_agreement(tiny_checkpoint, limit=64)
    assert r["slices"] == 64 and r["agreement"] >= 0.99
    assert abs(r["miou"]["fp32"] - r["miou"]["bf16"]) < 0.01
    bf16 = inference.prepare(networks_from_checkpoint(load_run(tiny_checkpoint))[2]["G_IS"], "cpu", "bf16")
    assert inference.logits(bf16, torch.zeros(2, 1, 32, 32)).dtype == torch.float32


def test_a_training_runs_validation_uses_its_plan():
    cfg = Config(device="cpu", ngf=4, n_blocks=1, ndf=4, steps=4).resolved()
    meta = Meta(num_classes=3, class_names=["a", "b", "c"], palette=[[0, 0, 0]] * 3, channels=1)
    plan = plan_for(cfg, "cpu")
    nets, _ = build(cfg, meta, torch.device("cpu"), plan)
    assert nets["G_IS"].inference_plan == inference.InferencePlan(plan.autocast == "bfloat16", plan.channels_last)
    nets, _ = build(cfg, meta, torch.device("cpu"), Plan())         # --no-fast: fp32, NCHW
    assert nets["G_IS"].inference_plan == inference.InferencePlan(False, False)


def test_precision_is_checked_and_reported_by_the_commands(tiny_checkpoint, tmp_path, capsys):
    from cycleseg.evaluate import main as evaluate_main

    for precision in ("fp32", "bf16"):
        assert evaluate_main([str(tiny_checkpoint), "--precision", precision, "--no-progress",
                              "--out", str(tmp_path / precision)]) == 0
    with pytest.raises(SystemExit):
        evaluate_main([str(tiny_checkpoint), "--precision", "fp16"])
    assert "invalid choice: 'fp16'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="precision must be one of"):
        inference.plan_of("cpu", "half")
