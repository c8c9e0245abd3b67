"""The HDF5 streams against the loaders a user of this field would write, on real ACDC:

    streams        cycleseg's two streams (labeled, unlabeled): one reader thread each, reading the
                   converted file through a memory map, prefetch 3
    ssl4mis-wN     SSL4MIS's loader: a torch Dataset opening each slice's own .h5 file with h5py (the
                   dataset's layout, data/slices/*.h5, native resolution), resizing to the training size
                   with scipy's zoom (order 0, as SSL4MIS does), one DataLoader with a two-stream batch
                   sampler (labeled + unlabeled in one batch), N workers, pin_memory, persistent workers
    h5py-wN        h5py on cycleseg's own converted file (the same bytes the streams read) in a Dataset
                   (one file handle per worker), the same DataLoader

Every loader draws the same labeled subset (10 %, the SSL4MIS protocol), applies the same augmentation
(random rotation by a multiple of 90 degrees and a random horizontal flip, cycleseg's --rotate --flip)
and hands out what the step takes: uint8 images (B, 1, H, W) and masks (B, H, W), B labeled + B unlabeled.
Sizes: the CPU preset's 64x64 and the paper's 256x256, batch 8 + 8 (the CPU preset's batch).

    test_loader_alone      images per second of the loader by itself
    test_loader_feeding_step  the real training step (semi, the fast path, the CPU preset's networks at
                              that size) fed by the loader: ms per step and the time spent waiting in next()

Memory: the peak proportional set size (PSS: shared pages split between the processes sharing them) of
this process and its DataLoader workers, sampled every 50 ms; for the loader alone, what the loader adds
to the process tree (peak minus the size before it was built).

    CYCLESEG_ACDC=path/to/ACDC python -m pytest benchmarks/bench_data.py --benchmark-json data.json
    python benchmarks/report.py data.json
"""
import gc
import os
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from scipy.ndimage import zoom
from torch.utils.data import DataLoader, Dataset, Sampler

from cycleseg.assemble import build
from cycleseg.config import Config
from cycleseg.data.acdc import cached_splits
from cycleseg.data.convert import read_lines
from cycleseg.data.pixels import float01_to_uint8
from cycleseg.data.source import H5Source
from cycleseg.data.streams import make_streams
from cycleseg.data.subset import labeled_subset
from cycleseg.fastpath import plan_for

ACDC = Path(os.environ.get("CYCLESEG_ACDC", Path(__file__).resolve().parents[2] / "shared" / "data" / "ACDC"))
SIZES = [64, 256]
BATCH, FRACTION, SEED = 8, 0.1, 0
LOADERS = ["streams"] + [f"{kind}-w{n}" for kind in ("ssl4mis", "h5py") for n in (0, 1, 2)]
ALONE_BATCHES = {64: 40, 256: 20}           # batches (of B + B images) per timed round
STEPS = {64: 20, 256: 6}                    # timed training steps per loader

if not (ACDC / "train_slices.list").exists():
    pytest.skip(f"real ACDC (SSL4MIS layout) not found at {ACDC}; set CYCLESEG_ACDC", allow_module_level=True)


# -- the peers ----------------------------------------------------------------------------------------------
def rot_flip(image, mask, rng):
    """cycleseg's --rotate --flip on one sample: rotation by k * 90 degrees, then a horizontal flip p 0.5."""
    k = int(rng.integers(0, 4))
    image, mask = np.rot90(image, k), np.rot90(mask, k)
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


class SliceFiles(Dataset):
    """SSL4MIS's BaseDataSets: one h5 file per slice, opened at each read, resized with zoom(order=0)."""

    def __init__(self, root: Path, size: int):
        self.paths = [root / "data" / "slices" / f"{n}.h5" for n in read_lines(root / "train_slices.list")]
        self.size = size
        self.rng = np.random.default_rng(SEED)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with h5py.File(self.paths[i], "r") as f:
            image, label = f["image"][:], f["label"][:]
        image, label = rot_flip(image, label, self.rng)
        h, w = image.shape
        image = zoom(image, (self.size / h, self.size / w), order=0)
        label = zoom(label, (self.size / h, self.size / w), order=0)
        return torch.from_numpy(float01_to_uint8(image)[None]), torch.from_numpy(label.astype(np.uint8))


class OurFileH5py(Dataset):
    """h5py on cycleseg's converted file: one handle per worker process, sample i read at each access."""

    def __init__(self, path: Path):
        self.path, self.file = path, None
        with h5py.File(path, "r") as f:
            self.n = len(f["images"])
        self.rng = np.random.default_rng(SEED)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if self.file is None:
            self.file = h5py.File(self.path, "r")
        image, mask = rot_flip(self.file["images"][i], self.file["masks"][i], self.rng)
        return torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(mask)


class TwoStreamBatchSampler(Sampler):
    """SSL4MIS's sampler: each batch holds B labeled indices (a fresh permutation per epoch) then B
    unlabeled ones (permutations drawn without end); an epoch is one pass over the labeled indices."""

    def __init__(self, labeled, unlabeled, batch):
        self.labeled, self.unlabeled, self.batch = np.asarray(labeled), np.asarray(unlabeled), batch
        self.rng = np.random.default_rng(SEED)

    def __len__(self):
        return len(self.labeled) // self.batch

    def __iter__(self):
        lab = self.rng.permutation(self.labeled)
        unl = np.concatenate([self.rng.permutation(self.unlabeled)
                              for _ in range(-(-len(self) * self.batch // len(self.unlabeled)))])
        for j in range(len(self)):
            s = slice(j * self.batch, (j + 1) * self.batch)
            yield [int(i) for i in lab[s]] + [int(i) for i in unl[s]]


def worker_seed(worker_id):
    info = torch.utils.data.get_worker_info()
    info.dataset.rng = np.random.default_rng([SEED, worker_id])


class Endless:
    """One DataLoader iterated without end, as a training loop does across epochs: (images, masks,
    unlabeled images) per step."""

    def __init__(self, dataset, labeled, unlabeled, workers):
        self.loader = DataLoader(dataset, batch_sampler=TwoStreamBatchSampler(labeled, unlabeled, BATCH),
                                 num_workers=workers, pin_memory=True, persistent_workers=workers > 0,
                                 worker_init_fn=worker_seed if workers else None)
        self.it = iter(self.loader)

    def __next__(self):
        try:
            images, masks = next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            images, masks = next(self.it)
        return images[:BATCH], masks[:BATCH], images[BATCH:]

    def close(self):
        if hasattr(self.it, "_shutdown_workers"):                  # persistent workers end with their loader
            self.it._shutdown_workers()
        del self.it, self.loader


class Streams:
    def __init__(self, path):
        src = H5Source(path, in_memory=False)
        self.streams = make_streams(src, FRACTION, SEED, BATCH, True, flip=True, rotate=True)
        self.lab, self.unl = self.streams.loaders["labeled"], self.streams.loaders["unlabeled"]

    def __next__(self):
        images, masks = next(self.lab)
        return images, masks, next(self.unl)[0]

    def close(self):
        self.streams.close()


# -- memory -------------------------------------------------------------------------------------------------
def tree_pss_mib(root: int) -> float:
    """PSS of process `root` and its descendants, MiB."""
    parents = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                parents[int(p)] = int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                pass
    tree, total = {root}, 0
    for pid in sorted(parents):                                     # children have larger pids here
        if parents[pid] in tree:
            tree.add(pid)
    for pid in tree:
        try:
            for line in open(f"/proc/{pid}/smaps_rollup"):
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            pass
    return total / 1024


class PeakMemory:
    """Samples the tree's PSS every 50 ms while open; .peak and .before in MiB."""

    def __enter__(self):
        gc.collect()
        self.before = self.peak = tree_pss_mib(os.getpid())
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self.stop.wait(0.05):
            self.peak = max(self.peak, tree_pss_mib(os.getpid()))

    def __exit__(self, *exc):
        self.peak = max(self.peak, tree_pss_mib(os.getpid()))
        self.stop.set()
        self.thread.join()


# -- fixtures -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=SIZES, ids=lambda s: f"{s}px")
def size(request):
    return request.param


@pytest.fixture(scope="module")
def split(size):
    """(converted train file, labeled indices, unlabeled indices) at size x size."""
    path = cached_splits(ACDC, size, progress=False, names=("train",))["train"]
    src = H5Source(path, in_memory=False)
    lab = labeled_subset(len(src), FRACTION, SEED, src.groups, src.meta.labeled_subset == "first_groups")
    return path, lab, np.setdiff1d(np.arange(len(src)), lab)


def make_loader(name, size, split):
    path, lab, unl = split
    if name == "streams":
        return Streams(path)
    kind, workers = name.split("-w")
    dataset = SliceFiles(ACDC, size) if kind == "ssl4mis" else OurFileH5py(path)
    return Endless(dataset, lab, unl, int(workers))


def describe(benchmark, name, size, mem, **extra):
    benchmark.extra_info.update(loader=name, size=size, batch=f"{BATCH} + {BATCH}", peak_pss_mib=round(mem.peak, 1),
                                threads=torch.get_num_threads(), cores=os.cpu_count(), **extra)


@pytest.mark.parametrize("name", LOADERS)
def test_loader_alone(benchmark, name, size, split):
    n = ALONE_BATCHES[size]
    benchmark.group = f"loader alone, real ACDC {size}x{size}, batch {BATCH} + {BATCH}"
    with PeakMemory() as mem:
        loader = make_loader(name, size, split)
        for _ in range(2):
            next(loader)

        def fetch():
            for _ in range(n):
                next(loader)

        benchmark.pedantic(fetch, rounds=3, iterations=1)
        loader.close()
    describe(benchmark, name, size, mem, images=n * 2 * BATCH, added_pss_mib=round(mem.peak - mem.before, 1))


@pytest.mark.parametrize("name", LOADERS)
def test_loader_feeding_step(benchmark, name, size, split):
    cfg = Config(device="cpu", image_size=size, batch_size=BATCH, labeled_fraction=FRACTION, seed=SEED).resolved()
    src = H5Source(split[0], in_memory=False)
    plan = plan_for(cfg, torch.device("cpu"))
    nets, step = build(cfg, src.meta, torch.device("cpu"), plan)
    benchmark.group = f"loader feeding the fast semi step, real ACDC {size}x{size}, batch {BATCH} + {BATCH}"
    waits = []

    def train_step():
        t0 = time.perf_counter()
        images, masks, unlabeled = next(loader)
        waits.append(time.perf_counter() - t0)
        step({"images": images, "masks": masks, "unlabeled": unlabeled})

    images, masks = src.batch(split[1][:BATCH])         # a first step before any loader: one-time costs
    step({"images": images, "masks": masks, "unlabeled": src.batch(split[2][:BATCH], False)[0]})

    with PeakMemory() as mem:
        loader = make_loader(name, size, split)
        for _ in range(2):
            train_step()
        waits.clear()
        t0 = time.perf_counter()
        benchmark.pedantic(train_step, rounds=STEPS[size], iterations=1)
        total = time.perf_counter() - t0
        loader.close()
    describe(benchmark, name, size, mem, step_s=total / STEPS[size], loader_wait_s=sum(waits) / len(waits),
             plan=plan.describe())
