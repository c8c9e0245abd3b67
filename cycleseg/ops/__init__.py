"""Fused ops: the fast path's kernels as PyTorch custom ops (namespace `cycleseg::`).

Same names and semantics as cycleseg.reference: CUDA tensors run the Triton kernels (kernels/), CPU
tensors the C++ kernels (csrc/, compiled on first use).
"""
from .backend import cpu_backend, current_cpu_backend
from .instance_norm_relu import instance_norm, instance_norm_relu
from .lsgan_loss import lsgan_disc_loss, lsgan_loss
from .softmax_cross_entropy import softmax_cross_entropy
from .validation import validation

__all__ = ["softmax_cross_entropy", "lsgan_loss", "lsgan_disc_loss", "instance_norm_relu", "instance_norm",
           "cpu_backend", "current_cpu_backend", "validation"]
