"""Labeled and unlabeled streams: endless batch iterators, reshuffled every pass, deterministic for a seed.

    H5Source  one split of the HDF5 format: reads sorted index runs straight into preallocated buffers
              (one h5py handle per thread, opened lazily), or holds the split in memory
    Stream    the order of indices: its whole state is (pass, position); pass p is a permutation drawn
              from (seed, p), so a checkpoint restores the exact batches to come. Rank r of W keeps
              every W-th index of each pass (a disjoint 1/W, equal lengths on all ranks)
    Loader    a background thread that reads, augments and (on CUDA) copies batches ahead of the step;
              its state is the stream state of the last batch handed out, so resuming is exact
"""
from __future__ import annotations

import queue
import threading

import numpy as np
import torch

from .h5format import DataError, check_masks, open_h5, read_meta

# The augmentation of a batch draws from (stream seed, AUGMENT_STREAM, pass, position): its own RNG stream,
# reproducible on resume, independent of the order draw (which uses (stream seed, pass)).
AUGMENT_STREAM = 7


def chunk_offsets(ds) -> np.ndarray | None:
    """File offsets of the samples of an uncompressed dataset stored one sample per chunk (or contiguous),
    or None when its layout does not allow direct reads (filters, other chunk shapes, unwritten chunks)."""
    n = ds.shape[0]
    if ds.compression is not None or ds.shuffle or ds.fletcher32 or ds.scaleoffset is not None:
        return None
    if ds.chunks is None:                                           # contiguous layout
        base = ds.id.get_offset()
        return None if base is None else base + np.arange(n, dtype=np.int64) * int(np.prod(ds.shape[1:]))
    if ds.chunks != (1,) + ds.shape[1:]:
        return None
    offs = np.empty(n, np.int64)
    zeros = (0,) * (ds.ndim - 1)
    for i in range(n):
        info = ds.id.get_chunk_info_by_coord((i,) + zeros)
        if info.byte_offset is None or info.filter_mask != 0:
            return None
        offs[i] = info.byte_offset
    return offs


class H5Source:
    """A split of the project's HDF5 format. in_memory=True reads it whole once (small data).

    Streaming reads of the project's own layout (uncompressed, one chunk per sample) bypass h5py: the
    chunks' file offsets are looked up once, and samples are copied straight out of a memory map of the
    file (no per-read library overhead, no global lock). Other layouts are read through h5py.
    """

    def __init__(self, path, in_memory: bool = False, check: bool = True):
        self.path, self.meta = str(path), read_meta(path)
        self._local = threading.local()
        self._direct = None
        with open_h5(path) as f:
            self.groups = f["groups"][...] if "groups" in f else None
            self.volumes = f["volumes"][...] if "volumes" in f else None     # slice -> index in meta.volume_names
            if in_memory:
                self._images, self._masks = f["images"][...], f["masks"][...]
            else:
                offs = {k: chunk_offsets(f[k]) for k in ("images", "masks")}
                if all(v is not None for v in offs.values()):
                    self._direct = offs
        if self._direct is not None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        self.in_memory = in_memory
        if check:                                                   # every mask value, before training starts
            for s in range(0, len(self), 1024):
                masks = self._masks[s:s + 1024] if in_memory else self._file()["masks"][s:s + 1024]
                check_masks(self.path, masks, self.meta.num_classes, self.meta.ignore_index, offset=s)

    def __len__(self):
        return self.meta.count

    def _file(self):
        f = getattr(self._local, "file", None)                      # h5py handles must not cross threads
        if f is None:
            f = self._local.file = open_h5(self.path)
        return f

    def read_into(self, idx: np.ndarray, images: np.ndarray, masks: np.ndarray | None) -> None:
        """Fill images (B, H, W, C) and masks (B, H, W) with the samples idx, in the order of idx.
        Sorted runs of consecutive indices are read with one slice each (sequential chunk access)."""
        if self.in_memory:
            images[:] = self._images[idx]
            if masks is not None:
                masks[:] = self._masks[idx]
            return
        if self._direct is not None:                                # memcpy from the mapped file
            mm, oi, om = self._map, self._direct["images"], self._direct["masks"]
            ni, nm = images[0].size, (masks[0].size if masks is not None else 0)
            for j, i in enumerate(idx):
                images[j] = mm[oi[i]:oi[i] + ni].reshape(images.shape[1:])
                if masks is not None:
                    masks[j] = mm[om[i]:om[i] + nm].reshape(masks.shape[1:])
            return
        f = self._file()
        order = np.argsort(idx, kind="stable")
        s = idx[order]
        breaks = np.flatnonzero(np.diff(s) != 1) + 1
        for run in np.split(np.arange(len(s)), breaks):             # positions in sorted order
            a, b = int(s[run[0]]), int(s[run[-1]]) + 1
            dest = order[run]                                       # where each read sample goes
            if np.all(np.diff(dest) == 1):                          # contiguous destination: read in place
                d0 = int(dest[0])
                f["images"].read_direct(images, np.s_[a:b], np.s_[d0:d0 + b - a])
                if masks is not None:
                    f["masks"].read_direct(masks, np.s_[a:b], np.s_[d0:d0 + b - a])
            else:
                images[dest] = f["images"][a:b]
                if masks is not None:
                    masks[dest] = f["masks"][a:b]

    def batch(self, idx, with_masks: bool = True):
        """uint8 tensors: images (B, C, H, W) and masks (B, H, W) (or None); allocates."""
        idx = np.asarray(idx, dtype=np.int64)
        m = self.meta
        images = np.empty((len(idx), m.height, m.width, m.channels), np.uint8)
        masks = np.empty((len(idx), m.height, m.width), np.uint8) if with_masks else None
        self.read_into(idx, images, masks)
        return torch.from_numpy(images).permute(0, 3, 1, 2), (torch.from_numpy(masks) if with_masks else None)


def labeled_subset(n: int, fraction: float, seed: int, groups: np.ndarray | None = None,
                   first_groups: bool = False) -> np.ndarray:
    """Sorted indices of the labeled subset. Nested: a smaller fraction's subset lies inside a larger one's.

    By image (a seeded permutation), or by group (e.g. patient) when groups are given: round(f * G)
    groups of a seeded permutation, or with first_groups=True the first round(f * G) groups in order
    of appearance (the SSL4MIS ACDC protocol: 7 / 14 / 21 / 35 / 70 patients).
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"labeled fraction must be in (0, 1], got {fraction}")
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


class Stream:
    """Endless order of batches of `batch_size` indices drawn from `indices`."""

    def __init__(self, indices, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        indices = np.asarray(indices, dtype=np.int64)
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        if len(indices) // world_size == 0:
            raise DataError(f"a stream over {len(indices)} images has nothing for rank {rank} of {world_size}")
        self.indices, self.batch_size, self.seed = indices, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.pass_, self.pos = 0, 0
        self._order = self._pass_order(0)

    def _pass_order(self, p: int) -> np.ndarray:
        perm = np.random.default_rng([self.seed, p]).permutation(self.indices)
        per_rank = len(perm) // self.world_size
        return perm[self.rank::self.world_size][:per_rank]

    def next_indices(self) -> np.ndarray:
        out = []
        while len(out) < self.batch_size:
            if self.pos == len(self._order):
                self.pass_, self.pos = self.pass_ + 1, 0
                self._order = self._pass_order(self.pass_)
            take = min(self.batch_size - len(out), len(self._order) - self.pos)
            out.extend(self._order[self.pos:self.pos + take])
            self.pos += take
        return np.asarray(out)

    def state_dict(self) -> dict:
        return {"pass": self.pass_, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.pass_, self.pos = int(state["pass"]), int(state["pos"])
        self._order = self._pass_order(self.pass_)


def augment(images: np.ndarray, masks: np.ndarray | None, rng: np.random.Generator, flip: bool,
            scale: tuple[float, float] | None, rotate: bool = False) -> None:
    """In place on uint8 buffers: random rotation by a multiple of 90 degrees (square images); random
    horizontal flip; random scale-crop (crop 1/s of each side at a random place, resize back: images
    bilinear, masks nearest)."""
    from PIL import Image

    h, w = images.shape[1:3]
    for i in range(len(images)):
        if rotate and h == w:
            k = int(rng.integers(0, 4))
            images[i] = np.rot90(images[i], k)
            if masks is not None:
                masks[i] = np.rot90(masks[i], k)
        if flip and rng.random() < 0.5:
            images[i] = images[i, :, ::-1]
            if masks is not None:
                masks[i] = masks[i, :, ::-1]
        if scale is not None:
            s = rng.uniform(*scale)
            ch, cw = max(1, round(h / s)), max(1, round(w / s))
            y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            img = images[i, y0:y0 + ch, x0:x0 + cw]
            img = Image.fromarray(img[..., 0] if img.shape[2] == 1 else img).resize((w, h), Image.BILINEAR)
            images[i] = np.asarray(img).reshape(images.shape[1:])
            if masks is not None:
                m = Image.fromarray(np.ascontiguousarray(masks[i, y0:y0 + ch, x0:x0 + cw]))
                masks[i] = np.asarray(m.resize((w, h), Image.NEAREST))


class Loader:
    """Batches of (images uint8 (B, C, H, W), masks uint8 (B, H, W) or None), prepared ahead of the step
    by one background thread into a ring of preallocated buffers (pinned, and copied to the GPU on a
    side stream, when device is CUDA)."""

    def __init__(self, source: H5Source, stream: Stream, with_masks: bool = True, device="cpu",
                 prefetch: int = 3, flip: bool = False, scale: tuple[float, float] | None = None,
                 rotate: bool = False):
        self.source, self.stream, self.with_masks = source, stream, with_masks
        self.device = torch.device(device)
        self.prefetch, self.flip, self.scale, self.rotate = max(1, prefetch), flip, scale, rotate
        m, b = source.meta, stream.batch_size
        cuda = self.device.type == "cuda"
        ring = self.prefetch + 2                                    # a buffer is refilled 2+ batches after use
        self._images = [torch.empty((b, m.height, m.width, m.channels), dtype=torch.uint8, pin_memory=cuda)
                        for _ in range(ring)]
        self._masks = [torch.empty((b, m.height, m.width), dtype=torch.uint8, pin_memory=cuda)
                       if with_masks else None for _ in range(ring)]
        self._state = stream.state_dict()                           # state after the last batch handed out
        self._thread = None
        self.wait_time = 0.0                                        # seconds __next__ spent waiting

    # -- producer ---------------------------------------------------------------------------------------
    def _produce(self, q: queue.Queue, stop: threading.Event) -> None:
        side = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        k = 0
        try:
            while not stop.is_set():
                before = self.stream.state_dict()
                idx = self.stream.next_indices()
                img_t, msk_t = self._images[k], self._masks[k]
                img, msk = img_t.numpy(), (msk_t.numpy() if msk_t is not None else None)
                self.source.read_into(idx, img, msk)
                if self.flip or self.scale or self.rotate:
                    rng = np.random.default_rng([self.stream.seed, AUGMENT_STREAM, before["pass"], before["pos"]])
                    augment(img, msk, rng, self.flip, self.scale, self.rotate)
                images, masks = img_t.permute(0, 3, 1, 2), msk_t                  # (B, C, H, W), (B, H, W)
                if side is not None:
                    with torch.cuda.stream(side):
                        images = images.to(self.device, non_blocking=True)
                        masks = masks.to(self.device, non_blocking=True) if masks is not None else None
                    side.synchronize()                              # the pinned buffer is free again
                item = (images, masks, self.stream.state_dict())
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        pass
                k = (k + 1) % len(self._images)
        except BaseException as e:                                  # hand the error to the consumer
            q.put(e)

    def _start(self) -> None:
        self.stream.load_state_dict(self._state)
        self._queue, self._stop = queue.Queue(self.prefetch), threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(self._queue, self._stop), daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    # -- consumer ---------------------------------------------------------------------------------------
    def __iter__(self):
        return self

    def __next__(self):
        import time

        if self._thread is None:
            self._start()
        t0 = time.perf_counter()
        item = self._queue.get()
        self.wait_time += time.perf_counter() - t0
        if isinstance(item, BaseException):
            self.close()
            raise item
        images, masks, self._state = item
        if images.is_cuda:
            cur = torch.cuda.current_stream(self.device)
            images.record_stream(cur)
            if masks is not None:
                masks.record_stream(cur)
        return images, masks

    def state_dict(self) -> dict:
        return dict(self._state)

    def load_state_dict(self, state: dict) -> None:
        self.close()
        self._state = dict(state)

    def __del__(self):
        self.close()

