"""NIfTI in and out: the three layouts converted (raw ACDC, nnU-Net / Decathlon, image / label pairs), with
unlabeled scans kept as the unlabeled stream's; slices in ITK array order; the patients' splits; label
volumes predicted on the scan's own grid; the bad inputs refused with one line and nothing written."""
import gzip
import json

import h5py
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from cycleseg.data import nifti
from cycleseg.data.__main__ import main as data_main
from cycleseg.data.source import H5Source
from cycleseg.data.streams import make_streams
from cycleseg.predict_nifti import scan_inputs, segment_scan

SPACING = (1.4, 1.6, 8.0)
LEVELS = np.array([0.1, 0.5, 0.3, 0.9])         # the intensity of each class in the synthetic scans


def heart(shape=(24, 20, 5), seed=0):
    """(image int16, labels uint8) of a synthetic short-axis volume (i, j, k): an LV disc in a Myo ring with
    an RV crescent to one side, placed off centre so that a transposed or flipped slice shows."""
    rng = np.random.default_rng(seed)
    i, j = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    lab = np.zeros(shape, np.uint8)
    for k in range(shape[2]):
        ci, cj, r = 9 + k % 2, 8, 3 + (k % 3 == 1)
        d = np.hypot(i - ci, j - cj)
        lab[..., k][d < r + 2] = 2
        lab[..., k][d < r] = 3
        lab[..., k][(np.hypot(i - ci - 6, j - cj) < 4) & (d >= r + 2)] = 1
    img = LEVELS[lab] * 800 + rng.normal(0, 8, shape)
    return np.round(img).astype(np.int16), lab


def affine(spacing=SPACING, origin=(-20.0, 10.0, 30.0)):
    a = np.diag([*spacing, 1.0])
    a[:3, 3] = origin
    return a


def save(path, data, aff=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine() if aff is None else aff), str(path))


def raw_acdc(root, patients=(1, 2, 3, 4, 5), unlabeled=(6,)):
    """A raw ACDC tree: ED / ES frames with _gt labels; `unlabeled` patients have frames without _gt."""
    for p in patients + unlabeled:
        d = root / "training" / f"patient{p:03d}"
        d.mkdir(parents=True)
        (d / "Info.cfg").write_text("ED: 1\nES: 7\nGroup: NOR\nHeight: 180\nNbFrame: 12\n")
        for fr in (1, 7):
            img, lab = heart(seed=p * 10 + fr)
            save(d / f"patient{p:03d}_frame{fr:02d}.nii.gz", img)
            if p not in unlabeled:
                save(d / f"patient{p:03d}_frame{fr:02d}_gt.nii.gz", lab)
        save(d / f"patient{p:03d}_4d.nii.gz", np.stack([heart(seed=p)[0]] * 3, axis=-1))
    return root


def nnunet(root, train=("c1", "c2", "c3", "c4"), test=("t1", "t2")):
    (root).mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "cineMRI"}, "labels": {"background": 0, "RV": 1, "MLV": 2, "LVC": 3},
        "numTraining": len(train), "file_ending": ".nii.gz"}))
    for n, c in enumerate(train + test):
        img, lab = heart(seed=n)
        save(root / ("imagesTr" if c in train else "imagesTs") / f"{c}_0000.nii.gz", img)
        if c in train:
            save(root / "labelsTr" / f"{c}.nii.gz", lab)
    return root


def convert(src, out, *extra):
    return data_main(["convert", "nifti", str(src), str(out), "--size", "16", "16", "--no-progress", *extra])


def test_raw_acdc_is_converted_with_its_patients_unlabeled_scans_and_millimetres(tmp_path):
    src = raw_acdc(tmp_path / "acdc")
    assert convert(src, tmp_path / "all.h5", "--split", "all") == 0
    s = H5Source(tmp_path / "all.h5")
    names = s.meta.volume_names
    assert len(names) == 12 and len(s) == 12 * 5 and s.meta.class_names == nifti.ACDC_CLASSES
    assert len(np.unique(s.groups)) == 6                                # patients are the groups
    info = dict(zip(names, s.meta.volume_info))
    assert info["patient001_frame07"]["spacing"] == list(SPACING) and info["patient001_frame07"]["axis"] == 2
    assert info["patient001_frame07"]["slice_spacing"] == pytest.approx([8.0, 1.6 * 20 / 16, 1.4 * 24 / 16])
    unl = np.isin(s.volumes, [names.index("patient006_frame01"), names.index("patient006_frame07")])
    assert (s.labeled == ~unl).all()                                    # patient 6 has no _gt
    with h5py.File(tmp_path / "all.h5") as f:
        masks = f["masks"][...]
    assert (masks[unl] == 255).all() and set(np.unique(masks[~unl])) == {0, 1, 2, 3}
    # the slices are the volume's k planes transposed (rows along j: ITK / SSL4MIS order), resized
    img, lab = heart(seed=1 * 10 + 7)
    v = names.index("patient001_frame07")
    want = np.stack([np.asarray(Image.fromarray(lab[..., k].T).resize((16, 16), Image.NEAREST)) for k in range(5)])
    assert (masks[s.volumes == v] == want).all()


def test_unlabeled_scans_feed_only_the_unlabeled_stream(tmp_path):
    src = raw_acdc(tmp_path / "acdc")
    assert convert(src, tmp_path / "train.h5", "--split", "train") == 0
    train = H5Source(tmp_path / "train.h5")
    assert 0 < (~train.labeled).sum() < len(train)
    for fraction in (0.3, 0.5, 1.0):
        st = make_streams(train, fraction, 0, 2, unlabeled=True)
        lab, unl = st.loaders["labeled"].order.indices, st.loaders["unlabeled"].order.indices
        st.close()
        assert train.labeled[lab].all() and not np.isin(unl, lab).any()
        assert len(lab) + len(unl) == len(train) and (~train.labeled[unl]).sum() == (~train.labeled).sum()
    assert len(lab) == train.labeled.sum()                              # 100 %: every annotated image


def test_splits_hold_out_labeled_patients_disjointly(tmp_path):
    src = raw_acdc(tmp_path / "acdc", patients=tuple(range(1, 11)), unlabeled=(11,))
    groups = {}
    for split in ("train", "val", "test"):
        assert convert(src, tmp_path / f"{split}.h5", "--split", split) == 0
        s = H5Source(tmp_path / f"{split}.h5")
        groups[split] = {i["group"] for i in s.meta.volume_info}
        if split != "train":
            assert s.labeled.all()
    assert len(groups["val"]) == 1 and len(groups["test"]) == 2 and "patient011" in groups["train"]
    assert not (groups["val"] & groups["test"]) and not (groups["train"] & (groups["val"] | groups["test"]))
    assert len(groups["train"] | groups["val"] | groups["test"]) == 11
    layout = nifti.find_layout(src)                                     # the draw is the same every time
    assert nifti.split_cases(layout.cases, "val") == nifti.split_cases(layout.cases, "val")


def test_nnunet_layout_names_classes_and_keeps_imagests_unlabeled(tmp_path):
    src = nnunet(tmp_path / "Dataset001_Heart")
    assert convert(src, tmp_path / "all.h5", "--split", "all", "--intensity", "minmax") == 0
    s = H5Source(tmp_path / "all.h5")
    assert s.meta.class_names == ["background", "RV", "MLV", "LVC"]
    assert s.meta.volume_names == ["c1", "c2", "c3", "c4", "t1", "t2"]
    assert [bool(s.labeled[s.volumes == v].all()) for v in range(6)] == [True] * 4 + [False] * 2
    assert s.meta.preprocessing["volume_intensity"] == "minmax"


def test_label_files_without_a_scan_are_noted(tmp_path, capsys):
    """A label file whose scan is missing (renamed, not copied) is not converted: the converter says so,
    in either layout, instead of leaving it out without a word."""
    src = nnunet(tmp_path / "Dataset001_Heart")
    img, lab = heart()
    save(src / "labelsTr" / "c9.nii.gz", lab)
    assert convert(src, tmp_path / "all.h5", "--split", "all", "--intensity", "minmax") == 0
    assert f"note: 1 label file(s) without a scan of their name, not converted: {src / 'labelsTr' / 'c9.nii.gz'}" in \
        capsys.readouterr().err
    save(tmp_path / "d" / "images" / "a.nii.gz", img)
    save(tmp_path / "d" / "labels" / "a.nii.gz", lab)
    save(tmp_path / "d" / "labels" / "b.nii.gz", lab)
    assert convert(tmp_path / "d", tmp_path / "p.h5", "--split", "all") == 0
    err = capsys.readouterr().err
    assert "1 label file(s) without a scan of their name, not converted" in err and "b.nii.gz" in err, err


def test_pairs_layout_counts_classes_and_slices_the_thickest_axis(tmp_path):
    img, lab = heart()
    aff = affine(spacing=(8.0, 1.4, 1.6))                               # slices along i this time
    img, lab = img.transpose(2, 0, 1), lab.transpose(2, 0, 1)
    save(tmp_path / "d" / "images" / "a.nii.gz", img, aff)
    save(tmp_path / "d" / "labels" / "a.nii.gz", lab, aff)
    save(tmp_path / "d" / "images" / "b.nii", img, aff)                 # no label: unlabeled
    assert convert(tmp_path / "d", tmp_path / "p.h5", "--split", "all") == 0
    s = H5Source(tmp_path / "p.h5")
    assert s.meta.num_classes == 4 and len(s) == 10 and s.meta.volume_info[0]["axis"] == 0
    assert s.labeled.tolist() == [1] * 5 + [0] * 5
    del s                                                               # its file handle: closed before the edit
    with h5py.File(tmp_path / "p.h5", "r+") as f:                      # a damaged spacing: HD95 NaN, ASD inf
        info = json.loads(f.attrs["volume_info"])
        info[0]["slice_spacing"][0] = 1e308
        f.attrs["volume_info"] = json.dumps(info)
    with pytest.raises(nifti.DataError, match=r"slice_spacing of three positive lengths \(mm, 1e-06 to 10000\)"):
        H5Source(tmp_path / "p.h5")


def test_intensity_rules(capsys):
    v = np.concatenate([np.linspace(0, 100, 1000), [1e6]])             # one hot voxel
    p, m = nifti.normalise(v, "percentile"), nifti.normalise(v, "minmax")
    assert p.max() == 1 and p.min() == 0 and np.median(p) > 0.4         # the outlier is clipped
    assert np.median(m) < 0.001                                         # min-max: squeezed by it
    sparse = np.zeros(10000)                                            # a small bright object in a dark volume:
    sparse[:20] = np.linspace(10, 50, 20)                               # its percentiles were equal, and it read
    capsys.readouterr()                                                 # as black throughout
    q = nifti.normalise(sparse, "percentile", "s.nii.gz")
    assert q.max() == 1 and q[19] == 1 and q[0] == 0.2 and q[100] == 0
    assert "note: s.nii.gz: its 0.5th and 99.5th intensity percentiles are equal (0" in capsys.readouterr().err
    with pytest.raises(nifti.DataError, match="c.nii.gz: every voxel holds 0, a constant volume"):
        nifti.normalise(np.zeros(100), "minmax", "c.nii.gz")


class Oracle:
    """A model that labels each pixel by the class whose intensity level is nearest (the synthetic scans'
    classes are intensity levels): exact, so predict's geometry (slicing, resizing, writing back) shows."""
    channels, num_classes = 1, 4

    def __init__(self, size):
        self.size = size

    def logits(self, images):
        x = images[..., 0].astype(np.float32)[:, None] / 255.0                 # (B, 1, h, w)
        levels = (LEVELS - LEVELS.min()) / (LEVELS.max() - LEVELS.min())
        return -(x - levels[None, :, None, None].astype(np.float32)) ** 2 * 100


@pytest.mark.parametrize("resample", ["logits", "nearest"])
def test_predicted_volumes_lie_on_the_scans_grid(tmp_path, resample):
    img, lab = heart()
    save(tmp_path / "s.nii.gz", img)
    scan = nifti.load(tmp_path / "s.nii.gz")
    exact = segment_scan(Oracle((20, 24)), scan, None, "minmax", resample)   # the scan's own in-plane size
    assert exact.shape == lab.shape and (exact == lab).all()
    small = segment_scan(Oracle((16, 16)), scan, None, "minmax", resample)   # resized there and back
    agree = (small == lab).mean()                                   # tiny structures: boundaries blur at 16 px
    assert small.shape == lab.shape and agree > 0.85 and agree > (small == lab[::-1]).mean() + 0.05


def test_predict_command_writes_label_volumes_with_the_scans_header(tiny_checkpoint, tmp_path, capsys):
    from cycleseg.predict import main as predict_main

    src = raw_acdc(tmp_path / "acdc", patients=(1,), unlabeled=())
    pdir = src / "training" / "patient001"
    assert [n for n, _ in scan_inputs([pdir])] == ["patient001_4d.nii.gz", "patient001_frame01.nii.gz",
                                                    "patient001_frame07.nii.gz"]      # _gt files are labels
    out = tmp_path / "out"
    assert predict_main([str(tiny_checkpoint), str(pdir), "--out", str(out), "--no-progress"]) == 0
    for name in ("patient001_frame01", "patient001_4d"):
        got, scan = nib.load(str(out / f"{name}.nii.gz")), nib.load(str(pdir / f"{name}.nii.gz"))
        assert got.shape == scan.shape and np.allclose(got.affine, scan.affine)
        assert got.get_data_dtype() == np.uint8 and np.asanyarray(got.dataobj).max() < 4
    one = nib.load(str(pdir / "patient001_frame01.nii.gz"))           # one frame stored 4D, (i, j, k, 1)
    nib.save(nib.Nifti1Image(np.asanyarray(one.dataobj)[..., None], one.affine, one.header), str(tmp_path / "one.nii.gz"))
    assert predict_main([str(tiny_checkpoint), str(tmp_path / "one.nii.gz"), "--out", str(tmp_path / "o4"),
                         "--no-progress"]) == 0
    got = nib.load(str(tmp_path / "o4" / "one.nii.gz"))
    assert got.shape == one.shape + (1,) and np.array_equal(np.asanyarray(got.dataobj)[..., 0],
                                                            np.asanyarray(nib.load(str(out / "patient001_frame01.nii.gz")).dataobj))
    before = (out / "patient001_frame01.nii.gz").read_bytes()
    assert predict_main([str(tiny_checkpoint), str(pdir), "--out", str(out), "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err and (out / "patient001_frame01.nii.gz").read_bytes() == before


def bad_cases(tmp_path):
    """{what: (dataset folder, words the message must hold)} of the inputs convert nifti must refuse."""
    img, lab = heart()
    cases = {}

    def pair(name, image, label, aff_img=None, aff_lab=None):
        d = tmp_path / name
        save(d / "images" / "a.nii.gz", image, aff_img)
        if label is not None:
            save(d / "labels" / "a.nii.gz", label, aff_lab)
        return d

    cases["4d"] = (pair("4d", np.stack([img, img], -1), None), "4D")
    cases["shape"] = (pair("shape", img, lab[:-1]), "shape")
    cases["affine"] = (pair("affine", img, lab, aff_lab=affine(origin=(0, 0, 0))), "affine")
    cases["fraction"] = (pair("fraction", img, lab.astype(np.float32) + 0.5), "whole numbers")
    cases["range"] = (pair("range", img, np.where(lab == 3, 300, lab.astype(np.int16))), "outside")
    sheared = affine()
    sheared[0, 1] = 1.0
    cases["shear"] = (pair("shear", img, lab, sheared, sheared), "orthogonal")
    d = pair("corrupt", img, lab)
    data = (d / "images" / "a.nii.gz").read_bytes()
    (d / "images" / "a.nii.gz").write_bytes(data[:len(data) // 2])             # truncated
    cases["corrupt"] = (d, "not a readable NIfTI")
    (tmp_path / "empty" / "images").mkdir(parents=True)
    cases["empty"] = (tmp_path / "empty", "no NIfTI volumes")
    stray = lab.copy()
    stray[0, 0, 0] = 200                                                # one stray voxel: 201 classes
    cases["stray"] = (pair("stray", img, stray), "4, 5, 6, 7, 8 never appear below 200 (1 voxels")
    cases["complex"] = (pair("complex", img.astype(np.complex64), lab), "voxels of type complex64; expected real")
    d = pair("zero-pixdim", img, lab)                                # no sform: nibabel read pixdim 0 as 1 mm
    for name in ("images", "labels"):
        zero = nib.Nifti1Image(img if name == "images" else lab, None)
        zero.header.set_zooms((0.0, 1.5, 8.0))
        zero.header.set_sform(None, code=0), zero.header.set_qform(None, code=0)
        nib.save(zero, str(d / name / "a.nii.gz"))
    cases["zero pixdim"] = (d, "voxel sizes (pixdim) are [0.0, 1.5, 8.0]; expected three positive lengths")
    nan = affine()
    nan[1, 3] = np.nan
    cases["nan origin"] = (pair("nan-origin", img, lab, nan, nan), "its affine holds NaN or infinite values (1 of 16)")
    huge = affine((1e30, 1.5, 8.0))                                   # its HD95 read 8.9e30 mm
    cases["huge spacing"] = (pair("huge", img, lab, huge, huge), "and at most 10000 mm")
    tiny = affine((1e-30, 1e-30, 1e-30))                             # its HD95 and ASD read 0.0 mm
    cases["tiny spacing"] = (pair("tiny", img, lab, tiny, tiny), "voxel spacings [1e-30, 1e-30, 1e-30]; expected three "
                             "positive lengths of at least 1e-06")
    wide = affine((9000.0, 9500.0, 8.0))                 # sliced along j; rows 9000 mm x 24 / 16 pixels: beyond it
    cases["wide pixels"] = (pair("wide", img, lab, wide, wide), "its stored pixels would be 1.35e+04 mm wide")
    cases["empty axis"] = (pair("empty-axis", np.zeros((4, 0, 8), np.float32), None),    # was "a 1D image"
                           "a.nii.gz: an empty image of shape (4, 0, 8) (an axis of length 0")
    cases["constant"] = (pair("constant", np.full_like(img, 7), lab), "a.nii.gz: every voxel holds 7, a constant volume")
    twice = raw_acdc(tmp_path / "twice", patients=(1,), unlabeled=())    # which ES frame: not told
    (twice / "training" / "patient001" / "Info.cfg").write_text("ED: 1\nES: 7\nGroup: NOR\nES: 3\n")
    cases["info twice"] = (twice, "Info.cfg, line 4: ES is given twice ('7', then '3')")
    return cases


def test_bad_inputs_give_one_line_and_write_nothing(tmp_path, capsys):
    for what, (src, words) in bad_cases(tmp_path).items():
        out = tmp_path / f"{what}.h5"
        assert convert(src, out, "--split", "all") == 2, what
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and words in err, (what, err)
        assert not out.exists() and not list(tmp_path.glob(f".{what}.h5.tmp*")), what


def test_gzip_garbage_and_missing_nibabel_are_named(tmp_path, monkeypatch):
    p = tmp_path / "x.nii.gz"
    p.write_bytes(gzip.compress(b"not a nifti header" * 30))
    with pytest.raises(nifti.DataError, match="x.nii.gz: not a readable NIfTI"):
        nifti.load(p)
    monkeypatch.setitem(__import__("sys").modules, "nibabel", None)
    with pytest.raises(nifti.DataError, match=r"pip install -e \"\.\[medical\]\""):
        nifti.load(p)


def test_metrics_command_scores_in_millimetres_as_medpy(tmp_path, capsys):
    from medpy.metric import binary as medpy

    from cycleseg.metrics import main as metrics_main

    rng = np.random.default_rng(1)
    spacing = (0.9, 1.7, 6.0)
    want = {}
    for n in range(3):
        _, truth = heart(seed=n)
        pred = truth.copy()
        pred[rng.random(pred.shape) < 0.05] = rng.integers(0, 4)          # some wrong voxels
        pred = np.roll(pred, n, axis=0)
        save(tmp_path / "ref" / f"case{n}_gt.nii.gz", truth, affine(spacing))
        save(tmp_path / "pred" / f"case{n}_0000.nii.gz", pred, affine(spacing))
        want[f"case{n}"] = {c: (medpy.dc(pred == c, truth == c), medpy.hd95(pred == c, truth == c, voxelspacing=spacing),
                                medpy.asd(pred == c, truth == c, voxelspacing=spacing)) for c in (1, 2, 3)}
    assert metrics_main([str(tmp_path / "pred"), str(tmp_path / "ref"), "--classes", "bg", "RV", "Myo", "LV",
                         "--out", str(tmp_path / "s")]) == 0
    got = json.loads((tmp_path / "s" / "scores.json").read_text())
    assert got["units"] == "mm" and len(got["cases"]) == 3
    for case in got["cases"]:
        for c, name in ((1, "RV"), (2, "Myo"), (3, "LV")):
            dc, hd, asd = want[case["case"]][c]
            assert case["dice"][name] == pytest.approx(dc, abs=1e-6)
            assert case["hd95"][name] == pytest.approx(hd, abs=1e-5) and case["asd"][name] == pytest.approx(asd, abs=1e-5)
    assert (tmp_path / "s" / "scores.csv").read_text().count("\n") == 1 + 3 * 3
    moved = affine(spacing)
    moved[0, 3] += 5.0                                                    # a prediction 5 mm off the reference
    save(tmp_path / "pred" / "case1_0000.nii.gz", truth, moved)
    assert metrics_main([str(tmp_path / "pred"), str(tmp_path / "ref"), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "case1_0000.nii.gz: prediction affine differs from its reference's" in err and "by up to 5 mm" in err, err
    save(tmp_path / "pred" / "case1_0000.nii.gz", truth, affine(spacing))
    (tmp_path / "pred" / "case2_0000.nii.gz").unlink()                   # a reference without a prediction
    save(tmp_path / "blank" / "case0_gt.nii.gz", np.zeros_like(truth), affine(spacing))
    assert metrics_main([str(tmp_path / "pred"), str(tmp_path / "blank"), "--out", str(tmp_path / "b")]) == 2
    assert "hold background (0) only" in capsys.readouterr().err
    assert metrics_main([str(tmp_path / "pred"), str(tmp_path / "ref"), "--out", str(tmp_path / "t")]) == 2
    assert "no prediction for case2" in capsys.readouterr().err and not (tmp_path / "t").exists()
    assert metrics_main([str(tmp_path / "ref"), str(tmp_path / "ref"), "--out", str(tmp_path / "u")]) == 2
    assert "is both a prediction and a reference" in capsys.readouterr().err     # was Dice 1.0, exit 0


def test_evaluate_measures_converted_volumes_in_millimetres(tiny_checkpoint, tmp_path):
    from cycleseg.evaluate import file_volumes, summarize_volumes
    from cycleseg.checkpoint import networks_from_checkpoint
    from cycleseg.checkpoint import load_run

    assert convert(raw_acdc(tmp_path / "acdc", patients=(1, 2), unlabeled=(3,)), tmp_path / "v.h5", "--split",
                   "all") == 0
    src = H5Source(tmp_path / "v.h5")
    _, _, nets = networks_from_checkpoint(load_run(tiny_checkpoint), tiny_checkpoint)
    vols = list(file_volumes(nets["G_IS"], src, "cpu"))
    assert [v[0] for v in vols] == ["patient001_frame01", "patient001_frame07", "patient002_frame01",
                                    "patient002_frame07"]                 # the unlabeled patient is not scored
    assert vols[0][3] == pytest.approx((8.0, 1.6 * 20 / 16, 1.4 * 24 / 16))
    assert summarize_volumes(vols, nifti.ACDC_CLASSES[1:])["distance_units"] == "mm"


def test_nnunet_channel_count_is_checked(tmp_path, capsys):
    src = nnunet(tmp_path / "d", train=("c1", "c2"), test=())
    ds = json.loads((src / "dataset.json").read_text())
    ds["channel_names"] = {"0": "T2", "1": "ADC"}
    (src / "dataset.json").write_text(json.dumps(ds))
    assert convert(src, tmp_path / "x.h5", "--split", "all") == 2
    assert "channel files [0], but dataset.json names 2 channel(s)" in capsys.readouterr().err


def test_metrics_says_how_it_counted_the_classes(tmp_path, capsys):
    """References without their top class (no LV drawn in any) and a prediction that has it: refused as
    "outside the class ids 0..2" with no word of --num-classes; now the message says the classes were
    counted from the references and how to give K."""
    from cycleseg.metrics import main as metrics_main

    _, truth = heart(seed=0)
    save(tmp_path / "ref" / "a.nii.gz", np.where(truth == 3, 0, truth).astype(truth.dtype))
    save(tmp_path / "pred" / "a.nii.gz", truth)
    capsys.readouterr()
    assert metrics_main([str(tmp_path / "pred"), str(tmp_path / "ref"), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert ("outside the class ids 0..2; the classes were counted from the references (their largest label + 1 = 3): "
            "if a class is absent from every reference, pass --num-classes K") in err, err
    assert metrics_main([str(tmp_path / "pred"), str(tmp_path / "ref"), "--out", str(tmp_path / "s"),
                         "--num-classes", "4"]) == 0


def test_metrics_refuses_a_reference_label_beyond_the_class_ids(tmp_path, capsys):
    """A reference holding 10^9 made metrics count 10^9 classes (the machine ran out of memory); one holding
    300 beside a prediction with 300 was blamed on the prediction: the reference named, in one line."""
    from cycleseg.metrics import main as metrics_main

    _, truth = heart(seed=0)
    (tmp_path / "ref").mkdir()
    nib.save(nib.Nifti1Image(truth.astype(np.int64) * 1_000_000_000, affine(), dtype=np.int64),
             str(tmp_path / "ref" / "a.nii.gz"))
    save(tmp_path / "pred" / "a.nii.gz", truth)
    capsys.readouterr()
    assert metrics_main([str(tmp_path / "pred"), str(tmp_path / "ref"), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{tmp_path / 'ref' / 'a.nii.gz'}: label value 3e+09" in err, err
    save(tmp_path / "ref" / "a.nii.gz", np.where(truth == 3, 300, truth.astype(np.uint16)))
    save(tmp_path / "pred" / "a.nii.gz", np.where(truth == 3, 300, truth.astype(np.uint16)))
    assert metrics_main([str(tmp_path / "pred"), str(tmp_path / "ref"), "--out", str(tmp_path / "s"),
                         "--num-classes", "4"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'ref' / 'a.nii.gz'}: label value 300" in err, err


@pytest.mark.parametrize("edit, words", [
    ({"channel_names": "MRI"}, "'channel_names' must map channel numbers to names, got 'MRI'"),
    ({"labels": ["background", "a", "b"]}, "'labels' must map names to ids (or ids to names), got a JSON list"),
    ({"file_ending": None}, "'file_ending' must be .nii.gz or .nii (NIfTI scans), got None"),
    ({"file_ending": ""}, "'file_ending' must be .nii.gz or .nii (NIfTI scans), got ''"),
    ({"labels": {"background": 0, "whole": [1, 2]}}, "'labels' gives 'whole' as a region ([1, 2]); nnU-Net's region"),
    (None, "dataset.json: a JSON list, where nnU-Net's dataset.json is an object"),
])
def test_a_malformed_nnunet_dataset_json_is_one_line(tmp_path, capsys, edit, words):
    """channel_names as a string, labels as a list, file_ending null and a top-level list gave tracebacks; an
    empty file_ending blamed labelsTr; region labels were refused without saying regions are unsupported."""
    root = nnunet(tmp_path / "nn")
    ds = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps([1, 2] if edit is None else {**ds, **edit}))
    capsys.readouterr()
    assert convert(root, tmp_path / "o.h5", "--split", "all") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and words in err, err


def test_convert_and_info_give_the_same_class_shares(tmp_path, capsys):
    """convert printed each class's share of the labeled pixels (NIfTI: of the labeled scans' pixels) where
    info prints its share of all pixels, so the same file read 40 % and 31 %: both now print info's lines,
    an unlabeled scan's pixels counted as ignored."""
    src = raw_acdc(tmp_path / "acdc")
    capsys.readouterr()
    assert convert(src, tmp_path / "all.h5", "--split", "all") == 0
    converted = capsys.readouterr().out
    shares = converted[converted.index("class pixels:"):]
    assert data_main(["info", str(tmp_path / "all.h5")]) == 0
    assert shares in capsys.readouterr().out
    ignored = float(shares.split("ignored")[1].split("%")[0])
    assert ignored == pytest.approx(100 * 2 / 12, abs=0.01)            # patient 6's two scans, 2 of 12 volumes


def test_channel_on_one_channel_cases_is_refused(tmp_path, capsys):
    """convert nifti --channel 0 on plain 3D scans was taken without a word (there is no channel to choose;
    the other options convert nifti has no use for are refused)."""
    src = raw_acdc(tmp_path / "acdc", patients=(1, 2), unlabeled=())
    capsys.readouterr()
    assert convert(src, tmp_path / "o.h5", "--split", "all", "--channel", "0") == 2
    err = capsys.readouterr().err
    assert "--channel 0: the cases of" in err and "have one channel, nothing to choose from" in err, err
    assert not (tmp_path / "o.h5").exists()
    assert convert(src, tmp_path / "o.h5", "--split", "all") == 0


def test_metrics_matches_each_reference_by_its_own_name(tmp_path, capsys):
    """A reference b.nii.gz beside a_gt.nii.gz was dropped as "raw ACDC's image" and its empty prediction went
    unscored: mean Dice 1.0, exit 0. Any _NNNN was taken for nnU-Net's channel suffix: amos_0002 was scored
    against amos_0001 (exit 0), and img_0001 / img_0002 were refused as one volume. Now a reference is
    dropped only beside its own _gt (or as the 4D series), and _0000 is dropped only where it names a
    reference."""
    from cycleseg.metrics import main as metrics_main

    _, truth = heart(seed=0)
    empty = np.zeros_like(truth)
    save(tmp_path / "m3" / "ref" / "a_gt.nii.gz", truth)
    save(tmp_path / "m3" / "ref" / "b.nii.gz", truth)
    save(tmp_path / "m3" / "pred" / "a.nii.gz", truth)
    save(tmp_path / "m3" / "pred" / "b.nii.gz", empty)
    assert metrics_main([str(tmp_path / "m3" / "pred"), str(tmp_path / "m3" / "ref"), "--out", str(tmp_path / "s3")]) == 0
    got = json.loads((tmp_path / "s3" / "scores.json").read_text())
    assert {c["case"]: c["dice"]["1"] for c in got["cases"]} == {"a": 1.0, "b": 0.0} and got["unscored"] == []
    save(tmp_path / "m4" / "ref" / "amos_0001.nii.gz", truth)
    save(tmp_path / "m4" / "pred" / "amos_0002.nii.gz", truth)
    capsys.readouterr()
    assert metrics_main([str(tmp_path / "m4" / "pred"), str(tmp_path / "m4" / "ref"), "--out", str(tmp_path / "s4")]) == 2
    assert "no prediction for amos_0001" in capsys.readouterr().err
    for n in (1, 2):
        save(tmp_path / "m2" / "ref" / f"img_000{n}.nii.gz", truth)
        save(tmp_path / "m2" / "pred" / f"img_000{n}.nii.gz", truth if n == 1 else empty)
    save(tmp_path / "m2" / "pred" / "c_0000.nii.gz", truth)             # nnU-Net's scan name, for reference c
    save(tmp_path / "m2" / "ref" / "c.nii.gz", truth)
    assert metrics_main([str(tmp_path / "m2" / "pred"), str(tmp_path / "m2" / "ref"), "--out", str(tmp_path / "s2")]) == 0
    got = json.loads((tmp_path / "s2" / "scores.json").read_text())
    assert {c["case"]: c["dice"]["1"] for c in got["cases"]} == {"img_0001": 1.0, "img_0002": 0.0, "c": 1.0}
    raw = tmp_path / "raw" / "patient001"                              # raw ACDC: frames beside their _gt, the 4D series
    save(raw / "patient001_frame01.nii.gz", truth.astype(np.float32))
    save(raw / "patient001_frame01_gt.nii.gz", truth)
    save(raw / "patient001_4d.nii.gz", np.stack([truth, truth], -1).astype(np.float32))
    save(tmp_path / "rawpred" / "patient001_frame01.nii.gz", truth)
    assert metrics_main([str(tmp_path / "rawpred"), str(tmp_path / "raw"), "--out", str(tmp_path / "s5")]) == 0
    assert [c["case"] for c in json.loads((tmp_path / "s5" / "scores.json").read_text())["cases"]] == ["patient001_frame01"]


def test_scans_in_another_voxel_order_are_noted_by_convert_and_predict(tmp_path, capsys):
    """Scans are sliced in stored voxel order, not reoriented: a dataset mixing orders (RAS and LAS: i runs
    right to left in one) converted without a word into slices mirrored against each other, and predict cut
    a scan stored otherwise than the training scans without a word. The converter records the order of its
    cases and notes a mix; predict notes a scan stored in another order than the training data's."""
    from cycleseg.predict_nifti import predict_scans

    src = raw_acdc(tmp_path / "acdc", patients=(1, 2, 3), unlabeled=())
    flipped = affine()
    flipped[0, 0] = -flipped[0, 0]                                  # LAS
    for f in (src / "training" / "patient003").glob("patient003_frame*.nii.gz"):
        one = nib.load(str(f))
        nib.save(nib.Nifti1Image(np.asanyarray(one.dataobj)[::-1], flipped), str(f))
    capsys.readouterr()
    assert convert(src, tmp_path / "all.h5", "--split", "all") == 0
    assert "the cases are stored in 2 voxel orders (RAS: 4, LAS: 2); slices are cut as stored" in capsys.readouterr().err
    pre = H5Source(tmp_path / "all.h5").meta.preprocessing
    assert pre["voxel_order"] == "RAS"
    inputs = [("p1.nii.gz", src / "training" / "patient001" / "patient001_frame01.nii.gz"),
              ("p3.nii.gz", src / "training" / "patient003" / "patient003_frame01.nii.gz")]
    files = predict_scans(Oracle((16, 16)), inputs, {"preprocessing": pre})
    err = capsys.readouterr().err
    assert len(files) == 2 and err.count("note:") == 1, err
    assert "1 scan(s) stored in voxel order LAS, the training scans in RAS (first: " in err and "patient003" in err
    predict_scans(Oracle((16, 16)), inputs[:1], {"preprocessing": pre})
    assert "note" not in capsys.readouterr().err


def test_a_split_the_holdout_leaves_empty_and_options_split_all_does_not_read_are_refused(tmp_path, capsys):
    """--holdout 0.0 0.95 of 10 patients left train no labeled patient: "pass --num-classes K" was advised, and
    following it wrote an .h5 of no datasets (exit 0) that no reader takes. --split all with --holdout or
    --split-seed ignored them without a word. Each refused, nothing written."""
    src = raw_acdc(tmp_path / "acdc", patients=tuple(range(1, 11)), unlabeled=())
    for extra, words in ((["--split", "train", "--holdout", "0.0", "0.95"], "the train split holds no labeled "
                          "patient: --holdout 0.0 0.95 holds out all 10 fully labeled patients"),
                         (["--split", "train", "--holdout", "0.0", "0.95", "--num-classes", "4"], "holds no labeled"),
                         (["--split", "all", "--holdout", "0.3", "0.3"], "--holdout: --split all writes every case"),
                         (["--split", "all", "--split-seed", "5"], "--split-seed: --split all writes every case")):
        capsys.readouterr()
        assert convert(src, tmp_path / "o.h5", *extra) == 2, extra
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and words in err, (extra, err)
        assert not (tmp_path / "o.h5").exists()


def test_metrics_says_where_the_class_count_came_from(tmp_path, capsys):
    """metrics --classes bg a on references holding label 2 said "outside the class ids 0..1" without saying
    that --classes set two classes: the error now names it."""
    from cycleseg.metrics import main as metrics_main

    _, lab = heart()
    save(tmp_path / "ref" / "c_gt.nii.gz", lab)
    save(tmp_path / "pred" / "c.nii.gz", lab)
    capsys.readouterr()
    assert metrics_main([str(tmp_path / "pred"), str(tmp_path / "ref"), "--classes", "bg", "a", "--out",
                         str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "outside the class ids 0..1; 2 classes were given (--num-classes, or the names --classes lists)" in err
