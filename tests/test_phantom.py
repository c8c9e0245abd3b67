"""The built-in cardiac phantoms: deterministic by seed, ACDC's classes and palette, exact masks,
anatomy that holds (the LV inside the myocardium, the RV beside it, shrinking toward the apex)."""
import numpy as np
from scipy import ndimage

from cycleseg.data import phantom
from cycleseg.data.cache import generated_splits
from cycleseg.data.convert import acdc_items
from cycleseg.data.h5format import validate
from cycleseg.data.phantom import BACKGROUND, CLASS_NAMES, LV, MYO, RV, SLICES, generate, phantom_dataset
from cycleseg.data.source import H5Source
from cycleseg.data.subset import labeled_subset


def test_deterministic_by_seed_and_split():
    a = generate(3, 32, seed=3, split="train")
    b = generate(3, 32, seed=3, split="train")
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(generate(3, 32, seed=4, split="train")[1], a[1])
    assert not np.array_equal(generate(3, 32, seed=3, split="val")[1], a[1])
    assert a[0].dtype == a[1].dtype == np.uint8 and a[0].shape == a[1].shape == (3 * SLICES, 32, 32)
    assert np.array_equal(a[2], np.repeat([0, 1, 2], SLICES))          # each slice's patient


def test_more_patients_extend_a_split():
    """A split's first patients do not depend on how many follow (version 4 grew val from 20 to 100
    patients: its first 20 are version 2's)."""
    few, more = generate(2, 32, seed=0, split="val"), generate(4, 32, seed=0, split="val")
    assert all(np.array_equal(x, y[:2 * SLICES]) for x, y in zip(few, more))


def test_classes_and_palette_are_acdcs(tmp_path, monkeypatch):
    (tmp_path / "train_slices.list").write_text("")
    _, acdc_meta = acdc_items(tmp_path, "train")                      # what the ACDC converter writes
    monkeypatch.setenv("CYCLESEG_CACHE", str(tmp_path))
    paths = phantom_dataset(32, seed=0)
    mtime = paths["train"].stat().st_mtime_ns
    assert phantom_dataset(32, seed=0)["train"].stat().st_mtime_ns == mtime            # cached
    meta = validate(paths["train"])
    assert meta.class_names == CLASS_NAMES == acdc_meta.class_names == ["background", "RV", "Myo", "LV"]
    assert meta.palette == acdc_meta.palette and meta.num_classes == 4 and meta.channels == 1
    assert meta.labeled_subset == acdc_meta.labeled_subset == "first_groups"          # ACDC's protocol
    src = H5Source(paths["train"])
    assert len(src) == phantom.PATIENTS["train"] * SLICES and len(np.unique(src.groups)) == phantom.PATIENTS["train"]
    hist = np.bincount(src.batch(np.arange(len(src)))[1].numpy().ravel(), minlength=4)
    assert (hist[1:] > 0.01 * hist.sum()).all()                      # every class well represented
    for seed in (0, 1):                                               # 10 % = the first 10 patients, any seed
        chosen = labeled_subset(len(src), 0.1, seed, src.groups, first_groups=True)
        assert np.array_equal(chosen, np.arange(10 * SLICES))


def test_masks_are_exact():
    """Rendered without blur, noise, bias or contrast curve, every pixel of a class has its tissue's
    intensity: the geometry that draws a tissue labels it."""
    rng = np.random.default_rng(0)
    size = 48
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    p = np.stack([(xx + 0.5) / size, (yy + 0.5) / size], -1)
    for _ in range(10):
        a = phantom._anatomy(rng)
        s = dict(phantom._scanner(rng), blur=0.0, noise=0.0, bias=0.0, gamma=1.0)
        s["levels"][1:4] = [0.9, 0.3, 0.7]                            # RV, Myo, LV: distinct
        labels, tissue = phantom._heart(rng, a, p, 0.2)
        img = phantom._render(rng, s, tissue, p)
        assert np.allclose(img[labels == RV], 0.9) and np.allclose(img[labels == MYO], 0.3)
        lv = img[labels == LV]
        assert np.isclose(lv, 0.7).mean() > 0.8 and np.isclose(lv, 0.7).sum() + np.isclose(lv, 0.3).sum() == lv.size


def test_anatomy_holds():
    _, masks, _ = generate(10, 64, seed=0, split="train")
    for i, m in enumerate(masks):
        lv = m == LV
        assert lv.any() and (m == MYO).any()
        ring = ndimage.binary_dilation(lv) & ~lv                      # the LV touches only the myocardium
        assert set(np.unique(m[ring])) <= {MYO}, i
        assert not (ndimage.binary_dilation(m == RV) & lv).any()     # the RV never touches the LV
    base, apex = masks.reshape(10, SLICES, 64, 64)[:, 0], masks.reshape(10, SLICES, 64, 64)[:, -1]
    assert (base > BACKGROUND).sum() > 1.5 * (apex > BACKGROUND).sum()
    assert (base == RV).any(axis=(1, 2)).all() and (base == RV).sum() > 3 * (apex == RV).sum()


def test_a_changed_generator_writes_a_new_dataset(tmp_path, monkeypatch):
    """The cache is keyed by the generator's code as well as its version: an edited generator (a version
    number forgotten, a trial's data left in the cache) never reads the old files."""
    monkeypatch.setenv("CYCLESEG_CACHE", str(tmp_path / "cache"))
    code = tmp_path / "generator.py"
    calls = []

    def make(split):
        calls.append(split)
        return np.full((2, 8, 8), len(calls), np.uint8), np.zeros((2, 8, 8), np.uint8)

    code.write_text("version 1")
    first = generated_splits("toy", 1, 0, 8, ["a", "b"], ["train"], make, code)
    assert generated_splits("toy", 1, 0, 8, ["a", "b"], ["train"], make, code) == first and calls == ["train"]
    code.write_text("version 1, edited")
    second = generated_splits("toy", 1, 0, 8, ["a", "b"], ["train"], make, code)
    assert second["train"] != first["train"] and calls == ["train", "train"]
    images = [H5Source(p["train"]).batch(np.arange(2))[0] for p in (first, second)]
    assert not images[0].equal(images[1])                              # the new generator's data
