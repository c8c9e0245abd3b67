"""Student and teacher of a Mean Teacher checkpoint (or any run's G_IS) on its labeled training slices, 300
unlabeled ones (their masks hidden in training) and the validation slices: the fraction of pixels
predicted foreground against the truth's, the mean confidence, and the foreground Dice
(acdc-methods.md, "Why Mean Teacher collapses"):

    python benchmarks/experiments/mt_diagnosis.py RUN/last.pt
"""
import sys

import h5py
import numpy as np
import torch

from cycleseg.checkpoint import load_run, networks_from_checkpoint
from cycleseg.data.pixels import to_input
from cycleseg.data.source import open_source
from cycleseg.data.splits import split_path
from cycleseg.data.subset import labeled_subset

torch.set_num_threads(1)
path = sys.argv[1]
state = load_run(path)
cfg, _, nets = networks_from_checkpoint(state, path)
student = nets["G_IS"].eval()
who = {"student": student}
if "teacher" in state:                                              # a Mean Teacher run's EMA of the student
    who["teacher"] = networks_from_checkpoint(state, path)[2]["G_IS"].eval()
    who["teacher"].load_state_dict(state["teacher"])
train = open_source(split_path(cfg.data, "train", None, cfg.image_size, False)[0])
val = open_source(split_path(cfg.data, "val", cfg.val_data, cfg.image_size, False)[0])
with h5py.File(split_path(cfg.data, "train", None, cfg.image_size, False)[0]) as f:
    groups = f["groups"][:]
lab = labeled_subset(len(groups), cfg.labeled_fraction, cfg.seed, groups, first_groups=True)
rng = np.random.default_rng(0)
unl = np.sort(rng.choice(np.setdiff1d(np.arange(len(groups)), lab), 300, replace=False))
sets = {"labeled": (train, lab), "unlabeled": (train, unl), "val": (val, np.arange(len(val)))}
print(path, f"step {state['step']}")
for name, (src, idx) in sets.items():
    for name_net, net in who.items():
        fg_p = fg_t = conf = inter = total = 0.0
        with torch.no_grad():
            for s in range(0, len(idx), 32):
                images, masks = src.batch(idx[s:s + 32])
                p = torch.softmax(net(to_input(images, "cpu")).float(), 1)
                c, pred = p.max(1)
                t = torch.as_tensor(np.asarray(masks)).long()
                fg_p += (pred > 0).sum().item(); fg_t += (t > 0).sum().item()
                inter += ((pred == t) & (t > 0)).sum().item(); conf += c.sum().item(); total += t.numel()
        print(f"  {name:9s} {name_net}: foreground predicted {100 * fg_p / total:5.2f} % (truth {100 * fg_t / total:5.2f} %), "
              f"confidence {conf / total:.4f}, foreground Dice {2 * inter / (fg_p + fg_t + 1e-9):.4f}")
