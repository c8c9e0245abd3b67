import torch
import triton.language as tl


def acc_dtype(x: torch.Tensor):
    """(torch dtype, triton dtype) of the accumulation: fp64 for fp64 inputs, else fp32."""
    return (torch.float64, tl.float64) if x.dtype == torch.float64 else (torch.float32, tl.float32)


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())
