"""Converters on tiny source trees made here, checked pixel for pixel against the sources."""
import h5py
import numpy as np
import pytest
from PIL import Image

from cycleseg.data.__main__ import main as data_main
from cycleseg.data.convert import CITYSCAPES_TRAIN_IDS, resize_pair
from cycleseg.data.h5format import DataError, default_palette, validate

RNG = np.random.default_rng(0)


def rgb(h, w):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def save_palette_png(path, mask, k):
    im = Image.fromarray(mask, mode="P")
    pal = sum(default_palette(k), []) + [224, 224, 192] * (256 - k)
    im.putpalette(pal[:768])
    im.save(path)


@pytest.fixture
def voc(tmp_path):
    root = tmp_path / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True)
    ids, data = ["2007_000001", "2007_000002", "2007_000003"], {}
    for i in ids:
        img, mask = rgb(20, 24), RNG.integers(0, 21, (20, 24), dtype=np.uint8)
        mask[0, :5] = 255                                             # boundary pixels
        Image.fromarray(img).save(root / "JPEGImages" / f"{i}.jpg", quality=100)
        save_palette_png(root / "SegmentationClass" / f"{i}.png", mask, 21)
        data[i] = (np.asarray(Image.open(root / "JPEGImages" / f"{i}.jpg").convert("RGB")), mask)
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids[:2]) + "\n")
    (root / "ImageSets/Segmentation/val.txt").write_text(ids[2] + "\n")
    return root, data


def test_voc_exact_at_native_size(voc, tmp_path):
    root, data = voc
    assert data_main(["convert", "voc", str(root), str(tmp_path / "train.h5"), "--split", "train", "--no-progress"]) == 0
    meta = validate(tmp_path / "train.h5")
    assert meta.num_classes == 21 and meta.class_names[15] == "person" and meta.count == 2
    with h5py.File(tmp_path / "train.h5") as f:
        for k, i in enumerate(["2007_000001", "2007_000002"]):
            assert np.array_equal(f["images"][k], data[i][0])          # decoded JPEG, unchanged
            assert np.array_equal(f["masks"][k], data[i][1])           # palette indices, 255 kept


def test_voc_resize_nearest_masks(voc, tmp_path):
    root, data = voc
    assert data_main(["convert", "voc", str(root), str(tmp_path / "v.h5"), "--split", "val", "--size", "10", "12",
                      "--no-progress"]) == 0
    img, mask = data["2007_000003"]
    with h5py.File(tmp_path / "v.h5") as f:
        got = f["masks"][0]
    rows = np.floor((np.arange(10) + 0.5) * 20 / 10).astype(int)      # nearest sample positions
    cols = np.floor((np.arange(12) + 0.5) * 24 / 12).astype(int)
    assert np.array_equal(got, mask[np.ix_(rows, cols)])


def test_paper_presets_and_keep_aspect():
    img, mask = rgb(40, 100), np.ones((40, 100), np.uint8)
    i2, m2 = resize_pair(img, mask, (128, 256))
    assert i2.shape == (128, 256, 3) and (m2 == 1).all()
    i3, m3 = resize_pair(img, mask, (100, 100), keep_aspect=True)
    assert i3.shape == (100, 100, 3) and (m3[:30] == 255).all() and (m3[30:70] == 1).all() and (m3[70:] == 255).all()
    assert (i3[:30] == 0).all()


def test_cityscapes_train_ids(tmp_path):
    root = tmp_path / "cs"
    (root / "leftImg8bit/val/aachen").mkdir(parents=True)
    (root / "gtFine/val/aachen").mkdir(parents=True)
    ids = RNG.integers(-1, 34, (16, 32)).astype(np.int16)
    ids[ids < 0] = 0
    img = rgb(16, 32)
    Image.fromarray(img).save(root / "leftImg8bit/val/aachen/aachen_000000_000019_leftImg8bit.png")
    Image.fromarray(ids.astype(np.uint8)).save(root / "gtFine/val/aachen/aachen_000000_000019_gtFine_labelIds.png")
    assert data_main(["convert", "cityscapes", str(root), str(tmp_path / "cs.h5"), "--split", "val", "--no-progress"]) == 0
    expect = np.full(ids.shape, 255, np.uint8)
    for label_id, train_id in CITYSCAPES_TRAIN_IDS.items():
        expect[ids == label_id] = train_id
    meta = validate(tmp_path / "cs.h5")
    assert meta.num_classes == 19 and meta.class_names[13] == "car"
    with h5py.File(tmp_path / "cs.h5") as f:
        assert np.array_equal(f["masks"][0], expect) and np.array_equal(f["images"][0], img)


def test_acdc_slices_and_volumes(tmp_path, make_acdc):
    root = tmp_path / "ACDC"
    slices, vols = make_acdc(root)
    assert data_main(["convert", "acdc", str(root), str(tmp_path / "a.h5"), "--split", "train", "--no-progress"]) == 0
    assert data_main(["convert", "acdc", str(root), str(tmp_path / "v.h5"), "--split", "val", "--no-progress"]) == 0
    with h5py.File(tmp_path / "a.h5") as f, h5py.File(root / "data/slices" / f"{slices[3]}.h5") as s:
        assert f["images"].shape == (6, 14, 10, 1) and list(f["groups"]) == [1, 1, 2, 2, 3, 3]
        assert np.array_equal(f["images"][3, ..., 0], np.rint(s["image"][...] * 255).astype(np.uint8))
        assert np.array_equal(f["masks"][3], s["label"][...])
    with h5py.File(tmp_path / "v.h5") as f, h5py.File(root / "data" / f"{vols[0]}.h5") as v:
        assert f["masks"].shape == (3, 14, 10) and np.array_equal(f["masks"][...], v["label"][...])
    assert validate(tmp_path / "a.h5").class_names == ["background", "RV", "Myo", "LV"]


def test_folder_and_info(tmp_path, capsys):
    root = tmp_path / "mine"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    masks = {}
    for n in ("a", "b"):
        Image.fromarray(rgb(8, 8)).save(root / "images" / f"{n}.png")
        masks[n] = RNG.integers(0, 3, (8, 8), dtype=np.uint8)
        Image.fromarray(masks[n]).save(root / "masks" / f"{n}.png")
    assert data_main(["convert", "folder", str(root), str(tmp_path / "f.h5"), "--no-progress"]) == 0
    assert validate(tmp_path / "f.h5").num_classes == 3
    with h5py.File(tmp_path / "f.h5") as f:
        assert np.array_equal(f["masks"][1], masks["b"])
    capsys.readouterr()
    assert data_main(["info", str(tmp_path / "f.h5")]) == 0
    out = capsys.readouterr().out
    assert "2 images 8x8x3" in out and "3 classes" in out


def test_converter_errors(tmp_path, capsys, voc):
    root, _ = voc
    assert data_main(["convert", "voc", str(tmp_path / "nowhere"), str(tmp_path / "x.h5"), "--no-progress"]) == 2
    assert "SegmentationClass: no such folder" in capsys.readouterr().err
    save_palette_png(root / "SegmentationClass" / "2007_000002.png", np.full((20, 24), 30, np.uint8), 31)
    assert data_main(["convert", "voc", str(root), str(tmp_path / "x.h5"), "--split", "train", "--no-progress"]) == 2
    assert (f"{root / 'SegmentationClass' / '2007_000002.png'}: mask: value 30 (480 pixels) is not a class id"
            in capsys.readouterr().err)
    assert not (tmp_path / "x.h5").exists()                             # nothing half-written
    (root / "JPEGImages" / "2007_000001.jpg").unlink()
    assert data_main(["convert", "voc", str(root), str(tmp_path / "x.h5"), "--split", "train", "--no-progress"]) == 2
    assert "2007_000001.jpg: no such file" in capsys.readouterr().err
    folder = tmp_path / "f"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    Image.fromarray(rgb(8, 8)).save(folder / "images" / "a.png")
    Image.fromarray(np.zeros((8, 9), np.uint8)).save(folder / "masks" / "a.png")
    assert data_main(["convert", "folder", str(folder), str(tmp_path / "y.h5"), "--no-progress"]) == 2
    assert "image is 8x8 but its mask is 8x9" in capsys.readouterr().err


def test_converted_voc_tree_trains(voc, tmp_path):
    """A VOC tree in the standard layout converts and trains with no manual step."""
    from cycleseg.config import parse_args
    from cycleseg.train import train

    root, _ = voc
    for split in ("train", "val"):
        assert data_main(["convert", "voc", str(root), str(tmp_path / "voc" / f"{split}.h5"), "--split", split,
                          "--size", "16", "16", "--no-progress"]) == 0
    cfg, _ = parse_args(["--data", str(tmp_path / "voc"), "--ngf", "4", "--n-blocks", "1", "--ndf", "4",
                         "--batch-size", "1", "--steps", "2", "--eval-every", "2", "--no-progress",
                         "--device", "cpu", "--preset", "cpu", "--labeled-fraction", "0.5",
                         "--out", str(tmp_path / "run")])
    result = train(cfg)
    assert len(result["iou"]) == 21 and 0 <= result["miou"] <= 1


def test_a_folder_of_grey_images_is_stored_with_one_channel(tmp_path):
    """Grey PNGs were stored as 3 equal channels (read as RGB): a one-channel checkpoint (the built-in data's,
    ACDC's) could not evaluate them, and nothing converted them otherwise. A folder whose every image is grey
    is stored with one channel; one colour image keeps the folder RGB."""
    from PIL import Image

    from cycleseg.data.__main__ import main as data_main
    from cycleseg.data.source import open_source

    src = tmp_path / "src"
    for d in ("images", "masks"):
        (src / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(src / "images" / f"{i}.png")
        Image.fromarray((np.arange(64).reshape(8, 8) % 2).astype(np.uint8)).save(src / "masks" / f"{i}.png")
    assert data_main(["convert", "folder", str(src), str(tmp_path / "g.h5"), "--no-progress"]) == 0
    assert open_source(tmp_path / "g.h5").meta.channels == 1
    with h5py.File(tmp_path / "g.h5") as f:
        assert f["images"].shape == (3, 8, 8, 1)
        assert (f["images"][0, :, :, 0] == np.asarray(Image.open(src / "images" / "0.png"))).all()
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(src / "images" / "2.png")
    assert data_main(["convert", "folder", str(src), str(tmp_path / "c.h5"), "--no-progress"]) == 0
    assert open_source(tmp_path / "c.h5").meta.channels == 3


def test_cityscapes_map_reads_label_ids_before_the_train_id_table(tmp_path):
    """--map was applied after Cityscapes' label-id -> train-id table: --map 13=255 made every car (train id
    13) ignore while no wall (label id 13) was there, and --map 26=255, meant for the cars' label id, did
    nothing (with a note that no mask held 26). It maps label ids, as its help says, before the table."""
    root = tmp_path / "cs"
    (root / "leftImg8bit/val/aachen").mkdir(parents=True)
    (root / "gtFine/val/aachen").mkdir(parents=True)
    ids = np.zeros((16, 32), np.uint8)
    ids[:, 8:16], ids[:, 16:] = 7, 26                               # road (train id 0), car (train id 13)
    Image.fromarray(rgb(16, 32)).save(root / "leftImg8bit/val/aachen/a_000000_000019_leftImg8bit.png")
    Image.fromarray(ids).save(root / "gtFine/val/aachen/a_000000_000019_gtFine_labelIds.png")
    for flag, cars in (("26=255", 255), ("13=255", 13)):
        out = tmp_path / f"{flag}.h5"
        assert data_main(["convert", "cityscapes", str(root), str(out), "--split", "val", "--map", flag,
                          "--no-progress"]) == 0
        with h5py.File(out) as f:
            mask = f["masks"][0]
        assert (mask[:, 16:] == cars).all() and (mask[:, 8:16] == 0).all() and (mask[:, :8] == 255).all(), flag


def test_a_volume_whose_image_and_label_differ_in_slices_is_named(tmp_path, make_acdc):
    """A val volume with 5 image slices over 3 label slices was cut to 3 by the converter without a word and
    crashed training's volume scores with a broadcast traceback: refused, naming the file and both shapes."""
    root = tmp_path / "ACDC"
    _, vols = make_acdc(root)
    with h5py.File(root / "data" / f"{vols[0]}.h5", "r+") as f:
        del f["image"]
        f.create_dataset("image", data=np.zeros((5, 14, 10), np.float32))
    assert data_main(["convert", "acdc", str(root), str(tmp_path / "v.h5"), "--split", "val", "--no-progress"]) == 2
    from cycleseg.data import acdc
    with pytest.raises(DataError, match=r"patient009_frame01.h5: image of shape \(5, 14, 10\) and label of shape "
                                        r"\(3, 14, 10\)"):
        acdc.read_volume(root, vols[0])
    assert not (tmp_path / "v.h5").exists()


def test_acdc_messages_name_the_h5_file_and_slice(tmp_path, make_acdc, capsys):
    """A bad value in an ACDC slice or volume was reported under the slice's name alone
    ('patient001_frame01_slice_2: ...'), which is no file: the message names the .h5 file (and the
    slice of a volume)."""
    root = tmp_path / "ACDC"
    slices, vols = make_acdc(root)
    with h5py.File(root / "data/slices" / f"{slices[1]}.h5", "r+") as f:
        f["label"][0, 0] = 7                                        # a class beyond ACDC's 4
    assert data_main(["convert", "acdc", str(root), str(tmp_path / "a.h5"), "--split", "train", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{root / 'data/slices' / slices[1]}.h5" in err, err
    with h5py.File(root / "data" / f"{vols[0]}.h5", "r+") as f:
        f["image"][1, 0, 0] = 3.0                                   # beyond the [0, 1] of a float image
    assert data_main(["convert", "acdc", str(root), str(tmp_path / "v.h5"), "--split", "val", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{root / 'data' / vols[0]}.h5 (slice 2)" in err, err


def test_a_stray_label_is_refused_whatever_the_size(tmp_path, capsys):
    """One pixel of label 7 in a 3-class 64x64 mask was refused at --size 64 64 but converted at --size 32 32
    (the nearest-neighbour resize dropped it before the check), exit 0; a Cityscapes label id beyond 33 became
    'ignore' without a word. Both refused, with the value, file and pixel count."""
    src = tmp_path / "f"
    for d in ("images", "masks"):
        (src / d).mkdir(parents=True)
    mask = np.zeros((64, 64), np.uint8)
    mask[:, 32:] = 2
    mask[1, 1] = 7
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(src / "images" / "a.png")
    Image.fromarray(mask).save(src / "masks" / "a.png")
    for size in ("64", "32"):
        capsys.readouterr()
        assert data_main(["convert", "folder", str(src), str(tmp_path / "o.h5"), "--size", size, size,
                          "--num-classes", "3", "--no-progress"]) == 2
        assert f"{src / 'masks' / 'a.png'}: mask: value 7 (1 pixels) is not a class id" in capsys.readouterr().err
    root = tmp_path / "cs"
    (root / "leftImg8bit/train/aachen").mkdir(parents=True)
    (root / "gtFine/train/aachen").mkdir(parents=True)
    Image.fromarray(np.zeros((16, 32, 3), np.uint8)).save(root / "leftImg8bit/train/aachen/a_000000_000019_leftImg8bit.png")
    ids = np.full((16, 32), 7, np.uint8)                                # road
    ids[:4, :5] = 100
    Image.fromarray(ids).save(root / "gtFine/train/aachen/a_000000_000019_gtFine_labelIds.png")
    assert data_main(["convert", "cityscapes", str(root), str(tmp_path / "c.h5"), "--split", "train",
                      "--no-progress"]) == 2
    assert "labelIds.png: label id 100 (20 pixels) is no label id of the table (0..33)" in capsys.readouterr().err
    assert data_main(["convert", "cityscapes", str(root), str(tmp_path / "c.h5"), "--split", "train", "--map",
                      "100=255", "--no-progress"]) == 0
