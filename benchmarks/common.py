"""Shared pieces of the op benchmarks: the four variants, timing one pass, the bytes floor."""
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
VARIANTS = ["reference", "reference_compiled", "fused", "fused_compiled"]
PASSES = ["fwd", "fwd_bwd"]


def variant_fn(variant: str, reference_fn, fused_fn):
    fn = reference_fn if variant.startswith("reference") else fused_fn
    if variant.endswith("_compiled"):
        torch._dynamo.reset()
        fn = torch.compile(fn, fullgraph=True)
    return fn


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def bench(benchmark, fn, inputs: list, pass_: str, bytes_floor: int, rounds: int = 5):
    """Time fn(*inputs) (fwd) or fn(*inputs) + backward (fwd_bwd); record GB/s at the floor's bytes."""
    if pass_ == "fwd":
        def run():
            with torch.no_grad():
                fn(*inputs)
            sync()
    else:
        leaves = [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad]

        def run():
            out = fn(*inputs)
            out.backward(torch.ones_like(out))
            for x in leaves:
                x.grad = None
            sync()
    for _ in range(2):                                              # warm-up (and compilation)
        run()
    benchmark.pedantic(run, rounds=rounds, iterations=1)
    benchmark.extra_info.update(device=torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
                                bytes=bytes_floor, torch=torch.__version__)
