"""python -m cycleseg.predict: masks at each input's size, palette indices = argmax of the logits."""
import numpy as np
import pytest
import torch
from PIL import Image

from cycleseg.data.h5format import read_meta
from cycleseg.predict import main as predict_main


@pytest.fixture(scope="module", params=["phantom", "shapes"])
def data(request):
    return request.param


@pytest.fixture(scope="module")
def checkpoint(data, tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint of the built-in phantoms (gray images), or of the shapes (RGB)."""
    if data == "phantom":
        return tiny_checkpoint
    from cycleseg.config import parse_args
    from cycleseg.train import train

    out = tmp_path_factory.mktemp("tiny-shapes") / "r"
    cfg, _ = parse_args(["--ngf", "4", "--n-blocks", "1", "--ndf", "4", "--image-size", "16", "--batch-size", "2",
                         "--no-progress", "--device", "cpu", "--steps", "3", "--eval-every", "3", "--out", str(out),
                         "--data", "shapes"])
    train(cfg)
    return out / "last.pt"


def expected_mask(ckpt, image: np.ndarray) -> np.ndarray:
    """The prediction computed here, independently of predict.py: resize, network, argmax, resize back."""
    from cycleseg.checkpoint import load_run
    from cycleseg.checkpoint import networks_from_checkpoint

    _, info, nets = networks_from_checkpoint(load_run(ckpt), ckpt)
    im = Image.fromarray(image).convert("RGB" if info["channels"] == 3 else "L")   # the checkpoint's channels
    small = np.asarray(im.resize((16, 16), Image.BILINEAR)).astype(np.float32).reshape(16, 16, info["channels"])
    x = torch.from_numpy(small).permute(2, 0, 1)[None] / 127.5 - 1
    with torch.no_grad():
        pred = nets["G_IS"].eval()(x).argmax(1)[0].numpy().astype(np.uint8)
    return np.asarray(Image.fromarray(pred).resize((image.shape[1], image.shape[0]), Image.NEAREST))


def test_masks_at_input_size_with_argmax_indices(checkpoint, tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    shapes = {"a": (20, 30), "b": (33, 17)}
    images = {}
    for name, (h, w) in shapes.items():
        images[name] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(images[name]).save(folder / f"{name}.png")
    gray = rng.integers(0, 256, (12, 40), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "c.png")
    assert predict_main([str(checkpoint), str(folder), str(tmp_path / "c.png"), "--out", str(tmp_path / "out"),
                         "--no-progress", "--precision", "fp32"]) == 0          # fp32: compared pixel for pixel
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{n}_{kind}.png" for n in "abc"
                                                            for kind in ("mask", "overlay", "gsi")] + ["inputs.csv"])
    rows = (out / "inputs.csv").read_text().splitlines()
    assert rows[0] == "input,output" and rows[1:4] == [f"{folder / 'a.png'},a_{kind}.png" for kind in ("mask", "overlay", "gsi")]
    images["c"] = gray
    for name, image in images.items():
        mask = Image.open(out / f"{name}_mask.png")
        assert mask.mode == "P" and mask.size == (image.shape[1], image.shape[0])
        assert np.array_equal(np.asarray(mask), expected_mask(checkpoint, image))
        assert Image.open(out / f"{name}_overlay.png").size == mask.size == Image.open(out / f"{name}_gsi.png").size


def test_hdf5_inputs(checkpoint, data, tmp_path):
    from cycleseg.data.splits import split_paths
    val = split_paths(data, image_size=16)["val"]
    assert predict_main([str(checkpoint), str(val), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    masks = sorted((tmp_path / "o").glob("*_mask.png"))
    count = read_meta(val).count                                       # a mask per image of the file
    assert count > 0 and len(masks) == count and Image.open(masks[0]).size == (16, 16)


def test_errors_leave_the_output_untouched(checkpoint, tmp_path, capsys):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    assert predict_main([str(checkpoint), str(tmp_path / "good.png"), str(tmp_path / "bad.png"),
                         "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "bad.png: not a readable image" in err and not (tmp_path / "out").exists()
    assert predict_main([str(checkpoint), str(tmp_path / "missing.png"), "--out", str(tmp_path / "out")]) == 2
    assert "missing.png: no such file" in capsys.readouterr().err
    torch.save([1, 2], tmp_path / "list.pt")
    assert predict_main([str(tmp_path / "list.pt"), str(tmp_path / "good.png"), "--out", str(tmp_path / "out")]) == 2
    assert "not a cycleseg checkpoint" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_names_never_collide_and_high_bit_images_are_not_clipped(tiny_checkpoint, tmp_path, capsys):
    from cycleseg.predict import unique_names

    assert unique_names(["x", "x", "x_1", "y"]) == ["x_2", "x_3", "x_1", "y"]
    rng = np.random.default_rng(0)
    for d, stem in (("a", "x"), ("b", "x"), ("c", "x_1")):
        (tmp_path / d).mkdir()
        Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8)).save(tmp_path / d / f"{stem}.png")
    out = tmp_path / "out"
    assert predict_main([str(tiny_checkpoint), *(str(tmp_path / d) for d in "abc"), "--out", str(out),
                         "--no-progress"]) == 0
    rows = [r.split(",") for r in (out / "inputs.csv").read_text().splitlines()[1:]]
    assert {k: v for k, v in rows if v.endswith("_mask.png")} == {str(tmp_path / "a/x.png"): "x_2_mask.png",
                                                          str(tmp_path / "b/x.png"): "x_3_mask.png",
                                                          str(tmp_path / "c/x_1.png"): "x_1_mask.png"}
    deep = tmp_path / "deep.png"
    Image.fromarray(rng.integers(0, 4096, (20, 20)).astype(np.uint16)).save(deep)       # 12-bit values
    assert predict_main([str(tiny_checkpoint), str(deep), "--out", str(tmp_path / "o2"), "--no-progress"]) == 2
    assert "--intensity minmax" in capsys.readouterr().err and not (tmp_path / "o2").exists()
    assert predict_main([str(tiny_checkpoint), str(deep), "--out", str(tmp_path / "o2"), "--no-progress",
                         "--intensity", "minmax"]) == 0
    unit = rng.random((20, 20)).astype(np.float32)                 # floats in [0, 1]: the converters' rule, not refused
    Image.fromarray(unit, mode="F").save(tmp_path / "unit.tif")
    Image.fromarray(np.rint(unit * 255).astype(np.uint8)).save(tmp_path / "unit8.png")
    assert predict_main([str(tiny_checkpoint), str(tmp_path / "unit.tif"), str(tmp_path / "unit8.png"), "--out",
                         str(tmp_path / "o3"), "--no-progress"]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "o3/unit_mask.png")),
                          np.asarray(Image.open(tmp_path / "o3/unit8_mask.png")))


def test_a_file_name_that_is_not_utf8_is_written_back_as_its_bytes(tiny_checkpoint, tmp_path):
    """A file named with a byte that is not UTF-8 (b'x\\xffy.png'): predict ended in a UnicodeEncodeError
    traceback writing inputs.csv (metrics and evaluate did the same for their CSV files)."""
    import os

    folder = tmp_path / "in"
    folder.mkdir()
    raw = os.fsencode(folder) + b"/x\xffy.png"
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(os.fsdecode(raw))
    out = tmp_path / "out"
    assert predict_main([str(tiny_checkpoint), str(folder), "--out", str(out), "--no-progress"]) == 0
    rows = (out / "inputs.csv").read_bytes().splitlines()
    assert raw + b",x\xffy_mask.png" in rows, rows
    assert os.path.exists(os.fsencode(out) + b"/x\xffy_mask.png")


def test_inputs_csv_names_each_input_by_its_absolute_path(tiny_checkpoint, tmp_path, monkeypatch):
    """inputs.csv kept an input as typed ('in/a.png'), which names the file only from the folder predict ran
    in, not from the output folder or anywhere else: absolute paths (an HDF5 image's file[index] too)."""
    import csv

    (tmp_path / "in").mkdir()
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "in" / "a.png")
    monkeypatch.chdir(tmp_path)
    assert predict_main([str(tiny_checkpoint), "in/a.png", "in/../in", "--out", "out", "--no-progress"]) == 0
    rows = list(csv.reader((tmp_path / "out" / "inputs.csv").open()))[1:]
    assert {r[0] for r in rows} == {str(tmp_path / "in" / "a.png")}, rows


def test_the_summary_counts_in_words(tiny_checkpoint, tmp_path, capsys):
    """predict said "wrote 3 files for 1 images": one image, one volume, in the singular."""
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "a.png")
    assert predict_main([str(tiny_checkpoint), str(tmp_path / "a.png"), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    assert "files for 1 image in" in capsys.readouterr().out
