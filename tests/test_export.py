"""python -m cycleseg.export: G_IS as ONNX and as a torch.export program that give the checkpoint's
predictions (onnxruntime and torch.export.load against the eager G_IS, on real ACDC validation images),
at any batch and size, with the preprocessing in their metadata and no cycleseg:: op in their graphs;
predict runs from the .onnx."""
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from PIL import Image

from cycleseg.checkpoint import load_run
from cycleseg.export import model_digest
from cycleseg.data.acdc import cached_splits, read_volume, volume_names
from cycleseg.data.pixels import to_input
from cycleseg.data.source import H5Source
from cycleseg.export import main as export_main
from cycleseg.checkpoint import networks_from_checkpoint
from cycleseg.predict import main as predict_main
from cycleseg.train import main as train_main

REAL_ACDC = Path(__file__).resolve().parents[2] / "shared" / "data" / "ACDC"
pytestmark = pytest.mark.skipif(not REAL_ACDC.exists(), reason="the real ACDC copy lives in ../shared/data/ACDC")


@pytest.fixture(scope="module")
def acdc_checkpoint(tmp_path_factory):
    """G_IS of the CPU preset trained for 60 steps on real ACDC at 32x32 (confident, non-trivial masks)."""
    out = tmp_path_factory.mktemp("acdc") / "run"
    assert train_main(["--mode", "partial", "--data", str(REAL_ACDC), "--image-size", "32", "--steps", "60",
                       "--eval-every", "60", "--no-progress", "--device", "cpu", "--out", str(out)]) == 0
    return out / "last.pt"


def validation_images(size=32, count=64) -> torch.Tensor:
    """Real ACDC validation slices (the converted val split), as network inputs."""
    src = H5Source(cached_splits(REAL_ACDC, size, progress=False, names=("val",))["val"])
    step = max(1, len(src) // count)
    images, _ = src.batch(np.arange(0, len(src), step)[:count])
    return to_input(images)


def eager_logits(ckpt, x):
    _, _, nets = networks_from_checkpoint(load_run(ckpt), ckpt)
    with torch.no_grad():
        return nets["G_IS"].eval()(x)


def compare(got: np.ndarray, want: torch.Tensor):
    want = want.numpy()
    diff = np.abs(got - want).max() / np.abs(want).max()
    agree = (got.argmax(1) == want.argmax(1)).mean()
    return diff, agree


def test_onnx_and_pt2_give_the_checkpoints_predictions(acdc_checkpoint, tmp_path):
    assert export_main([str(acdc_checkpoint), "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.onnx", "last.pt2"]     # no temporary left
    x = validation_images()
    want = eager_logits(acdc_checkpoint, x)
    session = onnxruntime.InferenceSession(str(tmp_path / "last.onnx"), providers=["CPUExecutionProvider"])
    diff, agree = compare(session.run(None, {"x": x.numpy()})[0], want)
    assert diff < 1e-5 and agree >= 0.999, (diff, agree)
    extra = {"cycleseg.json": ""}
    program = torch.export.load(str(tmp_path / "last.pt2"), extra_files=extra)
    with torch.no_grad():
        diff, agree = compare(program.module()(x).numpy(), want)
    assert diff < 1e-5 and agree >= 0.999, (diff, agree)
    meta = json.loads(extra["cycleseg.json"])
    assert meta["channels"] == 1 and meta["num_classes"] == 4 and meta["image_size"] == [32, 32]
    assert meta["class_names"] == ["background", "RV", "Myo", "LV"] and "[-1, 1]" in meta["input"]
    props = {p.key: json.loads(p.value) for p in onnx.load(str(tmp_path / "last.onnx")).metadata_props}
    assert props["cycleseg.palette"] == meta["palette"] and props["cycleseg.num_classes"] == 4


def test_exports_take_any_batch_and_size_and_hold_no_cycleseg_op(acdc_checkpoint, tmp_path):
    assert export_main([str(acdc_checkpoint), "--out", str(tmp_path)]) == 0
    model = onnx.load(str(tmp_path / "last.onnx"))
    assert model.opset_import[0].version >= 17
    assert not [n.op_type for n in model.graph.node if n.domain not in ("", "ai.onnx")]
    program = torch.export.load(str(tmp_path / "last.pt2"))
    assert not [n for n in program.graph.nodes if "cycleseg" in str(n.target)]
    session = onnxruntime.InferenceSession(str(tmp_path / "last.onnx"), providers=["CPUExecutionProvider"])
    for shape in ((1, 1, 48, 40), (5, 1, 64, 64)):
        x = torch.rand(shape) * 2 - 1
        want = eager_logits(acdc_checkpoint, x)
        diff, _ = compare(session.run(None, {"x": x.numpy()})[0], want)
        with torch.no_grad():
            diff_pt2, _ = compare(program.module()(x).numpy(), want)
        assert diff < 1e-5 and diff_pt2 < 1e-5 and want.shape[2:] == shape[2:], (shape, diff, diff_pt2)


@pytest.mark.parametrize("generator, size", [("resnet", 64), ("unet", 64), ("unet", 16)])
def test_the_papers_networks_round_trip(tmp_path, generator, size):
    """ResNet-9 generators of ngf 64 (the paper's), and SSL4MIS's UNet, freshly initialised, exported and run
    (the UNet in eval mode: BatchNorm's running statistics, set to non-trivial values here). A UNet trained
    at its least side, 16, exports too (traced at 16, torch specialized the side: a dynamo traceback)."""
    from cycleseg.config import Config, flat
    from cycleseg.data.h5format import Meta
    from cycleseg.models import data_info, networks_from_config

    cfg = Config(device="cpu", preset="paper", mode="partial", image_size=size, generator=generator).resolved()
    meta = Meta(num_classes=4, class_names=["background", "RV", "Myo", "LV"], palette=[[0, 0, 0]] * 4, channels=1,
                height=size, width=size)
    torch.manual_seed(0)
    nets = networks_from_config(cfg, meta, ("G_IS",))
    for m in nets["G_IS"].modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
    ckpt = tmp_path / "paper.pt"
    torch.save({"config": flat(cfg), "nets": {"G_IS": nets["G_IS"].state_dict()}, "data": data_info(meta),
                "step": 0}, ckpt)
    assert export_main([str(ckpt), "--out", str(tmp_path)]) == 0
    meta_props = {p.key: json.loads(p.value) for p in onnx.load(str(tmp_path / "paper.onnx")).metadata_props}
    multiple, least = (16, 16) if generator == "unet" else (4, 8)
    assert meta_props["cycleseg.generator"] == generator and meta_props["cycleseg.input"].endswith(
        f"multiples of {multiple} of at least {least}")
    session = onnxruntime.InferenceSession(str(tmp_path / "paper.onnx"), providers=["CPUExecutionProvider"])
    program = torch.export.load(str(tmp_path / "paper.pt2")).module()
    # real slices, and the least side the metadata promises (the UNet's bottleneck then 1x1: a .pt2 guarded it away)
    for x in (validation_images(size=64, count=8), torch.rand(3, 1, least, least + multiple) * 2 - 1):
        want = eager_logits(ckpt, x)
        diff, agree = compare(session.run(None, {"x": x.numpy()})[0], want)
        assert diff < 1e-4 and agree >= 0.999, (x.shape, diff, agree)
        with torch.no_grad():
            diff, agree = compare(program(x).numpy(), want)
        assert diff < 1e-4 and agree >= 0.999, (x.shape, diff, agree)


def test_predict_from_the_onnx_file_gives_the_checkpoints_masks(acdc_checkpoint, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    src = H5Source(cached_splits(REAL_ACDC, 32, progress=False, names=("val",))["val"])
    for i, idx in enumerate((3, 40, 80)):
        img = src.batch([idx])[0][0, 0].numpy()
        Image.fromarray(np.asarray(Image.fromarray(img).resize((45, 38)))).save(images / f"{i}.png")
    Image.fromarray(rng.integers(0, 256, (30, 50), dtype=np.uint8)).save(images / "noise.png")
    vol = read_volume(REAL_ACDC, volume_names(REAL_ACDC, "val")[0])[0]          # (z, y, x): a real scan
    nib.save(nib.Nifti1Image(np.round(vol.transpose(2, 1, 0) * 1000).astype(np.int16),
                             np.diag([1.5, 1.5, 10.0, 1.0])), str(images / "scan.nii.gz"))
    assert export_main([str(acdc_checkpoint), "--out", str(tmp_path), "--formats", "onnx"]) == 0
    for model, out in ((acdc_checkpoint, "from_ckpt"), (tmp_path / "last.onnx", "from_onnx")):
        assert predict_main([str(model), str(images), "--out", str(tmp_path / out), "--no-progress"]) == 0
    for name in ("0", "1", "2", "noise"):
        a = np.asarray(Image.open(tmp_path / "from_ckpt" / f"{name}_mask.png"))
        b = np.asarray(Image.open(tmp_path / "from_onnx" / f"{name}_mask.png"))
        assert (a == b).mean() >= 0.999 and Image.open(tmp_path / "from_onnx" / f"{name}_mask.png").mode == "P"
    assert not (tmp_path / "from_onnx" / "0_gsi.png").exists()
    a, b = (np.asanyarray(nib.load(str(tmp_path / d / "scan.nii.gz")).dataobj) for d in ("from_ckpt", "from_onnx"))
    assert a.shape == vol.transpose(2, 1, 0).shape and (a == b).mean() >= 0.999 and len(np.unique(a)) > 1


def test_export_and_onnx_prediction_errors(acdc_checkpoint, tmp_path, capsys, monkeypatch):
    from test_bad_inputs import one_line_error

    assert export_main([str(acdc_checkpoint), "--out", str(tmp_path), "--formats", "onnx"]) == 0
    one_line_error(export_main, [acdc_checkpoint, "--out", tmp_path, "--formats", "onnx"], capsys,
                   "exists already (an earlier export)", tmp_path)
    one_line_error(export_main, [acdc_checkpoint, "--out", tmp_path, "--formats", "tflite"], capsys,
                   "--formats must name some of onnx, pt2", tmp_path)
    one_line_error(export_main, [tmp_path / "none.pt", "--out", tmp_path], capsys, "no checkpoint at", tmp_path)
    bare = onnx.load(str(tmp_path / "last.onnx"))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "a.png")
    one_line_error(predict_main, [tmp_path / "bare.onnx", tmp_path / "a.png", "--out", tmp_path / "o"], capsys,
                   "without cycleseg's metadata", tmp_path)
    foreign = onnx.load(str(tmp_path / "last.onnx"))                    # cycleseg's metadata on another graph
    x = foreign.graph.input[0].name
    del foreign.graph.node[:]
    foreign.graph.node.append(onnx.helper.make_node("Concat", [x, x], [foreign.graph.output[0].name], axis=1))
    del foreign.graph.initializer[:]
    onnx.save(foreign, str(tmp_path / "foreign.onnx"))
    one_line_error(predict_main, [tmp_path / "foreign.onnx", tmp_path / "a.png", "--out", tmp_path / "o", "--no-progress"],
                   capsys, "it is not the model it was exported as (its weights, nodes or metadata were edited", tmp_path)
    without = [p for p in foreign.metadata_props if p.key != "cycleseg.model_sha256"]   # its digest removed: refused
    del foreign.metadata_props[:]
    foreign.metadata_props.extend(without)
    onnx.save(foreign, str(tmp_path / "foreign.onnx"))
    one_line_error(predict_main, [tmp_path / "foreign.onnx", tmp_path / "a.png", "--out", tmp_path / "o", "--no-progress"],
                   capsys, "its metadata holds no model_sha256 (exported by an older cycleseg, or edited)", tmp_path)
    props = {p.key: p.value for p in foreign.metadata_props}         # digested as an export would: the output check
    entry = foreign.metadata_props.add()
    entry.key, entry.value = "cycleseg.model_sha256", json.dumps(model_digest(foreign, props))
    onnx.save(foreign, str(tmp_path / "foreign.onnx"))
    one_line_error(predict_main, [tmp_path / "foreign.onnx", tmp_path / "a.png", "--out", tmp_path / "o", "--no-progress"], capsys,
                   "the model's output is float32 (1, 2, ", tmp_path)
    weights = onnx.load(str(tmp_path / "last.onnx"))                # one weight edited after the export: refused
    w = onnx.numpy_helper.to_array(weights.graph.initializer[0]).copy()
    w.flat[0] += 1.0
    weights.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(w, weights.graph.initializer[0].name))
    onnx.save(weights, str(tmp_path / "weights.onnx"))
    one_line_error(predict_main, [tmp_path / "weights.onnx", tmp_path / "a.png", "--out", tmp_path / "o", "--no-progress"],
                   capsys, "weights.onnx: it is not the model it was exported as", tmp_path)
    sized = onnx.load(str(tmp_path / "last.onnx"))                  # a valid size edited in: the masks changed
    next(p for p in sized.metadata_props if p.key == "cycleseg.image_size").value = json.dumps([12, 20])
    onnx.save(sized, str(tmp_path / "sized.onnx"))
    one_line_error(predict_main, [tmp_path / "sized.onnx", tmp_path / "a.png", "--out", tmp_path / "o", "--no-progress"],
                   capsys, "sized.onnx: it is not the model it was exported as", tmp_path)
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(tmp_path / "last.onnx")).metadata_props}
    assert meta["cycleseg.checkpoint"] == str(acdc_checkpoint.absolute())     # absolute: found from any folder
    for key, value, match in (("channels", 3, "channels 3, the model's input"),
                              ("image_size", [17, 16], "image_size [17, 16], expected [height, width], multiples of 4"),
                              ("class_names", "abc", "class_names 'abc' (expected the 4 classes' names)"),
                              ("ignore_index", "x", "ignore_index 'x'"),
                              ("generator", ["unet"], "generator ['unet'] (expected one of"),
                              ("image_size", [2 ** 20, 16], "and at most 4096")):
        edited = onnx.load(str(tmp_path / "last.onnx"))                 # metadata edited by hand
        next(p for p in edited.metadata_props if p.key == f"cycleseg.{key}").value = json.dumps(value)
        onnx.save(edited, str(tmp_path / "edited.onnx"))
        one_line_error(predict_main, [tmp_path / "edited.onnx", tmp_path / "a.png", "--out", tmp_path / "o",
                                      "--no-progress"], capsys, match, tmp_path)
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)   # as if it were not installed
    one_line_error(predict_main, [tmp_path / "last.onnx", tmp_path / "a.png", "--out", tmp_path / "o"], capsys,
                   "needs onnxruntime: pip install onnxruntime", tmp_path)


def test_export_prints_what_it_wrote_or_one_error_line(tiny_checkpoint, tmp_path):
    """torch.onnx's log lines (torchvision's ops not registered) and FutureWarnings reached the terminal around
    the command's own lines, and an --out that is a file was refused only after the whole export."""
    import subprocess
    import sys

    (tmp_path / "file").write_text("mine")
    done = subprocess.run([sys.executable, "-m", "cycleseg.export", str(tiny_checkpoint), "--out", str(tmp_path / "file")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        f"error: --out {tmp_path / 'file'} is a file, not a folder: nothing exported"], done.stderr
    done = subprocess.run([sys.executable, "-m", "cycleseg.export", str(tiny_checkpoint), "--out", str(tmp_path / "e"),
                           "--formats", "onnx"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr
