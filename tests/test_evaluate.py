"""python -m cycleseg.evaluate and the metrics behind it, against independent brute-force computations."""
import json
import math

import numpy as np
import pytest
import torch

from cycleseg.data import phantom
from cycleseg.evaluate import main as evaluate_main
from cycleseg.metrics import ConfusionMatrix, binary_scores


def test_confusion_matrix_by_brute_force():
    g = torch.Generator().manual_seed(0)
    k, ign = 5, 255
    truth = torch.randint(0, k - 1, (3, 9, 11), generator=g)             # class 4 never in the truth
    pred = torch.randint(0, k - 1, (3, 9, 11), generator=g)              # ... nor in the prediction
    truth[torch.rand(3, 9, 11, generator=g) < 0.2] = ign
    cm = ConfusionMatrix(k, ign)
    cm.update(pred[:2], truth[:2])
    cm.update(pred[2:], truth[2:])
    brute = np.zeros((k, k), np.int64)
    for t, p in zip(truth.flatten().tolist(), pred.flatten().tolist()):
        if t != ign:
            brute[t, p] += 1
    assert np.array_equal(cm.mat.numpy(), brute)
    s = cm.summary()
    ious = []
    for c in range(k):
        tp, fp, fn = brute[c, c], brute[:, c].sum() - brute[c, c], brute[c].sum() - brute[c, c]
        if tp + fp + fn == 0:
            assert s["iou"][str(c)] is None and s["dice"][str(c)] is None          # absent: NaN -> null
            continue
        iou = tp / (tp + fp + fn)
        ious.append(iou)
        assert s["iou"][str(c)] == pytest.approx(iou, abs=1e-6)
        assert s["dice"][str(c)] == pytest.approx(2 * iou / (1 + iou), abs=1e-6)
    assert s["iou"]["4"] is None and len(ious) == 4
    assert s["miou"] == pytest.approx(np.mean(ious))                         # NaN left out of the mean
    assert s["miou_no_bg"] == pytest.approx(np.mean(ious[1:]))
    assert s["pixel_acc"] == pytest.approx(np.trace(brute) / brute.sum())


def brute_surface(a):
    """Voxels of a with a 6-neighbour outside a or outside the array."""
    out = []
    for idx in zip(*np.nonzero(a)):
        for axis in range(a.ndim):
            for step in (-1, 1):
                n = list(idx)
                n[axis] += step
                if not 0 <= n[axis] < a.shape[axis] or not a[tuple(n)]:
                    out.append(idx)
                    break
            else:
                continue
            break
    return np.array(out, dtype=np.float64)


def brute_distances(a, b):
    sa, sb = brute_surface(a), brute_surface(b)
    return np.sqrt(((sa[:, None, :] - sb[None, :, :]) ** 2).sum(-1)).min(axis=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_volume_scores_by_brute_force(seed):
    rng = np.random.default_rng(seed)
    truth = np.zeros((5, 8, 9), bool)
    truth[1:4, 2:6, 3:8] = True
    pred = truth.copy()
    pred[rng.random(pred.shape) < 0.15] ^= True                               # flips inside and outside
    s = binary_scores(pred, truth)
    inter, ps, ts = (pred & truth).sum(), pred.sum(), truth.sum()
    assert s["dice"] == pytest.approx(2 * inter / (ps + ts))
    assert s["iou"] == pytest.approx(inter / (ps + ts - inter))
    d_pt, d_tp = brute_distances(pred, truth), brute_distances(truth, pred)
    assert s["hd95"] == pytest.approx(np.percentile(np.hstack((d_pt, d_tp)), 95))
    assert s["asd"] == pytest.approx(d_pt.mean())


def test_volume_scores_empty_prediction_and_absent_structure():
    truth = np.zeros((3, 5, 5), bool)
    truth[1, 1:3, 1:3] = True
    empty = binary_scores(np.zeros_like(truth), truth)
    assert empty["dice"] == 0 and empty["iou"] == 0
    assert math.isnan(empty["hd95"]) and math.isnan(empty["asd"])             # undefined, not 0
    absent = binary_scores(np.zeros_like(truth), np.zeros_like(truth))
    assert all(math.isnan(v) for v in absent.values())


@pytest.fixture
def run_dir(tiny_checkpoint):
    return tiny_checkpoint.parent


def test_evaluate_writes_a_consistent_report(run_dir, capsys):
    assert evaluate_main([str(run_dir / "last.pt"), "--no-progress"]) == 0
    out = run_dir / "eval-val-last"
    report = json.loads((out / "report.json").read_text())
    val_images = phantom.PATIENTS["val"] * phantom.SLICES                     # the built-in data's val split
    assert report["split"] == "val" and report["images"] == val_images and report["step"] == 3
    lines = (out / "confusion.csv").read_text().splitlines()
    names = lines[0].split(",")[1:]
    mat = np.array([[int(v) for v in ln.split(",")[1:]] for ln in lines[1:]])
    assert names == ["background", "RV", "Myo", "LV"] and mat.sum() == val_images * 16 * 16
    for c, name in enumerate(names):                                          # the report from the matrix
        union = mat[c].sum() + mat[:, c].sum() - mat[c, c]
        expect = mat[c, c] / union if union else None
        assert report["slices"]["iou"][name] == (pytest.approx(expect, abs=1e-6) if expect is not None else None)
    assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "mIoU without background (the 2019 code's variant" in printed and "background" in printed


def test_evaluate_acdc_volumes_and_missing_split(tmp_path, monkeypatch, make_acdc, capsys):
    from cycleseg.config import parse_args
    from cycleseg.train import train

    monkeypatch.setenv("CYCLESEG_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "ACDC"
    make_acdc(root, patients=tuple(range(1, 6)), val_patients=(8, 9))
    cfg, _ = parse_args(["--ngf", "4", "--n-blocks", "1", "--ndf", "4", "--image-size", "16", "--batch-size", "2",
                         "--no-progress", "--device", "cpu", "--steps", "2", "--eval-every", "2",
                         "--data", str(root), "--out", str(tmp_path / "run")])
    train(cfg)
    assert evaluate_main([str(tmp_path / "run" / "last.pt"), "--no-progress", "--out", str(tmp_path / "e")]) == 0
    v = json.loads((tmp_path / "e" / "report.json").read_text())["volumes"]
    assert v["count"] == 2 and set(v["per_structure"]) == {"RV", "Myo", "LV"}
    assert set(v["mean"]) == {"dice", "iou", "hd95", "asd"} and "native" in v["resolution"]
    assert len((tmp_path / "e" / "volumes.csv").read_text().splitlines()) == 1 + 2 * 3
    # the same volumes from a file converted from the folder: scored at the file's resolution
    from cycleseg.data.__main__ import main as data_main
    assert data_main(["convert", "acdc", str(root), str(tmp_path / "conv" / "val.h5"), "--split", "val",
                      "--size", "16", "16", "--no-progress"]) == 0
    assert evaluate_main([str(tmp_path / "run" / "last.pt"), "--data", str(tmp_path / "conv"), "--no-progress",
                          "--out", str(tmp_path / "e2")]) == 0
    v2 = json.loads((tmp_path / "e2" / "report.json").read_text())["volumes"]
    assert v2["count"] == 2 and "16x16" in v2["resolution"]
    # a file named by --data is the file scored, not the val.h5 beside it
    import shutil
    shutil.copy(tmp_path / "conv" / "val.h5", tmp_path / "conv" / "mine.h5")
    assert data_main(["convert", "acdc", str(root), str(tmp_path / "conv" / "val.h5"), "--split", "train",
                      "--size", "16", "16", "--no-progress", "--overwrite"]) == 0
    assert evaluate_main([str(tmp_path / "run" / "last.pt"), "--data", str(tmp_path / "conv" / "mine.h5"),
                          "--no-progress", "--out", str(tmp_path / "e4")]) == 0
    r4, r2 = (json.loads((tmp_path / e / "report.json").read_text()) for e in ("e4", "e2"))
    assert r4["data"].endswith("mine.h5") and r4["images"] == r2["images"] and r4["volumes"] == r2["volumes"]
    capsys.readouterr()
    assert evaluate_main([str(tmp_path / "run" / "last.pt"), "--split", "test", "--out", str(tmp_path / "e3")]) == 2
    assert "no test split (it has train, val" in capsys.readouterr().err
    assert not (tmp_path / "e3").exists()


def test_evaluate_errors_name_the_file_and_write_nothing(run_dir, tmp_path, monkeypatch, capsys):
    torch.save({"weights": 1}, tmp_path / "other.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"\x00" * 100)
    for ckpt, message in ((tmp_path / "other.pt", "not a cycleseg checkpoint"),
                          (tmp_path / "corrupt.pt", "could not be read as a checkpoint"),
                          (tmp_path / "none.pt", "no checkpoint at")):
        assert evaluate_main([str(ckpt), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert message in err and str(ckpt) in err
    monkeypatch.setenv("CYCLESEG_CACHE", str(tmp_path / "cache"))
    assert evaluate_main([str(run_dir / "last.pt"), "--data", "shapes", "--out",   # 5 classes, RGB
                          str(tmp_path / "out")]) == 2
    assert "5 classes, but the checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_csv_outputs_quote_names_that_hold_commas():
    """Class, case and volume names come from users' files; confusion.csv, volumes.csv and scores.csv wrote
    them unquoted, so a class "LV, cavity" shifted every column after it."""
    import csv
    import io

    import numpy as np

    from cycleseg import metrics, report

    names = ['LV, cavity', 'say "hi"', "bg"]
    rows = list(csv.reader(io.StringIO(report.confusion_csv(np.arange(9).reshape(3, 3), names))))
    assert rows[0] == ["truth \\ prediction", *names] and rows[1] == ["LV, cavity", "0", "1", "2"]
    per_volume = [{"volume": "case,1", **{k: {"RV, free wall": 0.5} for k in report.STRUCTURE_SCORES}}]
    rows = list(csv.reader(io.StringIO(report.volumes_csv(per_volume, ["RV, free wall"]))))
    assert rows[1] == ["case,1", "RV, free wall", "0.5", "0.5", "0.5", "0.5"]
    result = {"cases": [{"case": "a,b.nii.gz", **{k: {"LV, cavity": None} for k in metrics.SCORES}}],
              "classes": ["LV, cavity"]}
    rows = list(csv.reader(io.StringIO(metrics.scores_csv(result))))
    assert rows[1] == ["a,b.nii.gz", "LV, cavity"] + [""] * len(metrics.SCORES)
