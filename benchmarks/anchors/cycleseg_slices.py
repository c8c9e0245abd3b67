"""Replace the training slices of an SSL4MIS ACDC folder by cycleseg's preparation of them, for the data
swap of authors-code.md: their code trained on the slices our runs see.

    python cycleseg_slices.py ACDC_FOLDER SIZE [--check CYCLESEG_TRAIN_H5]

Each `data/slices/<name>.h5` listed in train_slices.list gets `image` = cycleseg's converter output at
SIZE x SIZE (round(255 x) to uint8, PIL bilinear with antialiasing; cycleseg.data.convert) divided by 255,
float32 in [0, 1] as theirs, and `label` = the mask resized by nearest neighbour. Their RandomGenerator then
augments at SIZE (its zoom to SIZE is the identity). The validation volumes are left as they are.
--check: every rewritten slice must equal the matching slice of a cycleseg train.h5 at that size.
"""
import argparse
import sys
from pathlib import Path

import h5py
import numpy as np

from cycleseg.data.convert import resize_pair
from cycleseg.data.pixels import float01_to_uint8


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path)
    p.add_argument("size", type=int)
    p.add_argument("--check", type=Path, default=None)
    a = p.parse_args(argv)
    names = [l.strip() for l in open(a.folder / "train_slices.list") if l.strip()]
    ours = None
    if a.check is not None:
        with h5py.File(a.check, "r") as f:
            ours = f["images"][:, :, :, 0], f["masks"][:]
        if len(ours[0]) != len(names):
            sys.exit(f"{a.check}: {len(ours[0])} slices, the folder lists {len(names)}")
    for i, name in enumerate(names):
        path = a.folder / "data" / "slices" / f"{name}.h5"
        with h5py.File(path, "r") as h:
            image, label = h["image"][:], h["label"][:]
        u8, mask = resize_pair(float01_to_uint8(image), label.astype(np.uint8), (a.size, a.size))
        if ours is not None and not (np.array_equal(u8, ours[0][i]) and np.array_equal(mask, ours[1][i])):
            sys.exit(f"{name}: differs from slice {i} of {a.check}")
        tmp = path.with_suffix(".h5.part")
        with h5py.File(tmp, "w") as h:
            h["image"] = (u8.astype(np.float32) / 255.0)
            h["label"] = mask
        tmp.replace(path)
    print(f"{len(names)} training slices of {a.folder} replaced by cycleseg's {a.size}x{a.size} preparation"
          + (f" (each equal to {a.check}'s)" if ours is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
