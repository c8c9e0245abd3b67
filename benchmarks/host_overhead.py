"""Host overhead per fused call (eager, CPU, forward + backward) at tiny shapes, where the kernels' own
work is microseconds: what a call costs in Python, autograd and the dispatcher. One thread; medians of
2000 calls; PyTorch's own op beside each.

    python benchmarks/host_overhead.py [out.json]
"""
import json
import sys

import torch
import torch.nn.functional as F

from cycleseg import ops
from common import host_ms


def med_us(fn):
    return host_ms(fn, reps=2000, warmup=50) * 1e3


torch.manual_seed(0)
x = torch.randn(1, 4, 4, 4, requires_grad=True)
t = torch.randint(0, 4, (1, 4, 4))
d = torch.randn(1, 1, 4, 4, requires_grad=True)
cases = {
  "softmax_cross_entropy": (lambda: ops.softmax_cross_entropy(x, t).backward(), lambda: F.cross_entropy(x, t).backward()),
  "instance_norm_relu": (lambda: ops.instance_norm_relu(x).sum().backward(), lambda: F.relu(F.instance_norm(x)).sum().backward()),
  "lsgan_loss": (lambda: ops.lsgan_loss(d, 1.0).backward(), lambda: ((d - 1.0) ** 2).mean().backward()),
  "lsgan_disc_loss": (lambda: ops.lsgan_disc_loss(d, d).backward(), lambda: (0.5 * (((d - 1) ** 2).mean() + (d ** 2).mean())).backward()),
}
torch.set_num_threads(1)
out = {}
with ops.validation(False):
    for name, (fused, native) in cases.items():
        out[name] = {"fused_us": med_us(fused), "native_us": med_us(native)}
        print(f"{name:24s} fused {out[name]['fused_us']:7.1f} us   PyTorch {out[name]['native_us']:7.1f} us")
if len(sys.argv) > 1:
    json.dump(out, open(sys.argv[1], "w"), indent=1)
