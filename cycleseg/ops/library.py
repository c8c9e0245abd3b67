"""The schemas of the fused ops, defined once (namespace `cycleseg::`). Each forward op has a backward
op; their kernels are registered with the dispatcher per device: the C++ kernels for CPU (csrc/, from
C++: TORCH_LIBRARY_IMPL), the Triton launchers for CUDA (cuda.py); fake implementations and autograd
formulas in each op's module. Outputs never alias inputs."""
from __future__ import annotations

import torch

SCHEMAS = {
    "softmax_cross_entropy": "(Tensor logits, Tensor target, Tensor? weight, int ignore_index, str reduction) "
                             "-> (Tensor loss, Tensor denom, Tensor lse)",
    "softmax_cross_entropy_backward": "(Tensor grad, Tensor logits, Tensor target, Tensor? weight, Tensor denom, "
                                      "Tensor lse, int ignore_index, str reduction) -> Tensor",
    "instance_norm_relu": "(Tensor x, float eps, float negative_slope) -> (Tensor y, Tensor mean, Tensor rstd)",
    "instance_norm_relu_backward": "(Tensor grad, Tensor x, Tensor mean, Tensor rstd, float negative_slope) -> Tensor",
    "lsgan_loss": "(Tensor d, float target) -> Tensor",
    "lsgan_loss_backward": "(Tensor grad, Tensor d, float target) -> Tensor",
    "lsgan_disc_loss": "(Tensor d_real, Tensor d_fake) -> Tensor",
    "lsgan_disc_loss_backward": "(Tensor grad, Tensor d_real, Tensor d_fake) -> (Tensor, Tensor)",
}
# The Triton launcher of each op: (module in kernels/, function); csrc/<module>.cpp holds the C++ kernel.
KERNELS = {
    "softmax_cross_entropy": ("softmax_cross_entropy", "softmax_cross_entropy_fwd"),
    "softmax_cross_entropy_backward": ("softmax_cross_entropy", "softmax_cross_entropy_bwd"),
    "instance_norm_relu": ("instance_norm_relu", "instance_norm_relu_fwd"),
    "instance_norm_relu_backward": ("instance_norm_relu", "instance_norm_relu_bwd"),
    "lsgan_loss": ("lsgan_loss", "lsgan_loss_fwd"),
    "lsgan_loss_backward": ("lsgan_loss", "lsgan_loss_bwd"),
    "lsgan_disc_loss": ("lsgan_loss", "lsgan_disc_loss_fwd"),
    "lsgan_disc_loss_backward": ("lsgan_loss", "lsgan_disc_loss_bwd"),
}

lib = torch.library.Library("cycleseg", "DEF")
for _name, _schema in SCHEMAS.items():
    lib.define(_name + _schema)


def op(name: str):
    """The OpOverload torch.ops.cycleseg.<name>.default."""
    return getattr(torch.ops.cycleseg, name).default
