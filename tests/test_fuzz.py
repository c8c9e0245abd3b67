"""Malformed inputs to the HDF5 reader, the converters and the checkpoint loader: random bytes,
truncated files, wrong shapes and dtypes, missing attributes, huge declared sizes. Each case must end
in our clear error (DataError / CheckpointError) quickly, never another exception, a hang or an
unbounded allocation. 301 cases in all (fixed seeds), counted by the last test."""
import io
import json
import time

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from cycleseg.checkpoint import CheckpointError, load_run
from cycleseg.data.convert import acdc_items, convert, folder_items
from cycleseg.data.h5format import DataError, Meta, default_palette, validate, write_split
from cycleseg.data.source import H5Source

CASES = {"h5": 0, "convert": 0, "checkpoint": 0}
META = Meta(num_classes=3, class_names=["a", "b", "c"], palette=default_palette(3))


def good_h5(path, n=4, size=8):
    rng = np.random.default_rng(0)
    write_split(path, rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
                rng.integers(0, 3, (n, size, size), dtype=np.uint8), META)
    return path


def must_fail_clearly(fn, errors, kind):
    CASES[kind] += 1
    t0 = time.time()
    with pytest.raises(errors):
        fn()
    assert time.time() - t0 < 20, "took too long"


def open_split(path):
    validate(path)
    src = H5Source(path, in_memory=False)
    src.batch(np.arange(len(src)))


def mutated_h5(path, case: int, rng):
    """A file of the project's format with one thing wrong."""
    with h5py.File(path, "w") as f:
        n, h, w = 4, 8, 8
        images = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
        masks = rng.integers(0, 3, (n, h, w), dtype=np.uint8)
        attrs = {"format": "cycleseg", "format_version": 1, "num_classes": 3, "class_names": json.dumps(["a", "b", "c"]),
                 "palette": json.dumps(default_palette(3)), "ignore_index": 255, "source": "", "preprocessing": "{}"}
        kind = case % 10
        if kind == 0:
            images = images[..., 0]                                  # images (N, H, W)
        elif kind == 1:
            masks = masks.astype(np.int16)                           # wrong dtype
        elif kind == 2:
            images = images.astype(np.float32)
        elif kind == 3:
            masks = masks[:2]                                        # count mismatch
        elif kind == 4:
            del attrs[["format", "num_classes", "class_names", "palette", "ignore_index"][int(rng.integers(0, 5))]]
        elif kind == 5:
            attrs[["class_names", "palette", "preprocessing"][int(rng.integers(0, 3))]] = "{not json"
        elif kind == 6:
            attrs["num_classes"] = ["three", -2, 0][int(rng.integers(0, 3))]
        elif kind == 7:
            masks[rng.integers(0, n)] = 7                             # a value >= K
        if kind == 8:                                                 # huge declared, nothing stored
            f.create_dataset("images", (10 ** 9, h, w, 3), dtype=np.uint8, chunks=(1, h, w, 3))
            f.create_dataset("masks", (10 ** 9, h, w), dtype=np.uint8, chunks=(1, h, w))
        elif kind == 9:                                               # declared, half written
            f.create_dataset("images", (n, h, w, 3), dtype=np.uint8, chunks=(1, h, w, 3))
            f.create_dataset("masks", (n, h, w), dtype=np.uint8, chunks=(1, h, w))
            f["images"][:2] = images[:2]
            f["masks"][:2] = masks[:2]
        else:
            f["images"], f["masks"] = images, masks
        for k, v in attrs.items():
            f.attrs[k] = v


def test_h5_reader(tmp_path):
    rng = np.random.default_rng(1)
    good = good_h5(tmp_path / "good.h5").read_bytes()
    for i in range(40):                                              # random bytes, some with the HDF5 signature
        head = b"\x89HDF\r\n\x1a\n" if i % 2 else b""
        (tmp_path / "r.h5").write_bytes(head + rng.bytes(int(rng.integers(0, 4096))))
        must_fail_clearly(lambda: open_split(tmp_path / "r.h5"), DataError, "h5")
    for i in range(40):                                              # truncated at a random point
        (tmp_path / "t.h5").write_bytes(good[:int(rng.integers(0, len(good) - 1))])
        must_fail_clearly(lambda: open_split(tmp_path / "t.h5"), DataError, "h5")
    for i in range(40):
        mutated_h5(tmp_path / "m.h5", i, rng)
        must_fail_clearly(lambda: open_split(tmp_path / "m.h5"), DataError, "h5")


def test_converters(tmp_path):
    rng = np.random.default_rng(2)
    png = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(png, format="PNG")
    png = png.getvalue()
    for i in range(60):                                              # a folder dataset with one bad file
        root = tmp_path / f"f{i}"
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir()
        (root / "images" / "a.png").write_bytes(png)
        Image.fromarray(np.zeros((12, 12), np.uint8)).save(root / "masks" / "a.png")
        bad = {0: rng.bytes(200), 1: png[:int(rng.integers(8, len(png) - 1))], 2: b"",
               3: png[:40] + rng.bytes(100)}[i % 4]
        target = root / ("images" if i % 8 < 4 else "masks") / "a.png"
        target.write_bytes(bad)
        must_fail_clearly(lambda: convert(*folder_items(root, 3), root / "o.h5", progress=False), DataError, "convert")
        assert not (root / "o.h5").exists()
    for i in range(40):                                              # ACDC slices with a wrong dataset
        root = tmp_path / f"acdc{i}"
        (root / "data" / "slices").mkdir(parents=True)
        name = "patient001_frame01_slice_1"
        (root / "train_slices.list").write_text(name + "\n")
        with h5py.File(root / "data" / "slices" / f"{name}.h5", "w") as f:
            kind = i % 4
            if kind != 0:
                f["image"] = rng.random((6, 6)).astype(np.float32) if kind != 1 else rng.random((6, 6, 6, 6))
            if kind != 2:
                f["label"] = (rng.integers(0, 4, (6, 6)) if kind != 3 else rng.integers(0, 4, (5, 7))).astype(np.uint8)
        must_fail_clearly(lambda: convert(*acdc_items(root, "train"), root / "o.h5", progress=False), DataError,
                          "convert")


def test_checkpoint_loader(tmp_path):
    rng = np.random.default_rng(3)
    real = tmp_path / "real.pt"
    torch.save({"config": {"ngf": 4}, "nets": {"G_IS": {"w": torch.ones(3)}}, "step": 1}, real)
    good = real.read_bytes()
    payloads = [lambda: rng.bytes(int(rng.integers(0, 2000))),
                lambda: good[:int(rng.integers(0, len(good) - 1))],
                lambda: b"PK\x03\x04" + rng.bytes(300)]
    for i in range(60):
        (tmp_path / "c.pt").write_bytes(payloads[i % 3]())
        must_fail_clearly(lambda: load_run(tmp_path / "c.pt"), CheckpointError, "checkpoint")
    for i, obj in enumerate([[1, 2], {"config": {}}, {"nets": {"G_IS": {}}}, {"config": {}, "nets": {"D_S": {}}},
                             torch.ones(3), "text", {"config": {}, "nets": []}] * 3):
        torch.save(obj, tmp_path / "o.pt")
        must_fail_clearly(lambda: load_run(tmp_path / "o.pt"), CheckpointError, "checkpoint")


def test_number_of_cases():
    assert sum(CASES.values()) == 301, CASES
