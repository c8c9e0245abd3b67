"""The compile gate (benchmarks/compile_check.py): every Triton launch of the training step compiles for
sm_90 with the installed Triton and with the GPU machines' Triton 3.6, without register spills; and the
gate does fail on a kernel that only a launch's specialisation breaks."""
import json
import os
import re
import sys
from pathlib import Path

import pytest

import procs

ROOT = Path(__file__).resolve().parents[1]
GATE = ROOT / "benchmarks" / "compile_check.py"


def run_gate(*args, env=None, timeout=900):
    env = {**os.environ, **(env or {})}
    env.pop("TRITON_INTERPRET", None)
    return procs.run([sys.executable, GATE, *args], timeout, env=env, cwd=ROOT)


@pytest.mark.slow
def test_every_launch_of_the_step_compiles_for_sm90_without_spills():
    out = run_gate()
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    summaries = re.findall(r"== triton (\S+): (\d+) specialisations from (\d+) launches, (\d+) failed, (\d+) spilled",
                           text)
    assert {v for v, *_ in summaries} >= {"3.6.0"} and len(summaries) == 2, text[-2000:]
    for version, specs, launches, failed, spilled in summaries:
        assert int(specs) > 100 and int(launches) > 1000 and failed == spilled == "0", (version, specs)
    for op in ("softmax_cross_entropy", "instance_norm_relu", "lsgan_loss", "lsgan_disc_loss"):
        for pass_ in ("fwd", "bwd"):
            assert re.search(rf"^ok +{op} +{pass_} .* bf16 ", text, re.M), (op, pass_)
    for dtype in ("bf16", "fp32"):                                   # the layout the GPU plan trains with
        for pass_ in ("fwd", "bwd"):
            assert re.search(rf"^ok +softmax_cross_entropy +{pass_} +_\w+ +{dtype} channels_last .*anchor", text, re.M)


PROBE = '''
import triton
import triton.language as tl


@triton.jit
def probe(x_ptr, n, stride, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    s = stride.to(tl.int64)          # an integer argument equal to 1 becomes a constant: no .to()
    tl.store(x_ptr + i * s, tl.zeros([BLOCK], tl.float32), mask=i < n)
'''


def test_the_gate_fails_on_what_only_a_launch_specialisation_breaks(tmp_path):
    """A kernel that the interpreter runs and that compiles with stride 2 fails with stride 1 (Triton
    specialises integers equal to 1 into constants): the gate reports it and exits 1."""
    (tmp_path / "gate_probe.py").write_text(PROBE)

    def record(stride):
        return {"kernel": "gate_probe:probe", "args": [{"tensor": "fp32", "aligned": True}, 100, stride],
                "kwargs": {"BLOCK": 128}, "op": "probe", "pass": "fwd", "dtype": "fp32", "layout": "dense",
                "where": f"stride {stride}"}

    (tmp_path / "good.json").write_text(json.dumps([record(2)]))
    (tmp_path / "bad.json").write_text(json.dumps([record(2), record(1)]))
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    good = run_gate("--tritons", "installed", "--records", str(tmp_path / "good.json"), "--jobs", "1", env=env)
    assert good.returncode == 0 and "0 failed, 0 spilled" in good.stdout, good.stdout + good.stderr
    bad = run_gate("--tritons", "installed", "--records", str(tmp_path / "bad.json"), "--jobs", "1", env=env)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert re.search(r"^FAIL +probe +fwd .*stride 1", bad.stdout, re.M) and "1 failed" in bad.stdout
