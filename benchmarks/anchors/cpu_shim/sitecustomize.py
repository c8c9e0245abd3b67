"""CPU dry run only (on PYTHONPATH when ANCHOR_DEVICE=cpu): the authors' .cuda() calls become no-ops, so
their unchanged CUDA code paths run on a machine without a GPU. Never on the GPU machine."""
import os

if os.environ.get("ANCHOR_DEVICE") == "cpu":
    import torch

    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self
