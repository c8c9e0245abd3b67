"""torchrun on the CPU (gloo, 2 processes): the same training as one process with the global batch,
checkpoints that move between process counts, and a failing process that ends the job."""
import os
import sys

import pytest
import torch

import procs
from cycleseg.runfolder import RunFolder

TINY = ["--ngf", "4", "--n-blocks", "1", "--ndf", "4", "--image-size", "16", "--no-progress", "--device", "cpu",
        "--preset", "cpu", "--log-every", "1", "--eval-every", "3", "--pool-size", "0"]
pytestmark = pytest.mark.slow


FAULTY = os.path.join(os.path.dirname(__file__), "faulty_train.py")     # the training command with a fault


def launch(out, nproc, *extra, env=None, timeout=300):
    entry = [FAULTY] if env and "FAIL_AT" in env else ["-m", "cycleseg.train"]
    if nproc == 1:
        cmd = [sys.executable, *entry]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               *entry]
    return procs.run(cmd + TINY + ["--out", out, *extra], timeout, env={**os.environ, **(env or {})})


def terms(out):
    return [{k: v for k, v in r.items() if k not in ("time",)} for r in RunFolder(out).records("train")]


@pytest.mark.parametrize("fast", ["--no-fast", "--fast"])
def test_two_processes_train_like_one_with_twice_the_batch(tmp_path, fast):
    """Per-process batch 2 on 2 processes = batch 4 on 1: the same images per step (each process reads
    every other image of the same pass), gradients averaged. No history pool (a pool is per process).
    --no-fast (fp32): the first step's terms equal to 1e-5 (only the reduction order differs), later
    steps' to 1e-4 (Adam turns a gradient near 0, whose reduction order differs, into a step of up to lr,
    see the weights below); the fast path (bf16 on this CPU): to 1e-2, batch-size-dependent rounding
    through bf16 convolutions."""
    r2 = launch(tmp_path / "two", 2, "--steps", "6", "--batch-size", "2", fast)
    assert r2.returncode == 0, r2.stderr[-3000:]
    r1 = launch(tmp_path / "one", 1, "--steps", "6", "--batch-size", "4", fast)
    assert r1.returncode == 0, r1.stderr[-3000:]
    a, b = terms(tmp_path / "one"), terms(tmp_path / "two")
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 7))
    for ra, rb in zip(a, b):
        tol = 1e-2 if fast == "--fast" else 1e-5 if ra["step"] == 1 else 1e-4
        for k in ra:
            if k not in ("step", "split", "lr"):
                assert rb[k] == pytest.approx(ra[k], rel=tol, abs=1e-6), (ra["step"], k)
    va, vb = RunFolder(tmp_path / "one").records("val"), RunFolder(tmp_path / "two").records("val")
    assert vb[-1]["miou"] == pytest.approx(va[-1]["miou"], abs=2e-2 if fast == "--fast" else 1e-6)
    if fast == "--no-fast":
        ca, cb = (torch.load(tmp_path / d / "last.pt", weights_only=True) for d in ("one", "two"))
        # biases: see test_fastpath (inert ones before an instance norm move by noise). Weights: Adam turns
        # a gradient near 0, whose reduction order differs, into a step of up to lr (1e-3) either way, so
        # such an element may differ by up to 2 lr per step; nine in ten of every tensor's agree to 1e-4
        for name in ca["nets"]:
            for k, v in ca["nets"][name].items():
                if k.endswith("weight"):
                    diff = (cb["nets"][name][k] - v).abs()
                    assert (diff <= 1e-4 + 1e-3 * v.abs()).float().mean() >= 0.9, (name, k)
                    assert diff.max() <= 2 * 1e-3 * 6, (name, k)
        assert cb["world_size"] == 2 and len(cb["ranks"]) == 2
    assert r2.stdout.count('"miou"') == 1                            # only rank 0 prints and writes


def test_checkpoints_move_between_process_counts(tmp_path):
    """Written by 2 processes, resumed on 1, and the reverse: the step, the weights and the stream
    positions carry over, and the run finishes."""
    args = ("--steps", "8", "--batch-size", "2")
    r = launch(tmp_path / "a", 2, *args, "--stop-after", "4")
    assert r.returncode == 0, r.stderr[-3000:]
    # the advice repeats the launch: a plain resume trained on half the global batch without a word
    assert f"Resume with: torchrun --nproc_per_node 2 -m cycleseg.train --resume --out {tmp_path / 'a'}" in r.stderr
    saved = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    assert saved["step"] == 4 and saved["ranks"][0]["streams"]["labeled"]["pos"] == 4 * 2 * 2   # global position
    r = launch(tmp_path / "a", 1, *args, "--resume", "--stop-after", "6")
    assert r.returncode == 0, r.stderr[-3000:]
    assert ("note: the run trained on 2 processes, it resumes on 1: the global batch is now 2 labeled images a step "
            "(it was 4); resume with 2 processes to keep it") in r.stderr, r.stderr[-3000:]
    after = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    assert after["step"] == 6 and after["world_size"] == 1
    assert after["ranks"][0]["streams"]["labeled"]["pos"] == 4 * 2 * 2 + 2 * 2
    r = launch(tmp_path / "a", 2, *args, "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    assert [x["step"] for x in terms(tmp_path / "a")] == list(range(1, 9))
    assert torch.load(tmp_path / "a" / "last.pt", weights_only=True)["step"] == 8


def test_a_failing_process_ends_the_job(tmp_path):
    r = launch(tmp_path / "f", 2, "--steps", "50", "--batch-size", "2", env={"FAIL_AT": "1:3"},
               timeout=180)
    assert r.returncode != 0
    assert "process 1 failed at step 3" in r.stderr


def test_a_process_count_that_does_not_divide_the_position_resumes(tmp_path):
    """Written by 2 processes at a stream position of 16 images, resumed on 3: the stream goes on from 15 (one
    image of the pass read twice), with a note, and the run finishes."""
    args = ("--steps", "6", "--batch-size", "2")
    r = launch(tmp_path / "a", 2, *args, "--stop-after", "4")
    assert r.returncode == 0, r.stderr[-3000:]
    r = launch(tmp_path / "a", 3, *args, "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "goes on from image 15" in r.stderr
    after = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    assert after["step"] == 6 and after["world_size"] == 3
    assert after["ranks"][0]["streams"]["labeled"]["pos"] == 15 + 2 * 2 * 3
