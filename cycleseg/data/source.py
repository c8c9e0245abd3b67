"""A split of the project's HDF5 format as a source of samples: reads sorted index runs straight into
preallocated buffers (one h5py handle per thread, opened lazily, or a memory map of the file for the
project's own layout), or holds the split in memory when it is small."""
from __future__ import annotations

import hashlib
import json
import threading

import numpy as np
import torch

from .h5format import DataError, check_masks, open_h5, read_meta

IN_MEMORY_BYTES = 1 << 30       # splits smaller than this are read into memory once


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


def image_digest(image: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).digest()


class H5Source:
    """A split of the project's HDF5 format. in_memory=True reads it whole once (small data).

    Streaming reads of the project's own layout (uncompressed, one chunk per sample) bypass h5py: the
    chunks' file offsets are looked up once, and samples are copied straight out of a memory map of the
    file (no per-read library overhead, no global lock). Other layouts are read through h5py.
    """

    def __init__(self, path, in_memory: bool = False, check: bool = True, meta=None):
        self.path, self.meta = str(path), meta or read_meta(path)
        self._local = threading.local()
        self._direct = None
        with open_h5(path) as f:
            self.groups = f["groups"][...] if "groups" in f else None
            self.volumes = f["volumes"][...] if "volumes" in f else None     # slice -> index in meta.volume_names
            self.labeled = f["labeled"][...].astype(bool) if "labeled" in f else None   # False: no annotation
            if in_memory:
                try:
                    self._images, self._masks = f["images"][...], f["masks"][...]
                except OSError as e:                                # a damaged chunk
                    raise DataError(f"{path}: could not read its images and masks ({e}); the file is damaged: "
                                    f"convert the data again") from e
            else:
                offs = {k: chunk_offsets(f[k]) for k in ("images", "masks")}
                if all(v is not None for v in offs.values()):
                    self._direct = offs
        if self._direct is not None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        self.in_memory = in_memory
        self.has_labels = None                                      # per image: any pixel not ignore_index
        if check:                                                   # every mask value, before training starts
            parts = []
            for s in range(0, len(self), 1024):
                masks = self._masks[s:s + 1024] if in_memory else self._read_masks(s, s + 1024)
                check_masks(self.path, masks, self.meta.num_classes, self.meta.ignore_index, offset=s,
                            labeled=None if self.labeled is None else self.labeled[s:s + 1024])
                parts.append((masks != self.meta.ignore_index).reshape(len(masks), -1).any(axis=1))
            self.has_labels = np.concatenate(parts) if parts else np.zeros(0, bool)

    def _read_masks(self, a: int, b: int) -> np.ndarray:
        try:
            return self._file()["masks"][a:b]
        except OSError as e:
            raise DataError(f"{self.path}: could not read the masks {a}..{min(b, len(self)) - 1} ({e}); the file "
                            f"is damaged: convert the data again") from e

    def __len__(self):
        return self.meta.count

    def fingerprint(self) -> str:
        """A digest of the split's content, whatever its file's name, layout or compression: its classes,
        shapes, count, groups / volumes / labeled flags, and every image and mask (one read of the split:
        ~0.1 s for ACDC's 64x64 slices, seconds for gigabytes). A run records it, so that a resume or an
        evaluation notices that the path it was given now holds other data (another folder of the same
        name, a file converted again, images edited)."""
        if getattr(self, "_fingerprint", None) is None:
            m = self.meta
            d = hashlib.sha256(json.dumps([m.num_classes, list(m.class_names), m.ignore_index, m.count, m.height,
                                           m.width, m.channels]).encode())
            for a in (self.groups, self.volumes, self.labeled):
                d.update(b"-" if a is None else np.ascontiguousarray(a).tobytes())
            block = max(1, (64 << 20) // max(1, m.height * m.width * (m.channels + 1)))
            self._images_seen = set()
            for s in range(0, len(self), block):
                images, masks = self.batch(np.arange(s, min(s + block, len(self))))
                d.update(images.numpy().tobytes())
                d.update(masks.numpy().tobytes())
                self._images_seen.update(image_digest(im) for im in images.numpy() if im.min() != im.max())
            self._fingerprint = d.hexdigest()[:16]
        return self._fingerprint

    def shared_images(self, other: "H5Source") -> int:
        """How many of `other`'s images are also in this split, byte for byte (a val file that holds slices of
        the training file's patients); blank images, which any two scans may share, are not counted. Read with
        the fingerprints, which the run computes anyway."""
        self.fingerprint(), other.fingerprint()
        return len(other._images_seen & self._images_seen)

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
            try:
                self._read_run(f, a, b, order[run], images, masks)
            except OSError as e:                                    # a damaged chunk: h5py's "Can't read data"
                raise DataError(f"{self.path}: could not read {'image' if b - a == 1 else 'images'} "
                                f"{a if b - a == 1 else f'{a}..{b - 1}'} ({e}); the file is damaged: convert "
                                f"the data again") from e

    @staticmethod
    def _read_run(f, a: int, b: int, dest: np.ndarray, images: np.ndarray, masks: np.ndarray | None) -> None:
        """Samples a..b-1 into the positions dest of images and masks."""
        if np.all(np.diff(dest) == 1):                              # contiguous destination: read in place
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


def open_source(path) -> H5Source:
    """A split as a source: held in memory when its images and masks, as read, are smaller than
    IN_MEMORY_BYTES (a compressed file's size is no measure: 5 MB of gzip held 1.9 GB), else streamed."""
    meta = read_meta(path)
    size = meta.count * meta.height * meta.width * (meta.channels + 1)     # uint8 images and masks
    return H5Source(path, in_memory=size < IN_MEMORY_BYTES, meta=meta)
