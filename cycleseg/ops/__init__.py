"""Fused ops: the fast path's kernels as PyTorch custom ops (namespace `cycleseg::`).

Same names and semantics as cycleseg.reference. Each op lives in its own files: cycleseg/ops/<op>.py
(its schemas, fake implementations, autograd formula and public functions; it registers itself in
registry.REGISTRY on import), kernels/<op>.py (Triton kernels: the CUDA kernels), csrc/<op>.cpp (C++
kernels: the CPU kernels, compiled on first use by cpu.py), tests/test_<op>.py and
benchmarks/bench_<op>.py. The imports below are the package's public names.
"""
from .instance_norm_relu import instance_norm, instance_norm_relu
from .lsgan_loss import lsgan_disc_loss, lsgan_loss
from .registry import REGISTRY
from .softmax_cross_entropy import softmax_cross_entropy
from .testing import cpu_backend, poisoned
from .validation import validation

__all__ = ["softmax_cross_entropy", "lsgan_loss", "lsgan_disc_loss", "instance_norm_relu", "instance_norm",
           "REGISTRY", "cpu_backend", "poisoned", "validation"]
