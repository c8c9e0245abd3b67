"""The per-volume scores (cycleseg.metrics.binary_scores: Dice, IoU, HD95, ASD) against medpy.metric,
what SSL4MIS reports ACDC with: random and real ACDC volumes, isotropic and anisotropic voxels, and the
empty cases, whose scoring is ours by design (documented in the README)."""
from pathlib import Path

import h5py
import numpy as np
import pytest
from medpy.metric import binary as medpy
from scipy import ndimage

from cycleseg.metrics import binary_scores

REAL_ACDC = Path(__file__).resolve().parents[2] / "shared" / "data" / "ACDC"


def medpy_scores(pred, truth, spacing=None) -> dict:
    return {"dice": medpy.dc(pred, truth), "iou": medpy.jc(pred, truth),
            "hd95": medpy.hd95(pred, truth, voxelspacing=spacing), "asd": medpy.asd(pred, truth, voxelspacing=spacing)}


def blob(shape, rng, n=3):
    """A few overlapping ellipsoids: a structure with a real surface."""
    zz, yy, xx = np.indices(shape)
    out = np.zeros(shape, bool)
    for _ in range(n):
        c = rng.uniform(0.2, 0.8, 3) * np.array(shape)
        r = rng.uniform(0.1, 0.3, 3) * np.array(shape)
        out |= ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 < 1
    return out


@pytest.mark.parametrize("spacing", [None, (1.0, 1.0, 1.0), (10.0, 1.5, 1.5), (5.0, 0.7, 1.3)])
@pytest.mark.parametrize("seed", range(6))
def test_random_volumes_match_medpy(seed, spacing):
    rng = np.random.default_rng(seed)
    shape = (8, 40, 36)
    truth = blob(shape, rng)
    pred = ndimage.binary_dilation(truth, iterations=int(rng.integers(0, 3))) ^ (rng.random(shape) < 0.02)
    ours, ref = binary_scores(pred, truth, spacing), medpy_scores(pred, truth, spacing)
    for k in ref:
        assert ours[k] == pytest.approx(ref[k], rel=1e-12, abs=1e-12), k


@pytest.mark.skipif(not REAL_ACDC.exists(), reason="the real ACDC copy lives in ../shared/data/ACDC")
@pytest.mark.parametrize("volume", ["first", "last"])
def test_real_acdc_volumes_match_medpy(volume):
    """Each structure of a real validation volume against a corrupted copy of itself (shifted by a voxel,
    part eroded), with ACDC's typical anisotropic spacing (10 mm slices, 1.5 mm pixels)."""
    names = (REAL_ACDC / "val.list").read_text().split()
    with h5py.File(REAL_ACDC / "data" / f"{names[0 if volume == 'first' else -1]}.h5") as f:
        label = f["label"][...]
    for c in (1, 2, 3):
        truth = label == c
        pred = np.roll(ndimage.binary_erosion(truth, iterations=1) | (np.roll(truth, 1, axis=2) & (label == 0)), 1, 1)
        for spacing in (None, (10.0, 1.5, 1.5)):
            ours, ref = binary_scores(pred, truth, spacing), medpy_scores(pred, truth, spacing)
            for k in ref:
                assert ours[k] == pytest.approx(ref[k], rel=1e-12, abs=1e-12), (c, spacing, k)


def test_empty_cases_are_scored_as_documented():
    rng = np.random.default_rng(0)
    some, none = blob((6, 20, 20), rng), np.zeros((6, 20, 20), bool)
    both_empty = binary_scores(none, none)
    assert all(np.isnan(v) for v in both_empty.values())                 # absent: left out of the means
    with np.errstate(all="ignore"):
        assert np.isnan(medpy.dc(none, none)) and medpy.jc(none, none) == 1.0   # medpy: Dice 0 / 0, IoU 1
    for pred, truth in ((none, some), (some, none)):                     # in one only: overlap 0, distances undefined
        s = binary_scores(pred, truth)
        assert s["dice"] == medpy.dc(pred, truth) == 0.0 and s["iou"] == medpy.jc(pred, truth) == 0.0
        assert np.isnan(s["hd95"]) and np.isnan(s["asd"])
        with pytest.raises(RuntimeError):                                # medpy refuses to score it
            medpy.hd95(pred, truth)
