"""Inference of G_IS (the segmenter), cycleseg's path against every way a user could run the same model:

    cycleseg          cycleseg.inference: fused forward ops, channels_last, bf16 autocast where native
    eager_fp32        PyTorch's own ops, eager, fp32, NCHW, under torch.inference_mode (the baseline)
    compiled          torch.compile of the eager_fp32 model
    bf16_cl           PyTorch's own ops with bf16 autocast and channels_last (the best plain setting)
    onnxruntime       the model exported by cycleseg.export (.onnx), run by onnxruntime's default CPU
                      provider (CUDA's on a GPU), threads set as torch's

Networks: ACDC's G_IS at the CPU preset (ResNet, ngf 16, 3 blocks, 64x64, 1 channel, K = 4), the paper's
(ngf 64, 9 blocks) at 256x256, and SSL4MIS's UNet at 256x256; batch sizes 1 / 8 / 32 (the 256x256
networks on the CPU: 1 / 8). Every variant
computes the same model on the same inputs: its class scores are compared with eager_fp32's (largest
absolute difference, argmax agreement), recorded in extra_info and asserted: fp32 variants within float
rounding (agreement >= 99.9 %, scores within 1e-3 relative; on CUDA, where cuDNN convolves in TF32 by
PyTorch's default, 99.5 % and 1e-2); cycleseg's bf16 no farther from fp32 than
PyTorch's own bf16 (bf16_cl). On these untrained networks the class scores lie close together, so bf16's
argmax agreement reads low (96-99.5 %) for both; on trained models it is >= 99.9 %
(benchmarks/precision_check.py, RESULTS.md).

    python -m pytest benchmarks/bench_inference.py --benchmark-json out.json
    CYCLESEG_BENCH_QUICK=1: on the CPU the CPU preset, batches 1 and 8; on a GPU (gpu_check.sh, about a
    minute) the paper's networks at batch 8
"""
import pytest
import torch

from cycleseg import inference, native
from cycleseg.export import export_onnx
from cycleseg.models import build_networks, use_ops
from common import DEVICE, QUICK, device_name, sync

NETWORKS = {   # name: (generator, ngf, n_blocks, side)
    "cpu-preset": ("resnet", 16, 3, 64),
    "paper": ("resnet", 64, 9, 256),
    "unet": ("unet", 16, 9, 256),
}
if QUICK:                                   # the CI-sized run on the CPU; the GPU check's on a GPU
    NETWORKS = {"paper": NETWORKS["paper"]} if DEVICE == "cuda" else {"cpu-preset": NETWORKS["cpu-preset"]}
BATCHES = ([8] if DEVICE == "cuda" else [1, 8]) if QUICK else [1, 8, 32]
# On the CPU the 256x256 networks at batch 32 take tens of seconds a call: batches 1 and 8 there
LARGE_BATCHES = BATCHES if DEVICE == "cuda" else [b for b in BATCHES if b <= 8]
CASES = [(name, b) for name in NETWORKS for b in (BATCHES if NETWORKS[name][3] <= 64 else LARGE_BATCHES)]
VARIANTS = ["cycleseg", "eager_fp32", "compiled", "bf16_cl", "onnxruntime"]
K, CHANNELS = 4, 1
_cache = {}


def network(name: str) -> torch.nn.Module:
    """G_IS of `name`, fresh from seed 0, with PyTorch's own ops (a copy per variant)."""
    generator, ngf, n_blocks, _ = NETWORKS[name]
    torch.manual_seed(0)
    net = build_networks(CHANNELS, K, ngf=ngf, n_blocks=n_blocks, with_cycle=False, generator=generator)["G_IS"]
    for m in net.modules():                                 # BatchNorm (UNet): non-trivial running statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 2.0)
    return use_ops(net, native).to(DEVICE).eval()


def inputs(name: str, batch: int) -> torch.Tensor:
    side = NETWORKS[name][3]
    g = torch.Generator().manual_seed(batch)
    x = torch.rand((batch, CHANNELS, side // 8, side // 8), generator=g) * 2 - 1     # smooth, image-like
    return torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear").to(DEVICE)


def onnx_session(name: str, net):
    import onnxruntime as ort

    if name not in _cache:
        side = NETWORKS[name][3]
        meta = {"channels": CHANNELS, "num_classes": K, "generator": NETWORKS[name][0]}
        blob = export_onnx(net.cpu(), meta, torch.zeros(2, CHANNELS, side, side))
        net.to(DEVICE)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        providers = ["CUDAExecutionProvider"] if DEVICE == "cuda" else ["CPUExecutionProvider"]
        if providers[0] not in ort.get_available_providers():        # a CPU-only onnxruntime beside a GPU
            pytest.skip(f"this onnxruntime has no {providers[0]} (it has {ort.get_available_providers()})")
        _cache[name] = ort.InferenceSession(blob, opts, providers=providers)
    return _cache[name]


def runner(variant: str, name: str):
    """A function images -> float32 class scores (N, K, H, W) on the host."""
    net = network(name)
    if variant == "cycleseg":
        inference.prepare(net, DEVICE)
        return lambda x: inference.logits(net, x)
    if variant == "eager_fp32":
        return torch.inference_mode()(lambda x: net(x).float())
    if variant == "compiled":
        torch._dynamo.reset()
        fn = torch.compile(net)
        return torch.inference_mode()(lambda x: fn(x).float())
    if variant == "bf16_cl":
        net.to(memory_format=torch.channels_last)

        @torch.inference_mode()
        def run(x):
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                return net(x.contiguous(memory_format=torch.channels_last)).float()
        return run
    session = onnx_session(name, net)
    return lambda x: torch.from_numpy(session.run(None, {"x": x.cpu().numpy()})[0])


def peer_bf16(name: str, batch: int) -> torch.Tensor:
    """PyTorch's own bf16 + channels_last scores (what bf16 alone changes)."""
    key = ("bf16", name, batch)
    if key not in _cache:
        _cache[key] = runner("bf16_cl", name)(inputs(name, batch)).cpu()
    return _cache[key]


def reference(name: str, batch: int) -> torch.Tensor:
    key = ("ref", name, batch)
    if key not in _cache:
        _cache[key] = runner("eager_fp32", name)(inputs(name, batch)).cpu()
    return _cache[key]


@pytest.mark.parametrize("name,batch", CASES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_inference(benchmark, variant, name, batch):
    if variant == "onnxruntime":
        pytest.importorskip("onnxruntime")
    generator, ngf, n_blocks, side = NETWORKS[name]
    benchmark.group = f"G_IS inference, {name} ({generator}, ngf {ngf}), {side}x{side}, batch {batch}"
    x = inputs(name, batch)
    fn = runner(variant, name)
    out = fn(x).cpu()                                             # warm-up (compile, first calls) and check
    fn(x)
    ref = reference(name, batch)
    agreement = (out.argmax(1) == ref.argmax(1)).double().mean().item()
    max_diff = (out - ref).abs().max().item()
    bf16 = variant == "bf16_cl" or (variant == "cycleseg" and inference.plan_of(DEVICE).bf16)

    def one():
        fn(x)
        sync()

    big = side * side * batch * ngf >= 256 * 256 * 32 * 64
    benchmark.pedantic(one, rounds=3 if big else 10, iterations=1)
    ms = benchmark.stats.stats.median * 1e3
    benchmark.extra_info.update(device=device_name(), torch=torch.__version__, ms=ms, slices_per_s=batch / ms * 1e3,
                                argmax_agreement=agreement, max_abs_diff=max_diff, bf16=bf16)
    if not bf16:                                              # fp32: the same numbers up to float rounding
        # (on CUDA PyTorch's default lets cuDNN convolve in TF32, a 10-bit mantissa: 1e-2, 99.5 %)
        tf32 = x.is_cuda and torch.backends.cudnn.allow_tf32
        rel, least = (1e-2, 0.995) if tf32 else (1e-3, 0.999)
        benchmark.extra_info.update(tf32=tf32)
        assert agreement >= least and max_diff <= rel * max(1.0, ref.abs().max().item()), (variant, agreement,
                                                                                            max_diff)
    elif variant == "cycleseg":                               # bf16: as close to fp32 as PyTorch's own bf16
        peer = peer_bf16(name, batch)
        peer_diff = (peer - ref).abs().max().item()
        benchmark.extra_info.update(agreement_with_pytorch_bf16=(out.argmax(1) == peer.argmax(1)).double().mean().item(),
                                    pytorch_bf16_max_abs_diff=peer_diff)
        assert max_diff <= 1.5 * peer_diff + 1e-3, (max_diff, peer_diff)
