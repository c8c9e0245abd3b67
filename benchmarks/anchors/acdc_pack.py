"""Lossless pack of the SSL4MIS ACDC copy (training slices + validation volumes) into one small file, and
its exact rebuild.

    python acdc_pack.py pack   SRC_FOLDER PACK.npz      # SRC: train_slices.list, val.list, data/...
    python acdc_pack.py unpack PACK.npz DEST_FOLDER     # the same layout, the same arrays
    python acdc_pack.py verify PACK.npz SRC_FOLDER      # every array np.array_equal to the source
    python acdc_pack.py digest SRC_FOLDER PACK.sha256   # sha256 of the source's arrays, in pack order;
                                                        # unpack checks the rebuilt arrays against it

Each volume was min-max scaled from integer intensities, so its float32 values are float32(k / K) for
integers k and one K per volume (K inferred, every value checked; a volume where that fails keeps a table
of its distinct values, k its index). The k of each slice are coded as the 2D difference
k[i,j] - k[i,j-1] - k[i-1,j] + k[i-1,j-1] (zero-padded; inverse: two cumulative sums), zigzag-mapped to
unsigned, bytes < 255 stored as such and the rest as 255 + a uint16 escape; residual bytes, escapes and
labels are each lzma-compressed. The rebuilt HDF5 files hold the same `image` (float32) and `label`
(uint8) arrays, written without gzip.
"""
import hashlib
import json
import lzma
import sys
import time
from pathlib import Path

import h5py
import numpy as np

FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 6, "lc": 4, "lp": 0}]


def _read(path):
    with h5py.File(path, "r") as h:
        return h["image"][:], h["label"][:]


def _lines(path):
    return [l.strip() for l in open(path) if l.strip()]


def _volume_code(images):
    """(mode, K or table, codes per image) for the images of one volume."""
    u = np.unique(np.concatenate([i.ravel() for i in images])).astype(np.float64)
    if len(u) > 1:
        K = int(round(1 / np.diff(u).min()))
        k = np.round(u * K)
        if K < 65536 and np.array_equal((k / K).astype(np.float32), u.astype(np.float32)):
            return "k", K, [np.round(i.astype(np.float64) * K).astype(np.int32) for i in images]
    table = u.astype(np.float32)
    return "table", table, [np.searchsorted(table, i).astype(np.int32) for i in images]


def _diff2(c):
    p = np.zeros((c.shape[0] + 1, c.shape[1] + 1), np.int32)
    p[1:, 1:] = c
    return p[1:, 1:] - p[1:, :-1] - p[:-1, 1:] + p[:-1, :-1]


def pack(src, out):
    src = Path(src)
    t0 = time.time()
    slices = _lines(src / "train_slices.list")
    vals = _lines(src / "val.list")
    groups = {}
    for n in slices:
        groups.setdefault(n.rsplit("_slice_", 1)[0], []).append(n)
    meta = {"lists": {f: (src / f).read_text() for f in ("train_slices.list", "val.list", "train.list")
                      if (src / f).exists()},
            "slices": [], "volumes": [], "tables": []}
    codes, labels, tables = {}, {}, []
    for vol, names in groups.items():                              # training slices, by volume
        ims, lbs = zip(*(_read(src / "data" / "slices" / f"{n}.h5") for n in names))
        mode, k, cs = _volume_code(ims)
        if mode == "table":
            tables.append(k)
            k = len(tables) - 1
        for n, c, l in zip(names, cs, lbs):
            codes[n], labels[n] = c, l
            meta["slices"].append({"name": n, "shape": list(c.shape), "mode": mode, "K": k})
    order = [(n, codes[n], labels[n]) for n in slices]              # list order
    for vol in vals:                                               # validation volumes
        im, lb = _read(src / "data" / f"{vol}.h5")
        mode, k, (c,) = _volume_code([im])
        if mode == "table":
            tables.append(k)
            k = len(tables) - 1
        meta["volumes"].append({"name": vol, "shape": list(c.shape), "mode": mode, "K": k})
        order += [(None, c[d], lb[d]) for d in range(c.shape[0])]
    res = np.concatenate([_diff2(c).ravel() for _, c, _ in order]).astype(np.int64)
    z = ((res << 1) ^ (res >> 63)).astype(np.int64)                  # zigzag
    assert z.max() < 65536
    u8 = np.minimum(z, 255).astype(np.uint8)
    esc = z[z >= 255].astype(np.uint16)
    lab = np.concatenate([l.ravel() for _, _, l in order]).astype(np.uint8)
    meta["tables"] = [len(t) for t in tables]
    arrays = {"meta": np.frombuffer(json.dumps(meta).encode(), np.uint8),
              "res": np.frombuffer(lzma.compress(u8.tobytes(), filters=FILTERS), np.uint8),
              "esc": np.frombuffer(lzma.compress(esc.tobytes()), np.uint8),
              "lab": np.frombuffer(lzma.compress(lab.tobytes()), np.uint8),
              "tables": np.concatenate(tables) if tables else np.zeros(0, np.float32)}
    with open(out, "wb") as f:
        np.savez(f, **arrays)
    print(f"packed {len(slices)} slices + {len(vals)} volumes ({res.size} pixels) into {out}: "
          + ", ".join(f"{k} {v.nbytes / 1e6:.2f} MB" for k, v in arrays.items())
          + f"; {Path(out).stat().st_size / 2**20:.2f} MiB in {time.time() - t0:.0f} s")


def decode(pack_path):
    """Yields ("slice", name, image, label) and ("volume", name, image, label), as the source holds them."""
    a = np.load(pack_path)
    meta = json.loads(a["meta"].tobytes())
    u8 = np.frombuffer(lzma.decompress(a["res"].tobytes()), np.uint8)
    z = u8.astype(np.int32)
    esc = np.frombuffer(lzma.decompress(a["esc"].tobytes()), np.uint16)
    z[u8 == 255] = esc
    res = (z >> 1) ^ -(z & 1)
    lab = np.frombuffer(lzma.decompress(a["lab"].tobytes()), np.uint8)
    tab, tables = a["tables"], []
    for n in meta["tables"]:
        tables.append(tab[:n])
        tab = tab[n:]

    def image(codes, e):
        if e["mode"] == "k":
            return (codes.astype(np.float64) / e["K"]).astype(np.float32)
        return tables[e["K"]][codes]

    pos = 0
    def take(shape):
        nonlocal pos
        n = shape[0] * shape[1]
        r, l = res[pos:pos + n].reshape(shape), lab[pos:pos + n].reshape(shape)
        pos += n
        return r.cumsum(0, dtype=np.int32).cumsum(1, dtype=np.int32), l
    for e in meta["slices"]:
        c, l = take(e["shape"])
        yield "slice", e["name"], image(c, e), l.copy()
    for e in meta["volumes"]:
        d, h, w = e["shape"]
        cs, ls = zip(*(take((h, w)) for _ in range(d)))
        yield "volume", e["name"], image(np.stack(cs), e), np.stack(ls)
    assert pos == res.size
    yield "lists", meta["lists"], None, None


def _update(h, name, im, lb):
    for x in (name.encode(), str(im.dtype).encode(), str(lb.dtype).encode(), np.array(im.shape, np.int64).tobytes(),
              np.ascontiguousarray(im).tobytes(), np.ascontiguousarray(lb).tobytes()):
        h.update(x)


def digest(src, out):
    """sha256 of the source's arrays (names, dtypes, shapes, bytes) in the order decode yields them."""
    src, h = Path(src), hashlib.sha256()
    slices, vals = _lines(src / "train_slices.list"), _lines(src / "val.list")
    for n in slices:
        _update(h, n, *_read(src / "data" / "slices" / f"{n}.h5"))
    for n in vals:
        _update(h, n, *_read(src / "data" / f"{n}.h5"))
    Path(out).write_text(h.hexdigest() + "\n")
    print(f"sha256 of {len(slices) + len(vals)} source files' arrays: {h.hexdigest()} -> {out}")


def unpack(pack_path, dest):
    t0 = time.time()
    dest = Path(dest)
    (dest / "data" / "slices").mkdir(parents=True, exist_ok=True)
    n, sha = 0, hashlib.sha256()
    want = Path(pack_path).with_suffix(".sha256")
    for kind, name, im, lb in decode(pack_path):
        if kind == "lists":
            for f, text in name.items():
                (dest / f).write_text(text)
            continue
        _update(sha, name, im, lb)
        path = dest / "data" / ("slices" if kind == "slice" else "") / f"{name}.h5"
        with h5py.File(path, "w") as h:
            h.create_dataset("image", data=im)
            h.create_dataset("label", data=lb)
        n += 1
    if want.exists():
        if want.read_text().strip() != sha.hexdigest():
            raise SystemExit(f"unpack: the rebuilt arrays' sha256 {sha.hexdigest()} is not the source's ({want})")
        check = "sha256 of every image and label equal to the source's"
    else:
        check = f"no {want.name}: not checked"
    print(f"unpacked {n} files into {dest} in {time.time() - t0:.1f} s ({check})")


def verify(pack_path, src):
    src, n = Path(src), 0
    for kind, name, im, lb in decode(pack_path):
        if kind == "lists":
            assert all((src / f).read_text() == t for f, t in name.items())
            continue
        path = src / "data" / ("slices" if kind == "slice" else "") / f"{name}.h5"
        im0, lb0 = _read(path)
        assert im.dtype == im0.dtype and lb.dtype == lb0.dtype, name
        assert np.array_equal(im, im0) and np.array_equal(lb, lb0), name
        n += 1
    print(f"verified: {n} files, every image and label np.array_equal to {src}")


if __name__ == "__main__":
    cmd, a, b = sys.argv[1:4]
    {"pack": pack, "unpack": unpack, "verify": verify, "digest": digest}[cmd](a, b)
