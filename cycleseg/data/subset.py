"""Which images of a training split are labeled: nested subsets, drawn by image or by group (patient)."""
from __future__ import annotations

import numpy as np

from .h5format import DataError


def labeled_subset(n: int, fraction: float, seed: int, groups: np.ndarray | None = None,
                   first_groups: bool = False) -> np.ndarray:
    """Sorted indices of the labeled subset. Nested: a smaller fraction's subset lies inside a larger one's.

    By image (a seeded permutation), or by group (e.g. patient) when groups are given: round(f * G)
    groups of a seeded permutation, or with first_groups=True the first round(f * G) groups in order
    of appearance (the SSL4MIS ACDC protocol: 7 / 14 / 21 / 35 / 70 patients).
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"labeled fraction must be in (0, 1], got {fraction}")
    units = n if groups is None else len(np.unique(groups))
    if units and fraction * units < 0.5:                            # max(1, ...) would label one, unasked
        what = "images" if groups is None else "patients (groups)"
        raise DataError(f"--labeled-fraction {fraction:g} of {units} {what} labels less than half of one; "
                        f"{0.5 / units:.4g} or more labels one")
    rng = np.random.default_rng(seed)
    if groups is None:
        chosen = rng.permutation(n)[:max(1, round(fraction * n))]
    else:
        _, first = np.unique(groups, return_index=True)
        ids = groups[np.sort(first)]                                # groups in order of appearance
        if not first_groups:
            ids = rng.permutation(ids)
        keep = ids[:max(1, round(fraction * len(ids)))]
        chosen = np.flatnonzero(np.isin(groups, keep))
    if len(chosen) == 0:
        raise DataError(f"the labeled subset at fraction {fraction} of {n} images is empty")
    return np.sort(chosen)
