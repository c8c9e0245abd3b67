"""The fused ops are registered the way PyTorch extensions are, each from its own files: its schemas,
fake implementations, autograd formula and Triton launchers from cycleseg/ops/<op>.py, its C++ kernels
as the dispatcher's CPU kernels from csrc/<op>.cpp; no central table names an op. The losses come back
in fp32 under bf16 autocast. A load of the C++ kernels killed midway blocks no later one."""
import ast
import os
import re
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import procs
from cycleseg import ops
from cycleseg.ops import cpu
from cycleseg.ops.registry import LAUNCHERS, REGISTRY

ROOT = Path(__file__).resolve().parents[1]
DISPATCHER_OPS = sorted((d, f.name) for f in REGISTRY.values() for d in f.dispatcher_ops)


def kernels_of(name: str) -> dict:
    """{dispatch key: where its kernel was registered} from the dispatcher's own table."""
    dump = torch._C._dispatch_dump(f"cycleseg::{name}")
    return dict(re.findall(r"^(\w+(?:\[alias\])?): registered at (\S+)", dump, re.M))


def test_every_dispatcher_op_belongs_to_one_registered_op():
    """Every cycleseg:: op the dispatcher holds is defined (LAUNCHERS) and claimed by exactly one registered op,
    and every op with C++ kernels (csrc/<op>.cpp) is registered: an op module that was not imported, or that
    defined its ops without registering, fails here (no count of the ops to update)."""
    owners = {}
    for fused in REGISTRY.values():
        for name in fused.dispatcher_ops:
            assert name not in owners, f"{name} registered by {owners[name]} and {fused.name}"
            owners[name] = fused.name
    dispatcher = sorted(n.removeprefix("cycleseg::") for n in torch._C._dispatch_get_all_op_names()
                        if n.startswith("cycleseg::"))
    assert sorted(owners) == sorted(LAUNCHERS) == dispatcher
    assert sorted(REGISTRY) == sorted(p.stem for p in (ROOT / "csrc").glob("*.cpp") if p.stem != "module")


@pytest.mark.parametrize("name,owner", DISPATCHER_OPS)
def test_cpu_kernel_from_its_cpp_file_and_cuda_kernel_from_triton(name, owner):
    cpu.extension()
    table = kernels_of(name)
    assert table["CPU"].startswith(str(cpu.CSRC / f"{owner}.cpp")), table     # its own C++ file
    assert "ops/registry.py" in table["CUDA"], table                 # the Python (Triton) kernel
    assert "Meta" in table, table                                    # the fake implementation
    assert ("Autograd[alias]" in table) != name.endswith("_backward"), table   # autograd on the forward ops


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_an_op_lives_in_its_own_files(name):
    """cycleseg/ops/<op>.py defines it (and nothing else does), its Triton launchers come from
    kernels/<op>.py through an import statement, csrc/<op>.cpp registers its CPU kernels, and it has its
    test and benchmark files."""
    fused = REGISTRY[name]
    assert {f.__module__ for f in fused.functions} == {f"cycleseg.ops.{name}"}
    assert fused.triton().__name__ == f"cycleseg.kernels.{name}" if _has_triton() else True
    source = (ROOT / "cycleseg" / "ops" / f"{name}.py").read_text()
    imports = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom) and n.module == "kernels"
               and n.level == 2]
    assert [a.name for n in imports for a in n.names] == [name]
    for path in (f"kernels/{name}.py", f"tests/test_{name}.py", f"benchmarks/bench_{name}.py"):
        assert (ROOT / path).exists(), path
    cpp = (ROOT / "csrc" / f"{name}.cpp").read_text()
    registered = re.findall(r'm\.impl\("(\w+)"', cpp)
    assert sorted(registered) == sorted(fused.dispatcher_ops)


def test_no_central_file_names_the_ops():
    """The registry, the C++ module, the CPU builder, the launcher layer, the compile gate, the roofline,
    the launch capture and the GPU check name no op: they iterate the registry or find the files."""
    central = ["cycleseg/ops/registry.py", "cycleseg/ops/cpu.py", "cycleseg/ops/cuda.py", "cycleseg/ops/testing.py",
               "csrc/module.cpp", "csrc/common.h", "benchmarks/compile_check.py", "benchmarks/roofline.py",
               "benchmarks/launches.py", "benchmarks/gpu_check.sh"]
    for path in central:
        text = (ROOT / path).read_text()
        for name in REGISTRY:
            assert name not in text, f"{path} names the op {name}"


def _has_triton() -> bool:
    try:
        import triton  # noqa: F401  (optional: the Triton module check needs it)
    except ImportError:
        return False
    return True


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="the Triton kernels run on CPU tensors only "
                    "through the interpreter")
def test_the_interpreter_backend_is_scoped_to_its_block():
    x = torch.randn(1, 3, 4, 4)
    with ops.cpu_backend("triton"):
        assert ".cpp" not in kernels_of("instance_norm_relu")["CPU"]
        inside = ops.instance_norm_relu(x)
    assert kernels_of("instance_norm_relu")["CPU"].startswith(str(cpu.CSRC / "instance_norm_relu.cpp"))
    torch.testing.assert_close(inside, ops.instance_norm_relu(x), rtol=1e-5, atol=1e-5)


def test_losses_in_fp32_under_bf16_autocast():
    """As F.cross_entropy and F.mse_loss, which autocast runs in fp32."""
    conv = torch.nn.Conv2d(3, 4, 1)
    x = torch.randn(2, 3, 8, 8)
    t = torch.randint(0, 4, (2, 8, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(x)
        assert logits.dtype == torch.bfloat16
        ce = ops.softmax_cross_entropy(logits, t)
        ls = ops.lsgan_loss(logits[:, :1], 1.0)
        disc = ops.lsgan_disc_loss(logits[:, :1], logits[:, 1:2])
        assert ce.dtype == ls.dtype == disc.dtype == F.cross_entropy(logits, t).dtype == torch.float32
    (ce + ls + disc).backward()
    assert conv.weight.grad.dtype == torch.float32 and torch.isfinite(conv.weight.grad).all()


LOAD = "from cycleseg.ops.cpu import extension; extension(); print('loaded')"
KILLED_WHILE_LOADING = """
import sys, time
from pathlib import Path
from cycleseg.ops.cpu import build_lock
folder = Path(sys.argv[1])
with build_lock(folder):
    (folder / "lock").touch()          # what torch's load holds while it builds or loads
    print("loading", flush=True)
    time.sleep(600)
"""


def test_a_load_killed_midway_blocks_no_later_one(tmp_path):
    """A process killed inside the load leaves torch's lock file behind (torch's own loader then waits
    on it forever); the next load takes the lock the killed process held and loads."""
    name = f"cycleseg_cpu_{cpu.cpu_tag()}"
    cpu.extension()
    shutil.copytree(cpu.build_folder(name), tmp_path / name)       # this session's build: nothing to rebuild
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path)}
    killed = procs.Proc([sys.executable, "-c", KILLED_WHILE_LOADING, tmp_path / name], env=env)
    for _ in range(600):
        if "loading" in killed.stdout or killed.p.poll() is not None:
            break
        time.sleep(0.05)
    assert "loading" in killed.stdout, killed.stderr[-2000:]
    killed.kill()
    assert (tmp_path / name / "lock").exists()
    r = procs.run([sys.executable, "-c", LOAD], 300, env=env)
    assert r.returncode == 0 and "loaded" in r.stdout, r.stderr[-3000:]
    assert not (tmp_path / name / "lock").exists()


def test_a_damaged_library_is_built_again_and_a_bad_folder_named(tmp_path, capsys):
    """A built library whose bytes differ from those recorded after its build (truncated, garbled, emptied:
    loading it would kill the process) is removed with its build, so that it is built again; a build folder
    that is a file or cannot be written is named, with what to do (no compiler advice)."""
    from cycleseg.ops.cpu import CHECKSUM, BuildFolderError, build_lock, drop_damaged_build, library_sha256

    folder = tmp_path / "ext"
    folder.mkdir()
    (folder / "x.so").write_bytes(b"\x7fELF" + b"\x00" * 100)
    (folder / "a.o").write_bytes(b"object")
    (folder / CHECKSUM).write_text(library_sha256(folder / "x.so") + "\n")
    (folder / "cycleseg.lock").write_text("")
    drop_damaged_build(folder, "x")
    assert (folder / "x.so").exists() and (folder / "a.o").exists()             # intact: kept
    (folder / "x.so").write_bytes(b"\x7fELF" + b"\x00" * 50)                      # truncated
    drop_damaged_build(folder, "x")
    assert sorted(p.name for p in folder.iterdir()) == ["cycleseg.lock"]
    assert "building it again" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    with pytest.raises(BuildFolderError, match="is a file"):
        with build_lock(tmp_path / "file"):
            pass
    for name in ("cycleseg.lock", "lock"):                          # ours, torch's: made folders by hand
        (tmp_path / name / name).mkdir(parents=True)
        with pytest.raises(BuildFolderError, match=f"{name} is a folder or special file, where cycleseg keeps a file "
                                                   f"of its C.. kernels' build; remove it, or set TORCH_EXTENSIONS_DIR"):
            with build_lock(tmp_path / name):
                pass
    for name in ("x.so", CHECKSUM):                                 # the library, its checksum: a traceback before
        made = tmp_path / f"made-{name}"
        (made / name).mkdir(parents=True)
        with pytest.raises(BuildFolderError, match=f"{name} is a folder or special file"):
            drop_damaged_build(made, "x")
    assert issubclass(BuildFolderError, OSError)                   # every command reports it in one line


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_a_signal_during_the_kernels_build_stops_the_command(tmp_path, monkeypatch, signum):
    """Ctrl-C or SIGTERM during the first build reaches ninja too, which stops ("interrupted by user"): the
    command stops as the signal asks (usage.Stopped: one line, 128 + the signal), not with a build error's
    traceback advising a C++ compiler."""
    import signal

    from torch.utils import cpp_extension

    from cycleseg.faults import StopSignals
    from cycleseg.ops import cpu
    from cycleseg.usage import Stopped

    def interrupted(**kwargs):
        signal.raise_signal(getattr(signal, signum))                # the signal reaches this process and ninja
        raise RuntimeError("Error building extension 'x': ninja: build stopped: interrupted by user.")

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(cpp_extension, "load", interrupted)
    with StopSignals():                                             # as train holds them
        with pytest.raises(Stopped) as stop:
            cpu.extension.__wrapped__()
    assert stop.value.signum == getattr(signal, signum)
    monkeypatch.setattr(cpp_extension, "load", lambda **kwargs: (_ for _ in ()).throw(RuntimeError("no compiler")))
    with pytest.raises(RuntimeError, match="They need a C\\+\\+17 compiler"):
        cpu.extension.__wrapped__()                                 # a real failure keeps its advice
