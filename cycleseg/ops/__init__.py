"""Fused ops: the fast path's kernels as PyTorch custom ops (namespace `cycleseg::`).

Same names and semantics as cycleseg.reference. The schemas are defined once (library.py); the
dispatcher sends CPU tensors to the C++ kernels (csrc/, compiled on first use: cpu.py) and CUDA tensors
to the Triton kernels (kernels/: cuda.py); each op's module registers its fake implementation and
autograd formula and holds the public function.
"""
from . import cpu, cuda  # noqa: F401  (registers each device's kernels)
from .instance_norm_relu import instance_norm, instance_norm_relu
from .lsgan_loss import lsgan_disc_loss, lsgan_loss
from .softmax_cross_entropy import softmax_cross_entropy
from .testing import cpu_backend, poisoned
from .validation import validation

__all__ = ["softmax_cross_entropy", "lsgan_loss", "lsgan_disc_loss", "instance_norm_relu", "instance_norm",
           "cpu_backend", "poisoned", "validation"]
