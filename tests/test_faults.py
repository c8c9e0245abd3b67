"""Runs that go wrong: NaN losses, stop signals, kill -9 at any moment, bad checkpoints, full disks,
unwritable folders, impossible batch sizes. Each ends in a clear message and loses nothing."""
import json
import os
import signal
import sys
import time

import pytest
import torch

import procs
from cycleseg.checkpoint import CheckpointError
from cycleseg.config import Config
from cycleseg.faults import NonFiniteLoss
from cycleseg.runfolder import RunFolder
from cycleseg.train import main, train

TINY_ARGS = ["--ngf", "4", "--n-blocks", "1", "--ndf", "4", "--image-size", "16", "--batch-size", "2",
             "--no-progress", "--device", "cpu", "--preset", "cpu"]


def test_nan_loss_stops_with_step_and_term(tiny, tmp_path, monkeypatch):
    import cycleseg.methods.supervised as steps

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
    names = [f"class {i}" for i in range(21)]                     # a consistent description of other data
    bad = dict(good, data={k: v for k, v in dict(good["data"], num_classes=21, class_names=names).items() if k != "palette"})
    torch.save(bad, last)
    with pytest.raises(CheckpointError, match="trained on data with 21 num classes"):
        train(tiny("r", "--steps", "4", "--eval-every", "4", "--resume"))
    bad = dict(good, config=dict(good["config"], ngf=2 * good["config"]["ngf"]))   # other widths than its weights
    torch.save(bad, last)
    with pytest.raises(CheckpointError, match="ngf 16 where config.json has 8"):   # not the run the folder records
        train(Config(out=str(tmp_path / "r"), resume=True, device="cpu", progress=False))
    (tmp_path / "r" / "config.json").unlink()                             # no record: the weights' own check
    with pytest.raises(CheckpointError, match="does not match this run's networks"):
        train(Config(out=str(tmp_path / "r"), resume=True, device="cpu", progress=False))
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


def test_a_fraction_that_rounds_to_no_image_is_refused():
    """A fraction of less than half an image (or patient) is refused, naming the least that labels one, instead
    of labelling one anyway (a table would then call a 1/70 run "0 %"); half a one or more selects one."""
    import numpy as np
    from cycleseg.data.h5format import DataError
    from cycleseg.data.subset import labeled_subset
    with pytest.raises(DataError, match=r"--labeled-fraction 0.0001 of 1000 images labels less than half of one; 0.0005 or more"):
        labeled_subset(1000, 0.0001, seed=0)
    assert len(labeled_subset(1000, 0.0006, seed=0)) == 1
    groups = np.repeat(np.arange(70), 3)
    with pytest.raises(DataError, match="of 70 patients"):
        labeled_subset(len(groups), 0.001, 0, groups, first_groups=True)
    assert len(labeled_subset(len(groups), 0.01, 0, groups, first_groups=True)) == 3


def run_cli(out, *extra, env=None):
    """The training command in a subprocess (the real entry point: signals, exit codes, files); with a
    fault injected (tests/faulty_train.py) when env asks for one."""
    entry = [os.path.join(os.path.dirname(__file__), "faulty_train.py")] if env else ["-m", "cycleseg.train"]
    return procs.Proc([sys.executable, *entry, *TINY_ARGS, "--out", out, *extra], env={**os.environ, **(env or {})})


def wait_for(predicate, timeout=120):
    t0 = time.time()
    while not predicate():
        if time.time() - t0 > timeout:
            raise TimeoutError
        time.sleep(0.02)


def train_records(out):
    return [{k: v for k, v in r.items() if k != "time"} for r in RunFolder(out).records("train")]


@pytest.mark.slow
@pytest.mark.parametrize("signum", ["SIGTERM", "SIGHUP"])
def test_sigterm_saves_and_says_how_to_resume(tmp_path, signum):
    """SIGTERM (a scheduler's notice) or SIGHUP (the terminal or ssh session closed): a checkpoint after the
    current step, 128 + the signal, how to resume."""
    out = tmp_path / "t"
    p = run_cli(out, "--steps", "400", "--log-every", "1", "--eval-every", "1000", "--ckpt-every", "1000")
    wait_for(lambda: len(RunFolder(out).records("train")) >= 3)
    p.send_signal(getattr(signal, signum))
    p.wait(timeout=120)
    err = p.stderr
    assert p.returncode == 128 + getattr(signal, signum), err[-3000:]
    assert f"stopped by signal {signum} after step" in err and "--resume --out" in err
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
    slow = {"SLOW_WRITE": "0.3"}
    for kill_at in ("writing", "writing", "between"):
        p = run_cli(out, *args, *(["--resume"] if out.exists() else []), env=slow)
        if kill_at == "writing":                                    # a temporary checkpoint file exists
            wait_for(lambda: any(".last.pt.cycleseg-tmp" in f.name for f in out.glob(".*")) if out.exists() else False)
        else:
            start = len(RunFolder(out).records("train"))
            wait_for(lambda: len(RunFolder(out).records("train")) > start + 1)
        p.kill()
        assert torch.load(out / "last.pt", weights_only=True)["step"] % 2 == 0 if (out / "last.pt").exists() else True
    p = run_cli(out, *args, "--resume")
    assert p.wait(timeout=300) == 0, p.stderr[-3000:]
    assert train_records(out) == train_records(straight)
    a, b = (torch.load(d / "last.pt", weights_only=True) for d in (straight, out))
    for name in a["nets"]:
        for k in a["nets"][name]:
            assert torch.equal(a["nets"][name][k], b["nets"][name][k]), (name, k)
    assert not [f for f in out.iterdir() if ".tmp" in f.name]
    assert json.loads((out / "config.json").read_text())["steps"] == 12


@pytest.mark.parametrize("fast", [True, False])
def test_unannotated_images_train_without_nan(tmp_path, fast):
    """Most training images without a labeled pixel (all 255): batches made only of such images
    contribute no supervised loss (0, not NaN); training runs to the end with finite losses."""
    import numpy as np

    from cycleseg.data.h5format import Meta, write_split

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    masks = rng.integers(0, 3, (12, 16, 16), dtype=np.uint8)
    masks[2:] = 255                                                 # 10 of 12 images unannotated
    meta = Meta(num_classes=3, class_names=list("abc"), palette=[[0, 0, 0]] * 3)
    write_split(tmp_path / "train.h5", images, masks, meta)
    write_split(tmp_path / "val.h5", images[:2], masks[:2], meta)
    args = TINY_ARGS + ["--data", str(tmp_path / "train.h5"), "--labeled-fraction", "1", "--steps", "12",
                        "--log-every", "1", "--eval-every", "12", "--out", str(tmp_path / "r")]
    assert main(args + ([] if fast else ["--no-fast"])) == 0
    records = RunFolder(tmp_path / "r").records("train")
    assert len(records) == 12 and all(np.isfinite(r["gen_seg"]) for r in records)
    assert any(r["gen_seg"] == 0.0 for r in records)               # batches of unannotated images only


def test_resume_may_change_lr_and_steps_and_says_so(tiny, tmp_path, capsys):
    """--resume --lr 1e-4 --steps 8 continues the run with that rate and a decay redrawn over 8 steps."""
    train(tiny("r", "--mode", "partial", "--steps", "4", "--eval-every", "100", "--lr", "1e-3"), until=2)
    capsys.readouterr()
    import cycleseg.train as tr

    seen = {}
    real = tr.build

    def spy(*a, **k):
        nets, step = real(*a, **k)
        seen["step"] = step
        return nets, step

    tr.build = spy
    try:
        train(tiny("r", "--mode", "partial", "--steps", "8", "--eval-every", "100", "--lr", "1e-4", "--resume"),
              until=3)
    finally:
        tr.build = real
    err = capsys.readouterr().err
    assert "resuming" in err and "--lr 0.0001 (was 0.001)" in err and "--steps 8 (was 4)" in err
    sched = seen["step"].schedulers["G"]
    assert sched.base_lrs == [pytest.approx(1e-4)] and sched.lr_lambdas[0].steps == 8
    # after step 3 of 8: constant for 2 steps, then linear to 0 at step 8
    assert seen["step"].optimizers["G"].param_groups[0]["lr"] == pytest.approx(1e-4 * (1 - (3 - 2) / (8 - 2)))
    ck = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    assert ck["config"]["lr"] == 1e-4 and ck["config"]["steps"] == 8 and ck["step"] == 3


def test_divergence_advice_follows_the_checkpoints(tiny, monkeypatch):
    import cycleseg.methods.supervised as steps

    real = steps.supervised_objective

    def diverge_at(n):
        calls = []

        def poisoned(*a, **k):
            loss, terms = real(*a, **k)
            calls.append(1)
            if len(calls) >= n:
                loss = loss * float("nan")
                terms = {"gen_seg": loss.detach()}
            return loss, terms
        return poisoned

    monkeypatch.setattr(steps, "supervised_objective", diverge_at(1))
    with pytest.raises(NonFiniteLoss, match="no checkpoint was written before it: start again with a lower --lr"):
        train(tiny("early", "--mode", "partial", "--steps", "8", "--log-every", "2", "--ckpt-every", "4",
                   "--eval-every", "100"))
    monkeypatch.setattr(steps, "supervised_objective", diverge_at(6))
    with pytest.raises(NonFiniteLoss, match=r"last.pt holds the last good state: .*--resume --lr"):
        train(tiny("late", "--mode", "partial", "--steps", "8", "--log-every", "2", "--ckpt-every", "4",
                   "--eval-every", "100"))


@pytest.mark.slow
def test_sigterm_stops_after_the_current_step(tmp_path):
    """One process: the signal is acted on after the step it arrives in, not at the next log step."""
    out = tmp_path / "t"
    far = "100000"                                                  # no log, evaluation or checkpoint step in reach
    p = run_cli(out, "--steps", far, "--log-every", far, "--eval-every", far, "--ckpt-every", far)
    wait_for(lambda: (out / "config.json").exists())
    time.sleep(2)
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=300)                                             # a hang fails here (no timing asserted:
    err = p.stderr                                                  # a loaded machine may take a while)
    assert p.returncode == 128 + signal.SIGTERM, err[-3000:]
    step = torch.load(out / "last.pt", weights_only=True)["step"]
    assert 1 <= step < 100000 and f"after step {step}" in err


def test_a_relative_data_path_is_kept_absolute(tmp_path, monkeypatch):
    """--data as typed would follow the working folder: evaluate or --resume run elsewhere would read another
    folder of the same name. The run records the absolute path; a built-in dataset's name stays a name. The
    run folder (--out, or its default) is recorded absolute too."""
    from cycleseg.config import Config

    (tmp_path / "mydata").mkdir()
    monkeypatch.chdir(tmp_path)
    c = Config(data="mydata", val_data=None, device="cpu", out="runs/r").resolved()
    assert c.data == str(tmp_path / "mydata")
    assert c.out == str(tmp_path / "runs" / "r")                    # config.json names the run folder wherever read
    assert Config(data="shapes", device="cpu").resolved().data == "shapes"
    assert Config(device="cpu", mode="semi", seed=3).resolved().out == str(tmp_path / "runs" / "semi-10pct-seed3")


def test_a_resume_that_fails_before_its_checkpoint_leaves_config_json_as_last_pt(tiny_argv, tmp_path, monkeypatch):
    """A resume with changed options (--lr) that fails before its first checkpoint (diverged, killed) leaves
    config.json describing last.pt, not the options that failed; one that checkpoints records them."""
    import cycleseg.train as train_module

    assert main(tiny_argv("r", "--steps", "2", "--eval-every", "2")) == 0
    before = (tmp_path / "r" / "config.json").read_text()

    def failing(self, terms, step):
        raise RuntimeError("failed before the checkpoint")

    monkeypatch.setattr(train_module.FiniteGuard, "update", failing)
    resume = tiny_argv("r", "--steps", "4", "--eval-every", "2", "--lr", "0.0123", "--resume")
    with pytest.raises(RuntimeError, match="before the checkpoint"):
        main(resume)
    assert (tmp_path / "r" / "config.json").read_text() == before
    monkeypatch.undo()
    assert main(resume) == 0
    assert json.loads((tmp_path / "r" / "config.json").read_text())["lr"] == 0.0123
