"""The built-in dataset: short-axis cardiac MRI phantoms, generated from a seed (ACDC's classes).

Each "patient" is a stack of short-axis slices from base to apex, in one of two phases (diastole,
systole). Anatomy is drawn per patient and varies along the stack: a left-ventricle (LV) blood pool
inside a myocardium (Myo) ring with an uneven wall, a right-ventricle (RV) crescent against the septum
that shrinks and vanishes toward the apex, papillary muscles inside the LV (labeled LV, as in ACDC),
all under a smooth elastic deformation, at a random position and rotation. Appearance is drawn
independently, per patient (a "scanner"): blood, muscle and surrounding-tissue intensities, lungs,
liver, epicardial fat and the descending aorta (bright like blood, labeled background), a contrast
curve, a multiplicative bias field, blur and Rician noise. Images are a function of the anatomy plus
nuisance; masks are exact (the geometry that draws a tissue labels it).

Classes and palette are ACDC's (background, RV, Myo, LV). The split files carry each slice's patient
(`groups`), and labeled subsets are the first patients, as in the SSL4MIS protocol for ACDC (10 % = the
first 10 of the 100 training patients, 20 % = the first 20): a seed varies the training, not which
patients are labeled. Generated with numpy in seconds, written once to the project's HDF5 format and
cached (`$CYCLESEG_CACHE`, default `~/.cache/cycleseg`).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .cache import generated_splits
from .convert import ACDC_CLASSES

CLASS_NAMES = ACDC_CLASSES                  # background, RV, Myo, LV
BACKGROUND, RV, MYO, LV = range(4)
# 4: val grows from 20 to 100 patients (its first 20 and train as in 2; 3 was an unadopted trial);
# 5: labeled subsets are the first patients (ACDC's protocol), the images as in 4
GENERATOR_VERSION = 5
PATIENTS = {"train": 100, "val": 100}       # each patient: SLICES slices of one phase
SLICES = 10


def _waves(rng, p, amplitude, count=3, max_freq=2.0):
    """A smooth random field on the points p (..., 2): a sum of `count` plane waves."""
    out = np.zeros(p.shape[:-1], np.float32)
    for _ in range(count):
        f = rng.uniform(-max_freq, max_freq, 2)
        out += rng.uniform(0, amplitude) * np.sin(2 * np.pi * (p @ f) + rng.uniform(0, 2 * np.pi))
    return out


def _ellipse(p, centre, radii, angle):
    """(...) squared normalised distance of points p from an ellipse's centre (<= 1 inside)."""
    d = p - centre
    c, s = np.cos(angle), np.sin(angle)
    u, v = d[..., 0] * c + d[..., 1] * s, -d[..., 0] * s + d[..., 1] * c
    return (u / radii[0]) ** 2 + (v / radii[1]) ** 2


def _anatomy(rng) -> dict:
    """One patient's heart: geometry at the base, and how it changes toward the apex."""
    return {"centre": np.array([0.5, 0.5]) + rng.normal(0, 0.04, 2),
            "angle": np.pi + rng.uniform(-0.6, 0.6),                 # the direction from the LV to the RV
            "r_endo": rng.uniform(0.1, 0.15), "wall": rng.uniform(0.035, 0.055),
            "ecc": rng.uniform(1.0, 1.25), "harmonics": rng.uniform(0, 0.06, 2), "phases": rng.uniform(0, 6.3, 2),
            "rv_size": rng.uniform(0.9, 1.4), "rv_reach": rng.uniform(0.55, 0.9),
            "systole": bool(rng.random() < 0.5), "papillary": int(rng.integers(0, 3)),
            "aorta": np.array([rng.uniform(0.24, 0.3), rng.uniform(-0.9, -0.4)]),   # distance, angle offset
            "fat": rng.uniform(0.0, 0.012), "deform": rng.uniform(0.004, 0.015)}


def _heart(rng, a: dict, p, z: float):
    """Label map and tissue map of one slice at depth z in [0, 1] (base to apex) on points p (S, S, 2)."""
    q = p + np.stack([_waves(rng, p, a["deform"]), _waves(rng, p, a["deform"])], -1)     # elastic
    shrink = 1.0 - 0.45 * z ** 1.3
    r_endo = a["r_endo"] * shrink * (0.7 if a["systole"] else 1.0)
    r_epi = r_endo + a["wall"] * (1.25 if a["systole"] else 1.0) * (1.0 - 0.2 * z)
    d = q - a["centre"]
    phi = np.arctan2(d[..., 1], d[..., 0]) - a["angle"]
    wobble = 1 + a["harmonics"][0] * np.cos(2 * phi + a["phases"][0]) + a["harmonics"][1] * np.cos(3 * phi + a["phases"][1])
    r = np.sqrt(_ellipse(q, a["centre"], (a["ecc"], 1.0), a["angle"])) * wobble
    labels = np.zeros(p.shape[:2], np.uint8)
    rv_scale = a["rv_size"] * max(0.0, 1.0 - 0.85 * z)
    if rv_scale > 0.2:                                              # the RV crescent against the septum
        c = a["centre"] + a["rv_reach"] * r_epi * np.array([np.cos(a["angle"]), np.sin(a["angle"])])
        rv = _ellipse(q, c, (r_epi * rv_scale * 0.95, r_epi * rv_scale * 1.6), a["angle"]) <= 1
        labels[rv & (r > r_epi + 0.012)] = RV
    labels[(r > r_endo) & (r <= r_epi)] = MYO
    labels[r <= r_endo] = LV
    tissue = labels.copy()                                          # + tissues labeled as something else
    tissue[(labels == BACKGROUND) & (r > r_epi) & (r <= r_epi + a["fat"])] = 5          # epicardial fat
    for k in range(a["papillary"] if z < 0.8 else 0):               # papillary muscles: in the LV, labeled LV
        ang = a["angle"] + np.pi + (k - 0.5) * 1.4
        centre = a["centre"] + 0.72 * r_endo * np.array([np.cos(ang), np.sin(ang)])
        tissue[(labels == LV) & (_ellipse(q, centre, (0.22 * r_endo,) * 2, 0) <= 1)] = MYO
    ang = a["angle"] + a["aorta"][1]                                # the descending aorta, labeled background
    centre = a["centre"] + a["aorta"][0] * np.array([np.cos(ang), np.sin(ang)])
    tissue[(labels == BACKGROUND) & (_ellipse(q, centre, (0.035, 0.035), 0) <= 1)] = 6
    return labels, tissue


def _scanner(rng) -> dict:
    """One patient's appearance: intensity per tissue, the body and organs around the heart, the scanner.
    Blood is brighter than muscle by at least 0.25; the surrounding tissue may be darker or brighter than
    either."""
    myo = rng.uniform(0.08, 0.45)
    blood = rng.uniform(myo + 0.25, 1.0)
    return {"levels": np.array([0.0, blood * rng.uniform(0.8, 1.05), myo, blood,
                                0.0, rng.uniform(0.7, 1.0), blood * rng.uniform(0.85, 1.05)], np.float32),
            "body": rng.uniform(0.15, 0.65), "body_radii": rng.uniform(0.44, 0.55, 2), "lung": rng.uniform(0.02, 0.15),
            "liver": rng.uniform(0.25, 0.7), "gamma": rng.uniform(0.5, 2.0), "bias": rng.uniform(0.05, 0.4),
            "blur": rng.uniform(0.4, 1.5), "noise": rng.uniform(0.02, 0.1)}


def _render(rng, s: dict, tissue, p):
    """The image (S, S) in [0, 1] of a tissue map."""
    img = np.where(_ellipse(p, np.array([0.5, 0.52]), s["body_radii"], 0.0) <= 1, s["body"], 0.02).astype(np.float32)
    for side in (-1, 1):                                            # lungs either side of the heart
        img[_ellipse(p, np.array([0.5 + side * 0.36, 0.4]), (0.12, 0.24), side * 0.3) <= 1] = s["lung"]
    img[_ellipse(p, np.array([0.3, 0.86]), (0.24, 0.12), 0.4) <= 1] = s["liver"]
    img += _waves(rng, p, 0.05, count=4, max_freq=6.0)              # texture of the surrounding tissue
    heart = tissue > 0
    img[heart] = s["levels"][tissue[heart]]
    size = tissue.shape[0]
    img = ndimage.gaussian_filter(img, s["blur"] * size / 64)
    img = np.clip(img, 0, 1) ** s["gamma"] * np.exp(_waves(rng, p, s["bias"], count=2, max_freq=1.0))
    noise = rng.normal(0, s["noise"], (2,) + img.shape)
    return np.clip(np.hypot(img + noise[0], noise[1]), 0, 1)        # Rician magnitude


def generate(patients: int, size: int, seed: int, split: str):
    """(images (n, size, size) uint8, masks (n, size, size) uint8, patient of each slice (n,) int32),
    deterministic in (seed, split); n = patients * SLICES."""
    rng = np.random.default_rng([seed, list(PATIENTS).index(split) if split in PATIENTS else 99])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    p = np.stack([(xx + 0.5) / size, (yy + 0.5) / size], -1)         # pixel centres in (0, 1)
    n = patients * SLICES
    images, masks = np.empty((n, size, size), np.uint8), np.empty((n, size, size), np.uint8)
    for i in range(n):
        if i % SLICES == 0:
            anatomy, scanner = _anatomy(rng), _scanner(rng)
        labels, tissue = _heart(rng, anatomy, p, (i % SLICES) / (SLICES - 1))
        images[i] = np.rint(_render(rng, scanner, tissue, p) * 255).astype(np.uint8)
        masks[i] = labels
    return images, masks, np.repeat(np.arange(patients, dtype=np.int32), SLICES)


def phantom_dataset(size: int = 64, seed: int = 0) -> dict:
    """Paths {"train": ..., "val": ...} of the built-in phantoms at `size`, generated on first use."""
    return generated_splits("phantom", GENERATOR_VERSION, seed, size, CLASS_NAMES, PATIENTS,
                            lambda split: generate(PATIENTS[split], size, seed, split), __file__,
                            labeled_subset="first_groups")
