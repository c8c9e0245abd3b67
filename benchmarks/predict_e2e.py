"""Segmenting a folder of NIfTI scans end to end, as a user runs it: each a whole process (start-up, reading,
normalising, resizing, inference, resizing back, writing), timed on the same scans:

    cycleseg           python -m cycleseg.predict CKPT scans/ --out A --intensity minmax   (the inference path)
    cycleseg_onnx      python -m cycleseg.predict model.onnx scans/ --out B ...           (onnxruntime inside)
    user_onnxruntime   USER_SCRIPT below: 25 lines of nibabel, PIL, onnxruntime and torch's interpolate
                       doing the same steps with the exported model

The label volumes are compared voxel by voxel with cycleseg's.

    python benchmarks/predict_e2e.py CKPT SCANS_DIR WORK_DIR
(SCANS_DIR: e.g. benchmarks/experiments/acdc-nifti/write_nifti.py's raw-ACDC tree of the 20 validation volumes)
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

USER_SCRIPT = r'''
import sys, pathlib, numpy as np, nibabel as nib, onnxruntime as ort, torch, torch.nn.functional as F
from PIL import Image
model, scans, out = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
opts = ort.SessionOptions(); opts.intra_op_num_threads = torch.get_num_threads()
session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
out.mkdir(parents=True, exist_ok=True)
for path in sorted(p for p in scans.rglob("*.nii.gz") if "_gt" not in p.name and "4d" not in p.name):
    img = nib.load(path); vol = np.asarray(img.dataobj, dtype=np.float64)
    ax = int(np.argmax(img.header.get_zooms()[:3]))
    vol = (vol - vol.min()) / max(vol.max() - vol.min(), 1e-8)
    u8 = np.clip(np.round(vol * 255), 0, 255).astype(np.uint8)
    slices = np.moveaxis(u8, ax, 0).transpose(0, 2, 1)                     # (D, rows, cols), ITK order
    small = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(s)).resize((64, 64), Image.BILINEAR))
                      for s in slices]).astype(np.float32)[:, None] / 127.5 - 1
    labels = []
    for s in range(0, len(small), 16):
        logits = torch.from_numpy(session.run(None, {"x": small[s:s + 16]})[0])
        labels.append(F.interpolate(logits, size=slices.shape[1:], mode="bilinear").argmax(1).numpy())
    labels = np.moveaxis(np.concatenate(labels).astype(np.uint8).transpose(0, 2, 1), 0, ax)
    nib.save(nib.Nifti1Image(labels, img.affine), out / path.name)
'''


def timed(cmd) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def agreement(a: Path, b: Path) -> float:
    import nibabel as nib

    same = total = 0
    for p in sorted(a.rglob("*.nii.gz")):
        q = next(b.rglob(p.name))
        x, y = np.asarray(nib.load(p).dataobj), np.asarray(nib.load(q).dataobj)
        same, total = same + int((x == y).sum()), total + x.size
    return same / total


def main(ckpt: str, scans: str, work: str) -> None:
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    common = ["--intensity", "minmax", "--device", "cpu", "--no-progress", "--overwrite"]
    subprocess.run([py, "-m", "cycleseg.export", ckpt, "--out", str(work), "--formats", "onnx", "--overwrite"], check=True,
                   stdout=subprocess.DEVNULL)
    onnx = next(work.glob("*.onnx"))
    (work / "user.py").write_text(USER_SCRIPT)
    runs = {"cycleseg": [py, "-m", "cycleseg.predict", ckpt, scans, "--out", str(work / "cycleseg"), *common],
            "cycleseg_onnx": [py, "-m", "cycleseg.predict", str(onnx), scans, "--out", str(work / "cycleseg_onnx"),
                              *common],
            "user_onnxruntime": [py, str(work / "user.py"), str(onnx), scans, str(work / "user_onnxruntime")]}
    seconds = {k: min(timed(cmd) for _ in range(2)) for k, cmd in runs.items()}
    volumes = len([p for p in (work / "cycleseg").rglob("*.nii.gz")])
    print(f"{volumes} volumes; best of 2 whole-process runs")
    print("| how | seconds | volumes per minute | voxels equal to cycleseg's |")
    print("|---|---|---|---|")
    for k, s in seconds.items():
        agree = 1.0 if k == "cycleseg" else agreement(work / "cycleseg", work / k)
        print(f"| {k} | {s:.2f} | {60 * volumes / s:.0f} | {100 * agree:.3f} % |")


if __name__ == "__main__":
    main(*sys.argv[1:4])
