import threading

import h5py
import numpy as np
import pytest
import torch

from cycleseg.data.h5format import DataError, Meta, default_palette, read_meta, validate, write_split
from cycleseg.data.shapes import CLASS_NAMES, generate, shapes_dataset
from cycleseg.data.loader import Loader
from cycleseg.data.order import BatchOrder
from cycleseg.data.source import H5Source
from cycleseg.data.subset import labeled_subset

META = Meta(num_classes=3, class_names=["a", "b", "c"], palette=default_palette(3))


def small(tmp_path, n=6, name="s.h5"):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 8, 10, 3), dtype=np.uint8)
    masks = rng.integers(0, 3, (n, 8, 10), dtype=np.uint8)
    masks[0, 0, 0] = 255
    write_split(tmp_path / name, images, masks, META, groups=np.arange(n) // 2)
    return tmp_path / name, images, masks


def test_roundtrip(tmp_path):
    path, images, masks = small(tmp_path)
    meta = validate(path)
    assert (meta.count, meta.height, meta.width, meta.channels, meta.num_classes) == (6, 8, 10, 3, 3)
    assert meta.class_names == ["a", "b", "c"] and meta.ignore_index == 255
    src = H5Source(path)
    x, y = src.batch(np.array([4, 1]))
    x, y = x.flip(0), y.flip(0)
    assert x.shape == (2, 3, 8, 10) and np.array_equal(x.permute(0, 2, 3, 1).numpy(), images[[1, 4]])
    assert np.array_equal(y.numpy(), masks[[1, 4]]) and list(src.groups) == [0, 0, 1, 1, 2, 2]
    with h5py.File(path) as f:
        assert f["images"].chunks == (1, 8, 10, 3) and f["images"].compression is None


def test_errors_name_file_dataset_index(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_meta(tmp_path / "missing.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(DataError, match="junk.h5: not a readable HDF5"):
        read_meta(tmp_path / "junk.h5")
    path, images, masks = small(tmp_path)
    masks[4, 2, 3] = 7
    write_split(tmp_path / "bad.h5", images, masks, META)
    with pytest.raises(DataError, match=r"bad.h5: dataset 'masks', index 4: value 7"):
        validate(tmp_path / "bad.h5")
    with h5py.File(tmp_path / "count.h5", "w") as f:
        f.attrs["format"] = "cycleseg"
        f["images"] = images
        f["masks"] = masks[:5]
    with pytest.raises(DataError, match="6 images but 5 masks"):
        read_meta(tmp_path / "count.h5")
    with h5py.File(tmp_path / "dtype.h5", "w") as f:
        f.attrs["format"] = "cycleseg"
        f["images"] = images.astype(np.float32)
        f["masks"] = masks
    with pytest.raises(DataError, match="'images' must be uint8"):
        read_meta(tmp_path / "dtype.h5")
    with pytest.raises(DataError, match="differ in count or size"):
        write_split(tmp_path / "x.h5", images, masks[:, :4], META)
    with h5py.File(tmp_path / "names.h5", "w") as f:
        f.attrs["format"] = "cycleseg"
        f["image"] = images
        f["masks"] = masks
    with pytest.raises(DataError, match="names.h5: missing dataset 'images'"):
        read_meta(tmp_path / "names.h5")
    with h5py.File(tmp_path / "sizes.h5", "w") as f:
        f.attrs["format"] = "cycleseg"
        f["images"] = images
        f["masks"] = masks[:, :, :9]
    with pytest.raises(DataError, match="sizes.h5: images are 8x10 but masks are 8x9"):
        read_meta(tmp_path / "sizes.h5")
    write_split(tmp_path / "empty.h5", images[:0], masks[:0], META)
    with pytest.raises(DataError, match="empty.h5: holds no images"):
        read_meta(tmp_path / "empty.h5")
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["images"] = images
    with pytest.raises(DataError, match="not a cycleseg file"):
        read_meta(tmp_path / "plain.h5")


def test_direct_reads_match_h5py_and_fall_back(tmp_path):
    """The memory-mapped reads of the project's layout equal h5py's; other layouts go through h5py."""
    path, images, masks = small(tmp_path, n=9)
    src = H5Source(path)
    assert src._direct is not None
    idx = np.array([8, 0, 3, 4, 2])
    x, y = src.batch(idx)
    assert np.array_equal(x.permute(0, 2, 3, 1).numpy(), images[idx]) and np.array_equal(y.numpy(), masks[idx])
    with h5py.File(tmp_path / "gz.h5", "w") as f:                       # compressed: no direct reads
        f.attrs.update({"format": "cycleseg", "num_classes": 3, "class_names": '["a","b","c"]',
                        "palette": "[]", "ignore_index": 255, "source": "", "preprocessing": "{}"})
        f.create_dataset("images", data=images, compression="gzip", chunks=(1, 8, 10, 3))
        f.create_dataset("masks", data=masks, compression="gzip", chunks=(1, 8, 10))
    gz = H5Source(tmp_path / "gz.h5")
    assert gz._direct is None
    x2, y2 = gz.batch(idx)
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_shapes_dataset_is_deterministic_and_cached(tmp_path, monkeypatch):
    a_img, a_mask = generate(5, 32, seed=3, split="train")
    b_img, b_mask = generate(5, 32, seed=3, split="train")
    assert np.array_equal(a_img, b_img) and np.array_equal(a_mask, b_mask)
    assert not np.array_equal(generate(5, 32, seed=4, split="train")[1], a_mask)
    assert set(np.unique(a_mask)) <= set(range(len(CLASS_NAMES)))
    monkeypatch.setenv("CYCLESEG_CACHE", str(tmp_path))
    paths = shapes_dataset(32, seed=0)
    mtime = paths["train"].stat().st_mtime_ns
    assert shapes_dataset(32, seed=0)["train"].stat().st_mtime_ns == mtime
    meta = validate(paths["train"])
    assert meta.count == 1000 and meta.num_classes == 5 and meta.class_names == CLASS_NAMES
    hist = np.bincount(H5Source(paths["train"]).batch(np.arange(1000))[1].numpy().ravel(), minlength=5)
    assert (hist[1:] > 0.01 * hist.sum()).all()                      # every class well represented


def test_labeled_subsets_are_nested_and_seeded():
    subsets = [set(labeled_subset(1000, f, seed=5)) for f in (0.1, 0.2, 0.3, 0.5, 1.0)]
    assert [len(s) for s in subsets] == [100, 200, 300, 500, 1000]
    assert all(a < b for a, b in zip(subsets, subsets[1:]))
    assert set(labeled_subset(1000, 0.1, seed=6)) != subsets[0]
    groups = np.repeat(np.arange(20), 7)
    g = labeled_subset(len(groups), 0.25, seed=1, groups=groups)
    assert len(np.unique(groups[g])) == 5 and len(g) == 35            # whole groups only
    with pytest.raises(ValueError, match="fraction"):
        labeled_subset(10, 0.0, seed=0)
    with pytest.raises(DataError, match="labeled subset at fraction 0.1 of 0 images is empty"):
        labeled_subset(0, 0.1, seed=0)


def test_stream_passes_shards_and_state():
    s = BatchOrder(np.arange(12), batch_size=5, seed=1)
    seen = np.concatenate([s.next_indices() for _ in range(12)])      # 60 indices = 5 passes
    for p in range(5):
        assert sorted(seen[12 * p:12 * (p + 1)]) == list(range(12))    # each pass covers everything once
    assert not np.array_equal(seen[:12], seen[12:24])                   # reshuffled every pass
    s2 = BatchOrder(np.arange(12), batch_size=5, seed=1)
    s2.next_indices()
    s3 = BatchOrder(np.arange(12), batch_size=5, seed=1)
    s3.load_state_dict(s2.state_dict())
    assert np.array_equal(s3.next_indices(), s2.next_indices())
    shards = [BatchOrder(np.arange(12), 2, seed=1, rank=r, world_size=3) for r in range(3)]
    parts = [set(np.concatenate([sh.next_indices() for _ in range(2)])) for sh in shards]
    assert all(len(p) == 4 for p in parts) and set().union(*parts) == set(range(12))


def test_a_compressed_split_is_held_in_memory_by_its_size_as_read(tmp_path, monkeypatch):
    """Whether a split is read whole into memory goes by its images and masks as read, not by the file's size:
    a gzip file of 5 MB held 1.9 GB (a file just under the limit could hold tens of GB)."""
    import cycleseg.data.source as source

    images = np.zeros((200, 32, 32, 1), np.uint8)                       # 409,600 bytes as read
    with h5py.File(tmp_path / "gz.h5", "w") as f:
        f.attrs.update({"format": "cycleseg", "num_classes": 3, "class_names": '["a","b","c"]',
                        "palette": "[]", "ignore_index": 255, "source": "", "preprocessing": "{}"})
        f.create_dataset("images", data=images, compression="gzip", chunks=(1, 32, 32, 1))
        f.create_dataset("masks", data=images[..., 0], compression="gzip", chunks=(1, 32, 32))
    assert (tmp_path / "gz.h5").stat().st_size < 100_000
    monkeypatch.setattr(source, "IN_MEMORY_BYTES", 100_000)
    assert not source.open_source(tmp_path / "gz.h5").in_memory
    monkeypatch.setattr(source, "IN_MEMORY_BYTES", 500_000)
    assert source.open_source(tmp_path / "gz.h5").in_memory


@pytest.mark.parametrize("in_memory", [False, True])
def test_source_reads_any_index_order(tmp_path, in_memory):
    path, images, masks = small(tmp_path, n=12)
    src = H5Source(path, in_memory=in_memory)
    idx = np.array([7, 3, 4, 5, 11, 0, 1])                            # runs: 3-5, 0-1, and singles, shuffled
    x, y = src.batch(idx)
    assert np.array_equal(x.permute(0, 2, 3, 1).numpy(), images[idx])
    assert np.array_equal(y.numpy(), masks[idx])


def test_loader_batches_state_and_resume(tmp_path):
    path, images, masks = small(tmp_path, n=12)
    src = H5Source(path)
    ref = BatchOrder(np.arange(12), 5, seed=2)
    loader = Loader(src, BatchOrder(np.arange(12), 5, seed=2), prefetch=2)
    got = [next(loader) for _ in range(4)]
    for x, y in got[-1:]:
        idx = [ref.next_indices() for _ in range(4)][-1]
        assert np.array_equal(x.permute(0, 2, 3, 1).numpy(), images[idx]) and np.array_equal(y.numpy(), masks[idx])
    state = loader.state_dict()
    assert state == {"pass": 1, "pos": 8}                              # 4 batches of 5 = 20 = 12 + 8
    after = [next(loader)[1].clone() for _ in range(3)]
    loader.close()
    resumed = Loader(src, BatchOrder(np.arange(12), 5, seed=2), prefetch=2)
    resumed.load_state_dict(state)
    assert all(torch.equal(a, next(resumed)[1]) for a in after)
    resumed.close()


def test_loader_augmentation_is_deterministic_and_consistent(tmp_path):
    images = np.zeros((8, 16, 16, 3), np.uint8)
    masks = np.zeros((8, 16, 16), np.uint8)
    images[:, :, :8], masks[:, :, :8] = 200, 1                       # left half class 1
    write_split(tmp_path / "a.h5", images, masks, META)
    src = H5Source(tmp_path / "a.h5")
    runs = []
    for _ in range(2):
        ld = Loader(src, BatchOrder(np.arange(8), 8, seed=0), flip=True, scale=(1.0, 1.5), prefetch=1)
        runs.append(next(ld))
        ld.close()
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    x, y = runs[0]
    mismatch = (x[:, 0] > 100) != (y == 1)                              # (B, H, W)
    assert mismatch.sum(-1).max() <= 1                                  # aligned up to the one blended edge pixel
    assert (y[:, :, 0] == 0).any() and (y[:, :, 0] == 1).any()         # some flipped, some not


def test_rotation_moves_image_and_mask_together(tmp_path):
    images = np.zeros((16, 8, 8, 3), np.uint8)
    masks = np.zeros((16, 8, 8), np.uint8)
    images[:, :2, :4], masks[:, :2, :4] = 255, 2                        # a bar in the top-left corner
    write_split(tmp_path / "r.h5", images, masks, META)
    ld = Loader(H5Source(tmp_path / "r.h5"), BatchOrder(np.arange(16), 16, seed=3), rotate=True, prefetch=1)
    x, y = next(ld)
    ld.close()
    assert torch.equal(x[:, 0] == 255, y == 2)                          # exact: rotations need no resampling
    corners = {tuple(np.argwhere(m.numpy() == 2).mean(0).round().astype(int)) for m in y}
    assert len(corners) >= 3                                            # several of the four orientations


def test_loader_errors_reach_the_consumer(tmp_path):
    path, _, _ = small(tmp_path, n=12)
    src = H5Source(path)
    calls = []
    read = src.read_into

    def failing_read(*args):                                            # the third read fails in the thread
        calls.append(1)
        if len(calls) == 3:
            raise DataError("data.h5: dataset 'images', index 5: unreadable")
        return read(*args)

    src.read_into = failing_read
    ld = Loader(src, BatchOrder(np.arange(12), 4, seed=0), prefetch=1)
    next(ld)
    with pytest.raises(DataError, match="index 5: unreadable"):
        for _ in range(10):
            next(ld)


def test_closing_a_loader_whose_producer_failed_on_a_full_queue_returns(tmp_path):
    """The producer fails while its queue is full and the consumer closes without reading: close()
    returns (the error is dropped with the loader) instead of joining a thread blocked on the queue."""
    path, _, _ = small(tmp_path, n=12)
    src = H5Source(path)
    read, failed, calls = src.read_into, threading.Event(), []

    def failing_read(*args):                                            # reads 1 and 2 fill the queue
        calls.append(1)
        if len(calls) == 3:
            failed.set()
            raise DataError("data.h5: unreadable")
        return read(*args)

    src.read_into = failing_read
    ld = Loader(src, BatchOrder(np.arange(12), 4, seed=0), prefetch=1)
    next(ld)                                                            # read 1 handed out, read 2 queued
    assert failed.wait(10)                                              # read 3 failed; the queue is full
    closer = threading.Thread(target=ld.close, daemon=True)
    closer.start()
    closer.join(10)
    assert not closer.is_alive()


def test_a_damaged_cached_split_is_written_again(tmp_path, monkeypatch, capsys):
    """The cache trusts a file only with the checksum it recorded: garbled bytes are noticed and the split is
    generated again, identical to the first."""
    from cycleseg.data.splits import split_paths

    monkeypatch.setenv("CYCLESEG_CACHE", str(tmp_path))
    train = split_paths(None, image_size=16, progress=False)["train"]
    good = train.read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    train.write_bytes(bytes(bad))
    assert split_paths(None, image_size=16, progress=False)["train"] == train
    assert train.read_bytes() == good and "checksum differs" in capsys.readouterr().err
    for made in (train, train.with_name("train.h5.sha256")):        # a folder made where a cached file lies:
        made.unlink()                                               # named, with what to do (a traceback before)
        made.mkdir()
        with pytest.raises(DataError, match="is a folder or special file where the data cache keeps a file; remove it"):
            split_paths(None, image_size=16, progress=False)
        made.rmdir()


def test_a_damaged_chunk_is_named_with_its_file_and_index(tmp_path):
    """A compressed split whose chunk bytes were damaged: training and evaluation ended with h5py's
    "Can't read data" naming neither the file nor the image (predict named both)."""
    path = tmp_path / "s.h5"
    rng = np.random.default_rng(0)
    write_split(path, rng.integers(0, 256, (4, 16, 16, 1), dtype=np.uint8), np.ones((4, 16, 16), np.uint8),
                Meta(num_classes=2, class_names=["a", "b"], palette=[[0, 0, 0], [255, 255, 255]]))
    with h5py.File(path, "r") as f, h5py.File(tmp_path / "z.h5", "w") as g:    # the same, gzip-compressed
        for k in ("images", "masks"):
            g.create_dataset(k, data=f[k][...], chunks=(1, *f[k].shape[1:]), compression="gzip")
        g.attrs.update(f.attrs)
    with h5py.File(tmp_path / "z.h5", "r") as g:
        info = g["images"].id.get_chunk_info(2)                     # image 2's chunk
    blob = bytearray((tmp_path / "z.h5").read_bytes())
    blob[info.byte_offset:info.byte_offset + info.size] = b"\xff" * info.size
    (tmp_path / "z.h5").write_bytes(bytes(blob))
    source = H5Source(tmp_path / "z.h5")                            # streamed: masks are fine
    source.batch([0, 1])
    with pytest.raises(DataError, match=r"z.h5: could not read image 2 \(.*\); the file is damaged"):
        source.batch([2])
    with pytest.raises(DataError, match=r"z.h5: could not read images 2..3 "):
        source.batch([3, 2])
    with pytest.raises(DataError, match=r"z.h5: could not read its images and masks"):
        H5Source(tmp_path / "z.h5", in_memory=True)
