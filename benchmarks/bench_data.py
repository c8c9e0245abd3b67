"""The HDF5 streams against a plain PIL-decode-from-folder loader over the same images (256x256,
batch 16, 2 workers each), and the loader's waiting time per training step against the step time."""
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from cycleseg.data.convert import convert, folder_items
from cycleseg.data.loader import Loader
from cycleseg.data.order import BatchOrder
from cycleseg.data.source import H5Source

N, SIZE, BATCH, WORKERS, BATCHES = 256, 256, 16, 2, 16


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    for i in range(N):                                              # photo-like: smooth gradients + noise
        base = (np.sin(xx / rng.uniform(5, 40)) + np.cos(yy / rng.uniform(5, 40)))[..., None] * 60 + 128
        img = np.clip(base + rng.normal(0, 12, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / "images" / f"{i:04d}.jpg", quality=90)
        Image.fromarray(((xx // 32 + yy // 32 + i) % 5).astype(np.uint8)).save(root / "masks" / f"{i:04d}.png")
    items, meta = folder_items(root, 5)
    convert(items, meta, root / "data.h5", progress=False)
    return root


class FolderLoader:
    """The baseline: decode JPEG images and PNG masks with PIL, WORKERS threads, stack into a batch."""

    def __init__(self, root):
        self.images = sorted((root / "images").iterdir())
        self.masks = [root / "masks" / f"{p.stem}.png" for p in self.images]
        self.pool = ThreadPoolExecutor(WORKERS)
        self.order = BatchOrder(np.arange(len(self.images)), BATCH, seed=0)

    def _load(self, i):
        return np.asarray(Image.open(self.images[i]).convert("RGB")), np.asarray(Image.open(self.masks[i]))

    def __next__(self):
        pairs = list(self.pool.map(self._load, self.order.next_indices()))
        return (torch.from_numpy(np.stack([p[0] for p in pairs])).permute(0, 3, 1, 2),
                torch.from_numpy(np.stack([p[1] for p in pairs])))


def fetch(loader, n=BATCHES):
    for _ in range(n):
        next(loader)


@pytest.mark.parametrize("loader", ["pil_folder", "h5_stream"])
def test_loader_images_per_second(benchmark, data, loader):
    benchmark.group = f"data loading {SIZE}x{SIZE}, batch {BATCH}, {WORKERS} workers"
    if loader == "pil_folder":
        ld = FolderLoader(data)
    else:                                                           # streamed from disk, not held in memory
        # one reader thread (the PIL baseline gets WORKERS decoding threads)
        ld = Loader(H5Source(data / "data.h5", in_memory=False), BatchOrder(np.arange(N), BATCH, seed=0), prefetch=3)
    fetch(ld, 2)
    benchmark.pedantic(fetch, args=(ld,), rounds=5, iterations=1)
    benchmark.extra_info.update(images=BATCHES * BATCH, bytes=BATCHES * BATCH * SIZE * SIZE * 4)
    if loader == "h5_stream":
        ld.close()


def test_loader_wait_per_training_step(benchmark, tmp_path, monkeypatch):
    """The CPU preset's semi step (64x64, batch 8 + 8) with the streams; wait = time next() blocked."""
    from cycleseg.config import Config
    from cycleseg.data.splits import split_paths
    from cycleseg.data.streams import make_streams
    from cycleseg.models import networks_from_config
    from cycleseg.assemble import make_step
    from cycleseg.fastpath import Plan

    monkeypatch.setenv("CYCLESEG_CACHE", str(tmp_path))
    cfg = Config(device="cpu", out=str(tmp_path / "run")).resolved()
    src = H5Source(split_paths(None, image_size=cfg.image_size)["train"], in_memory=False)
    nets = networks_from_config(cfg, src.meta)
    step = make_step(cfg, nets, src.meta, Plan())
    streams = make_streams(src, cfg.labeled_fraction, cfg.seed, cfg.batch_size, True)
    loaders = list(streams.loaders.values())

    def train_step():
        images, masks = next(loaders[0])
        step({"images": images, "masks": masks, "unlabeled": next(loaders[1])[0]})

    for _ in range(3):
        train_step()
    benchmark.group = "loader wait per training step (CPU preset, semi)"
    waits = [ld.wait_time for ld in loaders]
    steps = 10
    t0 = time.perf_counter()
    benchmark.pedantic(train_step, rounds=steps, iterations=1)
    total = time.perf_counter() - t0
    wait = sum(ld.wait_time for ld in loaders) - sum(waits)
    benchmark.extra_info.update(step_s=total / steps, loader_wait_s=wait / steps, bytes=0)
    for ld in loaders:
        ld.close()
