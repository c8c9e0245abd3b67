"""End-to-end runs of python -m cycleseg.train on the built-in dataset, with a tiny model."""
import dataclasses

import pytest
import torch

from cycleseg.config import Config, RECIPES, from_flat, parse_args
from cycleseg.runfolder import RunFolder
from cycleseg.train import main, train


def records(out, split="train"):
    return RunFolder(out).records(split)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["semi", "partial", "meanteacher", "fixmatch"])
def test_short_run_losses_finite_and_decreasing(tmp_path, tiny, mode):
    cfg = tiny(mode, "--mode", mode, "--steps", "60", "--log-every", "1", "--eval-every", "60",
               "--lr", "1e-3")
    result = train(cfg)
    rec = records(tmp_path / mode)
    assert len(rec) == 60
    for r in rec:
        assert all(v == v and abs(v) < 1e6 for k, v in r.items() if k not in ("step", "split"))
    first = sum(r["gen_seg"] for r in rec[:10]) / 10
    last = sum(r["gen_seg"] for r in rec[-10:]) / 10
    assert last < 0.8 * first, (first, last)
    if mode == "semi":
        assert {"gen_img", "cycle_seg", "disc_seg", "disc_img", "d_seg", "d_img"} <= set(rec[0])   # tuned: no cycle_img
        for term, factor in (("cycle_seg", 0.8), ("gen_img", 1.0)):   # adversarial terms need not fall
            t_first = sum(r[term] for r in rec[:10]) / 10
            t_last = sum(r[term] for r in rec[-10:]) / 10
            assert t_last < factor * t_first, (term, t_first, t_last)
    elif mode == "partial":
        assert set(rec[0]) == {"step", "split", "time", "lr", "gen_seg"}
    else:
        assert {"gen_seg", "consistency"} <= set(rec[0])
    assert 0.0 <= result["miou"] <= 1.0 and len(result["iou"]) == 4
    out = tmp_path / mode
    assert (out / "last.pt").exists() and (out / "best.pt").exists() and (out / "config.json").exists()
    png = out / "samples" / "step0000060.png"
    assert png.exists()
    from PIL import Image
    w, h = Image.open(png).size
    cols = 4 if mode == "semi" else 3                                            # image, truth, prediction (G_SI)
    assert 110 * cols <= w <= 140 * cols and h >= 110 * 4                        # 4 rows, titles, the legend


@pytest.mark.slow
def test_resume_after_interruption_gives_the_same_losses(tmp_path, tiny):
    args = ("--steps", "8", "--log-every", "1", "--eval-every", "100", "--ckpt-every", "100", "--pool-size", "3")
    train(tiny("straight", *args))
    train(tiny("resumed", *args), until=4)               # "killed" after step 4
    assert len(records(tmp_path / "resumed")) == 4
    train(tiny("resumed", *args, "--resume"))
    a, b = records(tmp_path / "straight"), records(tmp_path / "resumed")
    assert [r["step"] for r in b] == list(range(1, 9))
    for ra, rb in zip(a, b):
        assert {k: v for k, v in ra.items() if k != "time"} == {k: v for k, v in rb.items() if k != "time"}
    ca, cb = torch.load(tmp_path / "straight" / "last.pt", weights_only=False), \
        torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)
    for name in ca["nets"]:
        for k in ca["nets"][name]:
            assert torch.equal(ca["nets"][name][k], cb["nets"][name][k]), (name, k)


def test_a_resumed_runs_times_go_on_from_its_checkpoint(tmp_path, tiny):
    """A resume's records count the time of every session (time.png plots them): they restarted at 0, so a
    grid cell interrupted and rerun plotted its training time short and running backwards."""
    import json

    train(tiny("r", "--steps", "2", "--eval-every", "2", "--log-every", "1"))
    ck = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    assert 0 < ck["clock"]["evaluating"] < ck["clock"]["time"]
    train(tiny("r", "--steps", "4", "--eval-every", "2", "--log-every", "1", "--resume"))
    recs = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in recs if r["split"] == "val"]
    assert [r["step"] for r in val] == [2, 4] and val[1]["train_time"] > val[0]["train_time"] > 0
    assert val[1]["time"] > ck["clock"]["time"] >= val[0]["time"]
    times = [r["time"] for r in recs if r["split"] == "train"]
    assert times == sorted(times), times


def test_a_resume_notes_a_damaged_config_json_it_writes_again(tiny_argv, tmp_path, capsys):
    """config.json damaged or gone: the checkpoint is the run's record, so the resume goes on, but it says so
    (it rewrote the file without a word)."""
    import json

    from cycleseg.train import main

    assert main(tiny_argv("r", "--steps", "2", "--eval-every", "2")) == 0
    (tmp_path / "r" / "config.json").write_text("{")
    capsys.readouterr()
    assert main(tiny_argv("r", "--steps", "4", "--eval-every", "2", "--resume")) == 0
    err = capsys.readouterr().err
    assert f"note: {tmp_path / 'r' / 'config.json'} is not readable as JSON; the run goes on from" in err, err
    assert json.loads((tmp_path / "r" / "config.json").read_text())["steps"] == 4



def test_a_run_killed_before_its_first_checkpoint_restarts_with_its_own_options(tiny_argv, tmp_path, capsys):
    """`--resume --out RUN` on a run killed before its first checkpoint (config.json and records, no last.pt)
    starts it again from step 0 with the options config.json records, not the defaults (which trained
    other data at other sizes and wrote them over its config.json); options given explicitly change it."""
    import json

    run = tmp_path / "k"
    assert main(tiny_argv("k", "--mode", "partial", "--labeled-fraction", "0.5", "--steps", "6",
                          "--eval-every", "6", "--lr", "3e-4")) == 0
    for f in ("last.pt", "best.pt"):                            # as if killed before step 6's checkpoint
        (run / f).unlink()
    recorded = json.loads((run / "config.json").read_text())
    capsys.readouterr()
    assert main(["--resume", "--out", str(run), "--stop-after", "2", "--batch-size", "1"]) == 0
    err = capsys.readouterr().err
    assert "starting it again from step 0 with the options its config.json records" in err, err
    assert "batch_size 1 (was 2)" in err, err
    saved = torch.load(run / "last.pt", weights_only=True)["config"]
    now = json.loads((run / "config.json").read_text())
    for name in ("mode", "labeled_fraction", "steps", "lr", "image_size", "ngf", "data"):
        assert saved[name] == now[name] == recorded[name], name
    assert saved["batch_size"] == 1 and saved["steps"] == 6

def test_checkpoint_holds_every_state(tmp_path, tiny):
    train(tiny("c", "--steps", "3", "--eval-every", "3"))
    ck = torch.load(tmp_path / "c" / "last.pt", weights_only=True)              # tensors, numbers, containers
    assert ck["step"] == 3 and set(ck["nets"]) == {"G_IS", "G_SI", "D_S", "D_I"}
    assert set(ck["optimizers"]) == {"G", "D"} and set(ck["schedulers"]) == {"G", "D"}
    assert ck["world_size"] == 1 and len(ck["ranks"]) == 1
    mine = ck["ranks"][0]                                                       # the per-process part
    assert set(mine["pools"]) == {"seg", "img"} and len(mine["pools"]["seg"]["images"]) == 6
    assert mine["streams"]["labeled"] == {"pass": 0, "pos": 6} and "torch" in mine["rng"]
    assert ck["config"]["ngf"] == 8 and ck["data"]["num_classes"] == 4 and ck["plan"]["fused_ops"]


def test_existing_run_is_not_overwritten(tiny_argv, capsys):
    argv = tiny_argv("r", "--steps", "2", "--eval-every", "2")
    assert main(argv) == 0
    assert main(argv) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_semi_at_full_labels_says_what_its_unlabeled_stream_reads(tiny_argv, capsys):
    """At 100 % labels there are no unlabeled images; a semi-supervised method's unlabeled stream then reads
    the labeled images without their labels, and the run says so (it said "0 unlabeled images" alone)."""
    assert main(tiny_argv("r", "--steps", "1", "--eval-every", "1", "--labeled-fraction", "1.0")) == 0
    err = capsys.readouterr().err
    assert "1000 labeled / 0 unlabeled images (the unlabeled stream reads the labeled images, without" in err, err


def test_another_methods_options_are_noted_as_unread(tiny_argv, capsys):
    """--mode partial with Mean Teacher's and semi's weights given: the run says they are not read (they were
    ignored without a word); its own options raise no note."""
    assert main(tiny_argv("r", "--mode", "partial", "--steps", "1", "--eval-every", "1", "--mt-consistency", "0.3",
                          "--lambda4", "0.1", "--lr", "0.002")) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "of another method" in line]
    assert notes == ["note: --lambda4, --mt-consistency: options of another method, not read by --mode partial"], notes


def test_dry_run_prints_counts(capsys):
    assert main(["--dry-run", "--preset", "paper", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    # the built-in phantoms: gray images and K = 4, so G_IS differs from the paper's RGB, K = 21 count in
    # its first conv (2 input channels fewer) and its last (17 classes fewer); G_SI the other way round
    assert f"G_IS: {11_434_645 - 2 * 64 * 49 - 17 * 64 * 49 - 17:,}" in out
    assert f"G_SI: {11_434_627 - 17 * 64 * 49 - 2 * 64 * 49 - 2:,}" in out
    assert '"ngf": 64' in out and '"n_blocks": 9' in out


def test_config_defaults_and_errors():
    cfg = Config(device="cpu").resolved()
    assert (cfg.preset, cfg.ngf, cfg.beta1, cfg.labeled_fraction, cfg.lr) == ("cpu", 16, 0.9, 0.1, 1e-3)
    assert Config(device="cpu", preset="paper").resolved().lr == 2e-4
    assert Config(device="cpu", mode="partial").resolved().beta1 == 0.9 == cfg.beta1    # the same optimizer for every arm
    assert Config(device="cpu", recipe="2019").resolved().beta1 == 0.5                   # the 2019 code's
    assert Config(device="cpu", lr=1e-3).resolved().lr_d == 1e-3 * RECIPES["tuned"]["lr_d_scale"]
    assert Config(device="cpu", mode="full", labeled_fraction=0.2).resolved().labeled_fraction == 1.0
    assert dataclasses.astuple(cfg.semi.lambdas) == (1, 0.05, 0, 0.01, 0.5)                          # tuned
    assert dataclasses.astuple(Config(device="cpu", recipe="2019").resolved().semi.lambdas) == (1, 0.05, 1, 0.5, 0.5)
    assert from_flat(dict(device="cpu", lambda3=0.3)).resolved().semi.lambda3 == 0.3    # an option beats the recipe
    with pytest.raises(ValueError, match="labeled-fraction"):
        Config(device="cpu", labeled_fraction=0.0).resolved()
    c, _ = parse_args(["--lambda2", "0.1", "--labeled-fraction", "0.3"])  # float lambdas (2019 code: int)
    assert c.semi.lambda2 == 0.1 and c.labeled_fraction == 0.3


def test_bad_data_path_is_a_clear_error(tmp_path, tiny_argv, capsys):
    assert main(tiny_argv("r", "--data", str(tmp_path / "nope.h5"))) == 2
    assert "nope.h5: no such file" in capsys.readouterr().err


def test_no_fast_baseline_trains(tiny, tmp_path):
    """--no-fast: PyTorch's own ops, eager, fp32; the run records that plan in its checkpoint."""
    train(tiny("eager", "--no-fast", "--steps", "2", "--eval-every", "2"))
    ck = torch.load(tmp_path / "eager" / "last.pt", weights_only=False)
    assert ck["plan"]["fused_ops"] is False and ck["config"]["fast"] is False


def test_help_describes_every_flag(capsys):
    from cycleseg.config import flat_fields
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    out = capsys.readouterr().out
    for name in flat_fields():
        flag = "--" + name.replace("_", "-")
        assert flag in out, flag
    assert "weight of L_disc^S" in out and "(default: 10)" in out
    assert "meanteacher: weight of the consistency term" in out and "--adv-lambda ADV_LAMBDA" in out
    assert "{partial,full,semi,meanteacher,fixmatch,adversarial}" in out
    assert "(default: None)" not in out                             # a preset's or recipe's value: said whose
    assert "(default: --preset's: paper 1000, cpu 250)" in " ".join(out.split())


def test_method_options_nest_in_the_config_and_checkpoints_stay_flat():
    """Each method's options live in its own dataclass, embedded in the Config; a checkpoint's flat config
    (every version's: one key per flag) loads into them, and flat() gives back the same keys and values."""
    from cycleseg.config import flat
    from cycleseg.methods.adversarial import AdversarialOptions

    saved = flat(Config(device="cpu").resolved())
    assert {"mt_consistency", "fm_weight", "adv_lambda", "lambda2", "pool_size"} <= set(saved)
    saved.update(mt_consistency=0.3, fm_loss="ce", adv_lambda=0.05, lambda2=0.0, no_longer_an_option=1)
    cfg = from_flat(saved)
    assert (cfg.meanteacher.consistency, cfg.fixmatch.loss, cfg.adversarial.lambda_, cfg.semi.lambda2) == \
        (0.3, "ce", 0.05, 0.0)
    assert isinstance(cfg.adversarial, AdversarialOptions) and cfg.options("adversarial") is cfg.adversarial
    back = flat(cfg)
    assert back == {k: v for k, v in saved.items() if k != "no_longer_an_option"}
    with pytest.raises(ValueError, match="--mt-ema must be in \\[0, 1\\], got 2"):
        from_flat(dict(device="cpu", mt_ema=2.0)).resolved()
    with pytest.raises(ValueError, match="--fm-loss must be one of dice, ce"):
        from_flat(dict(device="cpu", fm_loss="l2")).resolved()


def test_an_edited_clock_is_noted_and_the_times_count_from_now():
    """A checkpoint's clock that is no run's times ({}, NaN, negative, 10**12 s) is not used, and the resume says
    so (the records' times silently restarted from 0); a checkpoint without one (an older cycleseg) is quiet."""
    import time

    from cycleseg.train import resumed_clock

    for bad in ({}, {"time": float("nan"), "evaluating": 0.0}, {"time": -5.0, "evaluating": 0.0},
                {"time": 1e12, "evaluating": 0.0}):
        notes = []
        clock = resumed_clock(bad, notes.append)
        assert len(notes) == 1 and "is not a run's times" in notes[0] and abs(clock["t0"] - time.time()) < 5, bad
    notes = []
    assert resumed_clock(None, notes.append)["evaluating"] == 0.0 and notes == []
    clock = resumed_clock({"time": 100.0, "evaluating": 10.0}, notes.append)
    assert notes == [] and 99 < time.time() - clock["t0"] < 105 and clock["evaluating"] == 10.0


def test_a_reader_that_leaves_the_output_does_not_stop_training(tmp_path):
    """`train ... | head -1`: the reader leaves after the first validation line; the run goes on to its last
    checkpoint (it ended with a BrokenPipeError at the next line, exit 141, no last.pt, a folder resume
    refused), with one note on stderr."""
    import subprocess
    import sys

    from conftest import TINY

    cmd = [sys.executable, "-m", "cycleseg.train", *TINY, "--steps", "6", "--eval-every", "2", "--out", str(tmp_path / "r")]
    train = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = train.stdout.readline()
    train.stdout.close()                                        # what head -1 does
    err = train.stderr.read().decode()
    assert train.wait(300) == 0, err
    assert first.startswith(b"step 2: val mIoU"), first
    assert err.count("note: the standard output was closed") == 1, err
    assert torch.load(tmp_path / "r" / "last.pt", weights_only=True)["step"] == 6


def test_a_reader_of_both_streams_that_leaves_does_not_stop_training(tmp_path):
    """`train ... 2>&1 | head -2`: the reader of stdout and stderr leaves after the first two lines (notes on
    stderr); the next note raised BrokenPipeError and the run ended before its first checkpoint, exit 141.
    It goes on to its last checkpoint, exit 0."""
    import subprocess
    import sys

    from conftest import TINY

    cmd = [sys.executable, "-m", "cycleseg.train", *TINY, "--steps", "6", "--eval-every", "2", "--log-every", "1",
           "--out", str(tmp_path / "r")]
    train = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = [train.stdout.readline() for _ in range(2)]
    train.stdout.close()                                        # what head -2 does
    assert train.wait(300) == 0, lines
    assert torch.load(tmp_path / "r" / "last.pt", weights_only=True)["step"] == 6
