"""The C++ CPU kernels (csrc/), compiled with torch.utils.cpp_extension on first use and cached in
torch's extension folder (`TORCH_EXTENSIONS_DIR`, default ~/.cache/torch_extensions): about a minute
once per machine, Python and torch version, then a fast import. Loading the extension registers its
kernels as the CPU kernels of the cycleseg:: ops (each csrc/<op>.cpp registers its own with
TORCH_LIBRARY_IMPL). The sources are every .cpp file of csrc/, found, not listed.

Processes that load it at once (torchrun's, a grid's) take turns on an flock of the build folder, which
the kernel releases when its holder dies. torch's own lock is a file that a process killed while
building or loading leaves behind, and every later load then waits on it forever; under our lock no
other process is loading, so such a file is stale and is removed.

Until it is loaded, each op's CompositeExplicitAutograd kernel (`stand_in`) stands in: for CPU tensors it
builds and loads the extension, then calls the op again, which the dispatcher now sends to the C++
kernel; other devices without a kernel of their own get a clear error. No compiler -> a RuntimeError
saying so; nothing falls back silently.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import platform
import signal
import sys
from pathlib import Path

try:
    import fcntl
except ImportError:                                                 # Windows: torch's lock file only
    fcntl = None

import torch

from ..faults import StopSignals
from ..kernels import common
from ..usage import Stopped

MODULE = "module.cpp"                   # the extension module (the testing switch); every other .cpp is an op's


def csrc_dir() -> Path:
    """The C++ sources: cycleseg/csrc (in a checkout, a link to the top-level csrc/)."""
    package = Path(__file__).resolve().parents[1]
    for d in (package / "csrc", package.parent / "csrc"):
        if (d / MODULE).exists():
            return d
    return package / "csrc"


CSRC = csrc_dir()


def sources() -> list[str]:
    """The extension's sources: module.cpp and each op's csrc/<op>.cpp."""
    return sorted(p.name for p in CSRC.glob("*.cpp"))


# Built for this machine's CPU (-march=native: AVX2 / AVX-512 vector loops). -O2 with the dynamic cost
# model vectorises the kernels' loops (plain -O2 in GCC 12 refuses loops of unknown length);
# -fno-trapping-math lets the float exp's float->int conversion vectorise (no NaN or rounding change).
# Not -O3: GCC 12 with -O3 -march=native miscompiled the fp64 instance-norm backward (the tests caught it).
FLAGS = ["-O2", "-fvect-cost-model=dynamic", "-fno-trapping-math", "-march=native", "-fopenmp"]


def cpu_tag() -> str:
    """A short hash of the sources and their folder, CPU model, flags, Python and torch: a build is never
    loaded for another CPU or interpreter, nor after the sources changed; each source tree builds in a
    folder of its own (torch rebuilds when the sources' paths change, so two checkouts sharing a folder
    would rebuild in turn)."""
    info = str(CSRC) + platform.machine() + " ".join(FLAGS) + sys.version + torch.__version__
    try:
        with open("/proc/cpuinfo") as f:
            info += "".join(ln for ln in f if ln.startswith(("model name", "flags")))[:4096]
    except OSError:
        pass
    for s in sources() + ["common.h"]:
        p = CSRC / s
        info += p.read_text() if p.exists() else ""
    return hashlib.sha1(info.encode()).hexdigest()[:8]


def build_folder(name: str) -> Path:
    """Where the extension `name` is built: torch's extension folder, one subfolder per build."""
    from torch.utils import cpp_extension      # heavy compiler tooling, needed only to build or load

    root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
    return Path(root) / name


@contextlib.contextmanager
def build_lock(folder: Path):
    """Hold the folder's flock (waiting, with a note, for another process's build); remove torch's stale
    lock file."""
    if folder.exists() and not folder.is_dir():
        raise BuildFolderError(f"{folder} is a file, where cycleseg's C++ kernels are built; remove it, or set "
                               f"TORCH_EXTENSIONS_DIR to another folder")
    for p in (folder / "cycleseg.lock", folder / "lock"):              # ours, and torch's FileBaton
        refuse_non_file(p)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        f = open(folder / "cycleseg.lock", "a")
    except OSError as e:
        raise BuildFolderError(f"cannot write {folder}, where cycleseg's C++ kernels are built ({e.strerror or e}); "
                               f"set TORCH_EXTENSIONS_DIR to a writable folder") from None
    with f:
        if fcntl is not None:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                print(f"waiting for another process that builds or loads cycleseg's C++ kernels in {folder} ...",
                      file=sys.stderr, flush=True)
                fcntl.flock(f, fcntl.LOCK_EX)
            (folder / "lock").unlink(missing_ok=True)               # torch's FileBaton, left by a killed process
        yield


def refuse_non_file(path: Path) -> None:
    """BuildFolderError when a file of the build (a lock, the library, its checksum) is a folder or a special
    file (made by hand: not deleted for the user)."""
    if (path.exists() or path.is_symlink()) and not path.is_file():
        raise BuildFolderError(f"{path} is a folder or special file, where cycleseg keeps a file of its C++ kernels' "
                               f"build; remove it, or set TORCH_EXTENSIONS_DIR to another folder")


class BuildFolderError(OSError):
    """The extension folder cannot be used (not a folder, not writable): no compiler would help. An OSError,
    so that every command reports it in one line as it reports other file-system failures."""


CHECKSUM = "cycleseg.sha256"            # the built library's sha256, written after a build loaded


def library_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def drop_damaged_build(folder: Path, name: str) -> None:
    """Under the lock, before loading: a built library whose bytes are not those recorded after its build
    (truncated, garbled, emptied: loading it would kill the process with a bus error) is removed with
    everything built beside it, so that it is built again."""
    lib_file = folder / f"{name}.so"
    sums = folder / CHECKSUM
    for p in (lib_file, sums):
        refuse_non_file(p)
    if not lib_file.exists():
        return
    if sums.exists() and sums.read_text().strip() == library_sha256(lib_file):
        return
    print(f"note: {lib_file} is not the library built there ({'checksum differs' if sums.exists() else 'no checksum'}); "
          f"building it again", file=sys.stderr, flush=True)
    for p in folder.iterdir():
        if p.name != "cycleseg.lock" and p.is_file():
            p.unlink()


@functools.lru_cache(maxsize=None)
def extension():
    """The compiled extension, loaded (built on the first call); its kernels are then registered."""
    # Heavy (imports the compiler tooling) and needed once: imported here rather than with the package.
    from torch.utils import cpp_extension
    if not (CSRC / MODULE).exists() or not (CSRC / "common.h").exists():
        raise RuntimeError(f"cycleseg's C++ sources are missing from {CSRC} ({MODULE}, common.h); "
                           f"reinstall cycleseg (pip install cycleseg, or pip install -e . in its source tree)")
    name = f"cycleseg_cpu_{cpu_tag()}"
    folder = build_folder(name)
    with build_lock(folder):
        drop_damaged_build(folder, name)
        try:
            ext = cpp_extension.load(name=name, sources=[str(CSRC / s) for s in sources()], extra_cflags=FLAGS,
                                     extra_ldflags=["-fopenmp"], build_directory=str(folder), verbose=False)
        except Exception as e:
            if "interrupted by user" in str(e) or StopSignals.received is not None:   # Ctrl-C / SIGTERM reached ninja too
                raise Stopped(StopSignals.received or signal.SIGINT) from None
            raise RuntimeError(
                f"could not build cycleseg's C++ CPU kernels from {CSRC}: {e}\n"
                f"They need a C++17 compiler and ninja (pip install ninja). Use --no-fast to train "
                f"without them.") from e
        lib_file = folder / f"{name}.so"
        if lib_file.exists() and not (folder / CHECKSUM).exists():
            (folder / CHECKSUM).write_text(library_sha256(lib_file) + "\n")
    ext.set_poison_outputs(common.poisoning())
    return ext


def loaded() -> bool:
    return extension.cache_info().currsize > 0


def stand_in(name: str):
    """The CompositeExplicitAutograd kernel of op `name`: loads the C++ kernels on its first CPU call."""
    def run(*args):
        device = args[0].device
        if device.type != "cpu":
            raise RuntimeError(f"cycleseg::{name} has no kernel for {device} tensors (CPU: C++, CUDA: Triton)")
        extension()
        if not torch._C._dispatch_has_kernel_for_dispatch_key(f"cycleseg::{name}", "CPU"):
            raise RuntimeError(f"cycleseg's C++ extension loaded without a CPU kernel for {name}")
        return getattr(torch.ops.cycleseg, name).default(*args)
    run.__name__ = f"{name}_load_cpu"
    return run

