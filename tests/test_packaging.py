"""A non-editable install ships what the package builds from: the C++ sources and the Triton kernels."""
import sys
import zipfile
from pathlib import Path

import pytest

import procs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    r = procs.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", ROOT, "-w", out],
                  300)
    assert r.returncode == 0, r.stderr[-3000:]
    (whl,) = out.glob("cycleseg-*.whl")
    return whl


def test_wheel_holds_cpp_sources_and_kernels(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    from cycleseg.ops import REGISTRY
    from cycleseg.ops.cpu import sources
    assert len(sources()) == len(REGISTRY) + 1
    for src in sources() + ["common.h"]:
        assert f"cycleseg/csrc/{src}" in names
    for op in REGISTRY:
        assert f"cycleseg/kernels/{op}.py" in names and f"cycleseg/csrc/{op}.cpp" in names


def test_installed_package_builds_from_its_own_sources(wheel, tmp_path):
    target = tmp_path / "site"
    r = procs.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", target, wheel], 300)
    assert r.returncode == 0, r.stderr[-3000:]
    probe = "import cycleseg.ops.cpu as c, cycleseg.kernels as k; print(c.CSRC); print(k.__file__)"
    r = procs.run([sys.executable, "-c", probe], 120, cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": ""})
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout.split()
    assert Path(out[0]) == target / "cycleseg" / "csrc"
    assert all((Path(out[0]) / s).exists() for s in ("module.cpp", "common.h"))
    assert Path(out[1]) == target / "cycleseg" / "kernels" / "__init__.py"
