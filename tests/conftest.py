"""Shared set-up of the test session: environment, builders and fixtures used by several test modules.

Quick loop: `python -m pytest -q -m "not slow"` (skips the end-to-end runs); CI runs everything."""
import os
import tempfile

import numpy as np
import pytest
import torch

import procs

# Triton kernels run on CPU tensors through the interpreter when there is no GPU. The variable must be
# set before any module with @triton.jit is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# The built-in dataset is generated into a cache folder of the test session, not the user's.
os.environ.setdefault("CYCLESEG_CACHE", tempfile.mkdtemp(prefix="cycleseg-test-cache-"))

# A tiny model on the CPU, for end-to-end runs in seconds.
TINY = ["--ngf", "8", "--n-blocks", "1", "--ndf", "8", "--image-size", "32", "--batch-size", "2",
        "--no-progress", "--device", "cpu", "--preset", "cpu"]


@pytest.fixture(scope="session", autouse=True)
def cpp_kernels():
    """Build (or load) the C++ kernels once per session, so their first-use compile is charged to no test
    (on a CPU machine, where most op tests use them; a GPU run builds them only if a test asks)."""
    if not torch.cuda.is_available():
        from cycleseg.ops.cpu import extension
        extension()


@pytest.fixture(autouse=True)
def reap_subprocesses():
    """Kill every subprocess a test started (tests/procs.py) with all its descendants, ended or not."""
    yield
    while procs.LIVE:
        procs.LIVE.pop().kill()


@pytest.fixture
def tiny_argv(tmp_path):
    """tiny_argv(name, *flags) -> the command line of a tiny CPU run in tmp_path/name."""
    return lambda name, *extra: TINY + ["--out", str(tmp_path / name), *extra]


@pytest.fixture
def tiny(tiny_argv):
    """tiny(name, *flags) -> the Config of a tiny CPU run in tmp_path/name."""
    from cycleseg.config import parse_args

    return lambda name, *extra: parse_args(tiny_argv(name, *extra))[0]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """The last.pt of a 3-step semi run of a tiny model on the built-in data at 16x16 (has G_SI)."""
    from cycleseg.config import parse_args
    from cycleseg.train import train

    out = tmp_path_factory.mktemp("tiny-run") / "r"
    cfg, _ = parse_args(["--ngf", "4", "--n-blocks", "1", "--ndf", "4", "--image-size", "16", "--batch-size", "2",
                         "--no-progress", "--device", "cpu", "--steps", "3", "--eval-every", "3", "--out", str(out)])
    train(cfg)
    return out / "last.pt"


@pytest.fixture
def make_acdc():
    """make_acdc(root, patients, val_patients) writes a tiny SSL4MIS ACDC tree; returns (slices, volumes)."""
    import h5py

    rng = np.random.default_rng(0)

    def make(root, patients=(1, 2, 3), val_patients=(9,)):
        (root / "data/slices").mkdir(parents=True)
        slices, vols = [], []
        for p in patients:
            for z in (1, 2):
                name = f"patient{p:03d}_frame01_slice_{z}"
                with h5py.File(root / "data/slices" / f"{name}.h5", "w") as f:
                    f.create_dataset("image", data=rng.random((14, 10)).astype(np.float32), compression="gzip")
                    f.create_dataset("label", data=rng.integers(0, 4, (14, 10)).astype(np.uint8), compression="gzip")
                slices.append(name)
        for p in val_patients:
            name = f"patient{p:03d}_frame01"
            with h5py.File(root / "data" / f"{name}.h5", "w") as f:
                f.create_dataset("image", data=rng.random((3, 14, 10)).astype(np.float32))
                f.create_dataset("label", data=rng.integers(0, 4, (3, 14, 10)).astype(np.uint8))
            vols.append(name)
        (root / "train_slices.list").write_text("\n".join(slices) + "\n")
        (root / "val.list").write_text("\n".join(vols) + "\n")
        (root / "train.list").write_text("")
        return slices, vols
    return make


# -- the fused-op tests ---------------------------------------------------------------------------------

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# On a CPU machine: the C++ kernels, and the Triton kernels through the interpreter.
BACKENDS = ["triton"] if DEVICE == "cuda" else (["cpp", "triton"] if os.environ.get("TRITON_INTERPRET") == "1" else ["cpp"])


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Runs the test once per backend (CPU tensors: C++ and interpreted Triton; CUDA tensors: Triton)."""
    from cycleseg import ops

    if DEVICE == "cpu":
        with ops.cpu_backend(request.param):
            yield request.param
    else:
        yield request.param


def _assert_close(got, expect, dtype, what="", tol=None):
    """Compare to an fp64 reference with a tolerance for the input dtype (relative norm for halves);
    NaN must sit exactly where the reference has NaN."""
    got, expect = got.double(), expect.double()
    assert torch.equal(torch.isnan(got), torch.isnan(expect)), f"{what}: NaN pattern differs"
    g, e = got[~torch.isnan(got)], expect[~torch.isnan(expect)]
    if dtype in (torch.float64, torch.float32):
        tol = tol or (1e-9 if dtype == torch.float64 else 2e-5)
        torch.testing.assert_close(g, e, rtol=tol, atol=tol, msg=lambda m: f"{what}: {m}")
    else:
        tol = tol or (1e-2 if dtype == torch.bfloat16 else 2e-3)
        err = (g - e).norm() / e.norm().clamp(min=1e-12)
        assert err < tol, f"{what}: relative error {err:.2e} >= {tol}"


@pytest.fixture
def close():
    """close(got, expect, dtype, what, tol=None): the tolerance check of the op tests."""
    return _assert_close


def _compile_matches_eager(f, *inputs, rtol=1e-6, atol=1e-6):
    """f(*inputs) -> a scalar; its value and the inputs' gradients under torch.compile(fullgraph=True)
    (aot_eager on the CPU, where Inductor would compile C++ for a minute; Inductor on CUDA) equal eager."""
    eager = [x.detach().clone().requires_grad_() for x in inputs]
    comp = [x.detach().clone().requires_grad_() for x in inputs]
    le = f(*eager)
    le.backward()
    torch._dynamo.reset()
    lc = torch.compile(f, fullgraph=True, backend="aot_eager" if DEVICE == "cpu" else "inductor")(*comp)
    lc.backward()
    torch.testing.assert_close(lc, le, rtol=rtol, atol=atol)
    for a, b in zip(comp, eager):
        torch.testing.assert_close(a.grad, b.grad, rtol=rtol, atol=atol)


@pytest.fixture
def compile_matches_eager():
    return _compile_matches_eager


@pytest.fixture
def guard_log(monkeypatch):
    """Records (op, device) of every launcher's device guard (CPU tensors enter a no-op guard); the op is
    the dispatcher op whose kernel entered it."""
    import contextlib
    import sys

    from cycleseg.ops import cuda

    log = []

    def guard(x):
        log.append((sys._getframe(1).f_locals.get("name"), x.device))
        return contextlib.nullcontext()

    monkeypatch.setattr(cuda, "device_guard", guard)
    return log
