"""Write the validation volumes of an SSL4MIS ACDC copy as a raw-ACDC NIfTI tree, to exercise the NIfTI path
on real scans:

    python benchmarks/experiments/acdc-nifti/write_nifti.py ../shared/data/ACDC /tmp/acdc-nifti

The SSL4MIS copy dropped the spacing, so every volume gets ACDC's typical 1.5625 x 1.5625 x 10 mm (an
assumption: millimetres measured on this tree are indicative, not ACDC's own). Intensities are stored as
int16 (x 1000), as a scanner's would be; images are transposed from SSL4MIS's (z, y, x) to NIfTI's (x, y, z).
"""
import sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np

SPACING = (1.5625, 1.5625, 10.0)


def main(src, dst):
    src, dst = Path(src), Path(dst)
    for vol in (src / "val.list").read_text().split():
        patient, frame = vol.split("_")
        with h5py.File(src / "data" / f"{vol}.h5") as f:
            image, label = f["image"][...], f["label"][...]                       # (z, y, x)
        affine = np.diag([*SPACING, 1.0])
        d = dst / patient
        d.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(np.round(image.transpose(2, 1, 0) * 1000).astype(np.int16), affine),
                 str(d / f"{vol}.nii.gz"))
        nib.save(nib.Nifti1Image(label.transpose(2, 1, 0).astype(np.uint8), affine), str(d / f"{vol}_gt.nii.gz"))
        (d / "Info.cfg").write_text("ED: 1\nES: 2\n")                            # SSL4MIS renumbered the frames


if __name__ == "__main__":
    main(*sys.argv[1:3])
