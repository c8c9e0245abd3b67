"""Training straight from an SSL4MIS ACDC folder: the patient protocol and per-volume evaluation."""
from pathlib import Path

import numpy as np
import pytest
import torch

from cycleseg.config import parse_args
from cycleseg.data.acdc import cached_splits
from cycleseg.data.streams import make_streams
from cycleseg.data.source import H5Source
from cycleseg.evaluate import volume_scores
from cycleseg.runfolder import RunFolder
from cycleseg.train import train

REAL_ACDC = Path(__file__).resolve().parents[2] / "shared" / "data" / "ACDC"
TINY_ACDC = ["--ngf", "4", "--n-blocks", "1", "--ndf", "4", "--image-size", "16", "--batch-size", "2",
             "--no-progress", "--device", "cpu", "--preset", "cpu"]


def test_volume_scores_by_hand():
    label = np.zeros((2, 4, 4), np.uint8)
    label[0, :2, :2] = 1                                              # 4 voxels of class 1
    pred = np.zeros_like(label)
    pred[0, :2, :1] = 1                                               # 2 of them found
    s = volume_scores(pred, label)
    assert s["dice"][0] == pytest.approx(2 * 2 / (2 + 4)) and s["iou"][0] == pytest.approx(2 / 4)
    assert np.isnan(s["dice"][1]) and np.isnan(s["iou"][2])           # absent classes
    assert not np.isnan(s["hd95"][0]) and np.isnan(s["hd95"][1])


def counts(path, fraction):
    """(labeled, unlabeled) image counts of the streams a semi run at `fraction` draws from `path`."""
    streams = make_streams(H5Source(path), fraction, seed=0, batch_size=2, unlabeled=True)
    streams.close()
    return streams.num_labeled, streams.num_unlabeled


def test_protocol_first_patients_and_volume_metrics(tmp_path, monkeypatch, make_acdc):
    monkeypatch.setenv("CYCLESEG_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "ACDC"
    make_acdc(root, patients=tuple(range(1, 11)))                     # 10 patients x 2 slices
    cfg, _ = parse_args(TINY_ACDC + ["--data", str(root), "--labeled-fraction", "0.3", "--steps", "2",
                                     "--eval-every", "2", "--out", str(tmp_path / "run")])
    result = train(cfg)
    assert result["volumes"] == 1 and set(result["volume_dice"]) == {"RV", "Myo", "LV"}
    assert 0 <= result["volume_mdice"] <= 1
    assert "volume_mdice" in RunFolder(tmp_path / "run").records("val")[-1]
    ck = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert ck["config"]["data"] == str(root)
    # the labeled slices are those of the first 3 patients in list order (SSL4MIS protocol), chosen by
    # the converted file's labeled_subset attribute
    train_h5 = cached_splits(root, 16)["train"]
    assert H5Source(train_h5).meta.labeled_subset == "first_groups"
    assert counts(train_h5, 0.3) == (6, 14)
    lab = make_streams(H5Source(train_h5), 0.3, 0, 2, False).loaders["labeled"].order.indices
    assert list(H5Source(train_h5).groups[lab]) == [1, 1, 2, 2, 3, 3]


@pytest.mark.slow
@pytest.mark.skipif(not REAL_ACDC.exists(), reason="the real ACDC copy lives in ../shared/data/ACDC")
def test_real_acdc_trains_and_evaluates(tmp_path, monkeypatch):
    monkeypatch.setenv("CYCLESEG_CACHE", str(tmp_path / "cache"))
    cfg, _ = parse_args(TINY_ACDC + ["--data", str(REAL_ACDC), "--labeled-fraction", "0.1", "--steps", "3",
                                     "--eval-every", "3", "--out", str(tmp_path / "run"), "--image-size", "32"])
    result = train(cfg)
    assert result["volumes"] == 20 and 0 <= result["volume_mdice"] <= 1
    assert set(result["iou"]) == {"background", "RV", "Myo", "LV"}
    src = H5Source(cached_splits(REAL_ACDC, 32)["train"])
    assert len(src) == 1312 and len(np.unique(src.groups)) == 70
    assert counts(src.path, 0.1)[0] == 136                            # 7 patients = 136 slices (10 %)


def test_a_replaced_acdc_folder_is_converted_again(tmp_path, make_acdc, capsys):
    """The converted splits are cached by the folder's path; another folder put at that path (or a file of
    it edited) is converted again, with a note, instead of training and scoring on the old conversion."""
    import shutil

    from cycleseg.data import acdc
    from cycleseg.data.source import H5Source

    root = tmp_path / "ACDC"
    make_acdc(root)
    first = H5Source(acdc.cached_splits(root, 16, False)["train"]).fingerprint()
    capsys.readouterr()
    assert H5Source(acdc.cached_splits(root, 16, False)["train"]).fingerprint() == first
    assert "writing it again" not in capsys.readouterr().err         # the same folder: the cache is used
    shutil.rmtree(root)
    make_acdc(root)                                                 # other images at the same path
    paths = acdc.cached_splits(root, 16, False)
    assert "its source changed" in capsys.readouterr().err
    assert H5Source(paths["train"]).fingerprint() != first
    paths["train"].with_name("train.h5.sha256").write_text("")      # an emptied checksum file: written again
    acdc.cached_splits(root, 16, False)
    assert "no checksum" in capsys.readouterr().err
