"""Shared pieces of the Triton launchers."""
import torch
import triton.language as tl


def acc_dtype(x: torch.Tensor):
    """(torch dtype, triton dtype) of the accumulation: fp64 for fp64 inputs, else fp32."""
    return (torch.float64, tl.float64) if x.dtype == torch.float64 else (torch.float32, tl.float32)


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def flat_pixels(h: int, w: int, sh: int, sw: int) -> bool:
    """True when pixel p = (p // W, p % W) sits at p * sw (NCHW- and NHWC-contiguous planes): the kernels
    then index pixels linearly (no division per element; contiguous when sw == 1)."""
    return h == 1 or sh == w * sw


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; on the CPU (the interpreter) a small fixed number."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4
