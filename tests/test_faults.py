"""Runs that go wrong: NaN losses, stop signals, kill -9 at any moment, bad checkpoints, full disks,
unwritable folders, impossible batch sizes. Each ends in a clear message and loses nothing."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from cycleseg.checkpoint import CheckpointError
from cycleseg.data.h5format import DataError
from cycleseg.faults import NonFiniteLoss
from cycleseg.runfolder import RunFolder
from cycleseg.train import main, train

TINY_ARGS = ["--ngf", "4", "--n-blocks", "1", "--ndf", "4", "--image-size", "16", "--batch-size", "2",
             "--no-progress", "--device", "cpu", "--preset", "cpu"]


def test_nan_loss_stops_with_step_and_term(tiny, tmp_path, monkeypatch):
    import cycleseg.steps as steps

    real, calls = steps.supervised_objective, []

    def poisoned(*a, **k):
        loss, terms = real(*a, **k)
        calls.append(1)
        if len(calls) == 3:                                         # the third step diverges
            loss = loss * float("nan")
            terms = {"gen_seg": loss.detach()}
        return loss, terms

    monkeypatch.setattr(steps, "supervised_objective", poisoned)
    with pytest.raises(NonFiniteLoss, match=r"step 3: the loss term gen_seg is NaN or infinite"):
        train(tiny("nan", "--mode", "partial", "--steps", "8", "--log-every", "4", "--ckpt-every", "2",
                   "--eval-every", "100"))
    ck = torch.load(tmp_path / "nan" / "last.pt", weights_only=True)
    assert ck["step"] == 2                                          # the last good checkpoint, untouched
    assert all(torch.isfinite(v).all() for v in ck["nets"]["G_IS"].values())


def test_checkpoint_of_other_networks_or_data_is_refused_before_training(tiny, tmp_path):
    train(tiny("r", "--steps", "2", "--eval-every", "2"))
    last = tmp_path / "r" / "last.pt"
    good = torch.load(last, weights_only=True)
    bad = dict(good, data=dict(good["data"], num_classes=21))
    torch.save(bad, last)
    with pytest.raises(CheckpointError, match="trained on data with 21 num classes"):
        train(tiny("r", "--steps", "4", "--eval-every", "4", "--resume"))
    bad = dict(good, config=dict(good["config"], ngf=2 * good["config"]["ngf"]))   # other widths than its weights
    torch.save(bad, last)
    with pytest.raises(CheckpointError, match="does not match this run's networks"):
        train(tiny("r", "--steps", "4", "--eval-every", "4", "--resume"))
    (tmp_path / "r" / "last.pt").write_bytes(b"PK\x03\x04 half a zip")
    with pytest.raises(CheckpointError, match="could not be read"):
        train(tiny("r", "--steps", "4", "--eval-every", "4", "--resume"))


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tiny, tmp_path, monkeypatch):
    train(tiny("d", "--steps", "4", "--eval-every", "100"), until=2)   # stopped after step 2
    before = (tmp_path / "d" / "last.pt").read_bytes()
    import cycleseg.checkpoint as ckpt

    def full(state, f):
        f.write(b"x" * 1000)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", full)
    with pytest.raises(OSError, match=r"could not write .*(last|best).pt \(No space left on device\); the previous"):
        train(tiny("d", "--steps", "4", "--eval-every", "100", "--resume"))
    assert (tmp_path / "d" / "last.pt").read_bytes() == before
    assert not [p for p in (tmp_path / "d").iterdir() if ".tmp" in p.name]


def test_unwritable_folder_and_impossible_batch_are_clear_errors(tiny_argv, tmp_path, capsys):
    (tmp_path / "file").write_text("a file, not a folder")
    assert main(tiny_argv("file/run", "--steps", "2")) == 2
    assert "cannot write the run folder" in capsys.readouterr().err
    assert main(tiny_argv("b", "--steps", "2", "--batch-size", "200", "--labeled-fraction", "0.1")) == 2
    assert "--batch-size 200 is larger than the labeled subset (100 images" in capsys.readouterr().err


def test_tiny_fraction_still_selects_images():
    import numpy as np
    from cycleseg.data.stream import labeled_subset
    assert len(labeled_subset(1000, 0.0001, seed=0)) == 1
    groups = np.repeat(np.arange(70), 3)
    assert len(labeled_subset(len(groups), 0.001, 0, groups, first_groups=True)) == 3


def run_cli(out, *extra, env=None):
    """The training command in a subprocess (the real entry point: signals, exit codes, files)."""
    cmd = [sys.executable, "-m", "cycleseg.train", *TINY_ARGS, "--out", str(out), *extra]
    return subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for(predicate, timeout=120):
    t0 = time.time()
    while not predicate():
        if time.time() - t0 > timeout:
            raise TimeoutError
        time.sleep(0.02)


def train_records(out):
    return [{k: v for k, v in r.items() if k != "time"} for r in RunFolder(out).records("train")]


@pytest.mark.slow
def test_sigterm_saves_and_says_how_to_resume(tmp_path):
    out = tmp_path / "t"
    p = run_cli(out, "--steps", "400", "--log-every", "1", "--eval-every", "1000", "--ckpt-every", "1000")
    wait_for(lambda: len(RunFolder(out).records("train")) >= 3)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM
    assert "stopped by signal SIGTERM after step" in err and "--resume --out" in err
    ck = torch.load(out / "last.pt", weights_only=True)
    assert 3 <= ck["step"] < 400 and ck["step"] == train_records(out)[-1]["step"]


@pytest.mark.slow
def test_kill_9_anywhere_then_resume_gives_the_same_run(tmp_path):
    """SIGKILL at three moments (inside a checkpoint write twice, between steps once); each time the run
    resumes from the last complete checkpoint and ends exactly like a run that was never killed."""
    args = ["--steps", "12", "--log-every", "1", "--eval-every", "100", "--ckpt-every", "2", "--pool-size", "3"]
    straight = tmp_path / "straight"
    assert run_cli(straight, *args).wait(timeout=300) == 0
    out = tmp_path / "killed"
    slow = {"CYCLESEG_SLOW_WRITE_FOR_TESTS": "0.3"}
    for kill_at in ("writing", "writing", "between"):
        p = run_cli(out, *args, *(["--resume"] if (out / "last.pt").exists() else []), env=slow)
        if kill_at == "writing":                                    # a temporary checkpoint file exists
            wait_for(lambda: any(".last.pt.tmp" in f.name for f in out.glob(".*")) if out.exists() else False)
        else:
            start = len(RunFolder(out).records("train"))
            wait_for(lambda: len(RunFolder(out).records("train")) > start + 1)
        p.kill()
        p.wait()
        assert torch.load(out / "last.pt", weights_only=True)["step"] % 2 == 0 if (out / "last.pt").exists() else True
    p = run_cli(out, *args, "--resume")
    assert p.wait(timeout=300) == 0, p.stderr.read()
    assert train_records(out) == train_records(straight)
    a, b = (torch.load(d / "last.pt", weights_only=True) for d in (straight, out))
    for name in a["nets"]:
        for k in a["nets"][name]:
            assert torch.equal(a["nets"][name][k], b["nets"][name][k]), (name, k)
    assert not [f for f in out.iterdir() if ".tmp" in f.name]
    assert json.loads((out / "config.json").read_text())["steps"] == 12
