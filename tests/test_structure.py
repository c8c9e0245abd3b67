"""The house rules, checked on the source: imports at module level (or commented why not) and no import
cycle in the package, no function over 60 lines, drawing in figures.py only, steps without the config."""
import ast
import signal
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cycleseg"


def modules():
    """{dotted name: (path, source lines, AST)} of every module of the package."""
    out = {}
    for p in sorted(PACKAGE.rglob("*.py")):
        rel = p.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        text = p.read_text()
        out[name] = (p, text.splitlines(), ast.parse(text))
    return out


def resolve(module: str, node: ast.ImportFrom) -> list[str]:
    """The package modules an `import` / `from ... import` statement of `module` names."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.startswith("cycleseg")]
    base = module.split(".")
    is_package = (PACKAGE / Path(*base[1:]) / "__init__.py").exists() if len(base) > 1 else True
    parts = base if is_package else base[:-1]
    if node.level:
        parts = parts[:len(parts) - node.level + 1]
        target = ".".join(parts + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if not target.startswith("cycleseg"):
        return []
    names = [f"{target}.{a.name}" for a in node.names]
    return [n if (ROOT / Path(*n.split("."))).with_suffix(".py").exists() or (ROOT / Path(*n.split("."))).is_dir()
            else target for n in names]


def test_module_level_imports_have_no_cycle():
    mods = modules()
    graph = {m: set() for m in mods}
    for m, (_, _, tree) in mods.items():
        for node in tree.body:                                      # module level only
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[m] |= {t for t in resolve(m, node) if t in graph and t != m}
    state = {}

    def visit(m, path):
        state[m] = "open"
        for t in sorted(graph[m]):
            if state.get(t) == "open":
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(t):] + [t]))
            if t not in state:
                visit(t, path + [t])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_imports_inside_functions_say_why():
    for m, (path, lines, tree) in modules().items():
        for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for node in (n for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))):
                here, above = lines[node.lineno - 1], lines[node.lineno - 2]
                assert "#" in here or above.strip().startswith("#"), f"{path}:{node.lineno}: {here.strip()}"


def test_no_function_over_60_lines():
    for m, (path, _, tree) in modules().items():
        for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            assert fn.end_lineno - fn.lineno + 1 <= 60, f"{path}:{fn.lineno} {fn.name}"


def test_only_figures_draws_and_figures_computes_nothing():
    for m, (path, lines, tree) in modules().items():
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "PIL"
                    for a in n.names}
        assert "ImageDraw" not in imported, f"{path} draws by hand (figures come from matplotlib)"
        plots = {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        plots |= {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        if m != "cycleseg.figures":
            assert "matplotlib" not in plots, f"{path} draws (figures.py does)"
    _, lines, _ = modules()["cycleseg.figures"]
    assert not any(ln.startswith(("import torch", "from torch", "from .models", "from .evaluate")) for ln in lines)


def test_steps_take_no_config():
    """No name, argument or attribute `cfg` / `config` in steps.py or a method's module: steps take explicit
    arguments (a method's own options, the run's facts)."""
    mods = modules()
    for m in ["cycleseg.steps"] + [m for m in mods if m.startswith("cycleseg.methods.")]:
        _, _, tree = mods[m]
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        names |= {a.arg for n in ast.walk(tree) if isinstance(n, ast.arguments) for a in n.args + n.kwonlyargs}
        names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        assert not names & {"cfg", "config", "Config"}, m


def test_a_method_is_defined_in_one_module():
    """Each registry entry's step, builder and options come from one module of cycleseg/methods; its options
    are embedded in the run's Config under its name, every flag of them carrying its help; no other module
    lists the modes."""
    import dataclasses

    from cycleseg.config import Config, flat_fields
    from cycleseg.methods import METHODS

    config_fields = {f.name: f for f in dataclasses.fields(Config)}
    for mode, method in METHODS.items():
        homes = {method.step.__module__, method.build.__module__} | ({method.options.__module__} if method.options
                                                                      else set())
        assert len(homes) == 1 and next(iter(homes)).startswith("cycleseg.methods."), (mode, homes)
        if method.options:
            assert config_fields[method.mode].default_factory is method.options
    assert all(f.metadata.get("help") for _, f in flat_fields().values())
    for m, (path, _, tree) in modules().items():
        if m.startswith("cycleseg.methods"):
            continue
        for node in ast.walk(tree):
            elts = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else \
                node.keys if isinstance(node, ast.Dict) else []
            named = {e.value for e in elts if isinstance(e, ast.Constant) and e.value in METHODS}
            assert len(named) < 3, f"{path}:{node.lineno} lists the modes {sorted(named)} (methods.METHODS does)"


def test_the_checker_sees_the_import_graph():
    """The cycle check reads real edges (a check that saw none could not fail)."""
    mods = modules()
    _, _, tree = mods["cycleseg.train"]
    targets = {t for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
               for t in resolve("cycleseg.train", node)}
    assert {"cycleseg.assemble", "cycleseg.config", "cycleseg.data.streams", "cycleseg.figures"} <= targets


def test_the_readme_layout_names_every_module():
    """Every module of the package appears in the README's layout table."""
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Layout"):]
    for p in sorted(PACKAGE.glob("*.py")):
        if p.name not in ("__init__.py", "__main__.py"):
            assert f"{p.name}`" in table, p.name
    for folder in ("ops/", "data/", "kernels/", "csrc/", "benchmarks/", "tests/"):
        assert folder in table, folder


def test_every_command_ends_quietly_when_its_reader_leaves():
    """`python -m cycleseg.X ... | head`: each command's entry goes through usage.run_command, which turns a
    closed output into exit status 141 instead of a BrokenPipeError traceback."""
    from cycleseg.usage import run_command

    entries = [m for m, (_, lines, _) in modules().items() if any("__name__ == \"__main__\"" in ln for ln in lines)]
    assert len(entries) >= 8
    for m in entries:
        _, lines, _ = modules()[m]
        assert any("sys.exit(run_command(main))" in ln for ln in lines), m

    import subprocess
    import sys

    code = ("import sys\nfrom cycleseg.usage import run_command\n"
            "def main():\n    raise BrokenPipeError(32, 'Broken pipe')\nsys.exit(run_command(main))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 141 and "Traceback" not in done.stderr, done.stderr
    assert run_command(lambda: 0) == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_unwinds_every_command_and_leaves_no_temporaries(tmp_path, signum):
    """SIGTERM, Ctrl-C or SIGHUP (the terminal closed) while a command writes (every command's entry is usage.run_command): a multi-file
    output being renamed into place is completed first (stop_deferred), the write's temporaries
    (atomic_path's file, write_files' stage) and the folders made for it are removed, and the command ends
    with one line saying so and 128 + the signal, no traceback."""
    import subprocess
    import sys

    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from cycleseg.fileio import atomic_path, write_files\n"
        "from cycleseg.usage import run_command\n"
        "root = Path(sys.argv[1])\n"
        "def main():\n"
        "    write_files(root / 'out', {'a.txt': b'old'})\n"
        "    with atomic_path(root / 'new' / 'deep' / 'x.h5') as tmp:\n"
        "        tmp.write_bytes(b'half')\n"
        "        write_files(root / 'out', {'a.txt': b'new', 'sub/b.txt': b'new'})\n"
        "    return 0\n"
        "real = os.replace\n"
        "def replace(src, dst):\n"
        "    if str(dst).endswith('b.txt'):\n"
        f"        os.kill(os.getpid(), {int(signum)})\n"
        f"        os.kill(os.getpid(), {int(signum)})\n"      # twice: the cleanup still runs whole
        "    return real(src, dst)\n"
        "os.replace = replace\n"
        "sys.exit(run_command(main))\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 128 + signum and len(err) == 1, done.stderr
    assert err[0].startswith(f"error: stopped by {signal.Signals(signum).name} as it finished writing its "
                             f"outputs: they are complete"), err
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert left == ["out", "out/a.txt", "out/sub", "out/sub/b.txt"], left          # x.h5 and new/deep: removed
    assert (tmp_path / "out" / "a.txt").read_bytes() == (tmp_path / "out" / "sub" / "b.txt").read_bytes() == b"new"


def test_a_signal_caught_inside_a_finalizer_still_stops_the_command(tmp_path):
    """SIGTERM whose handler runs while Python finalizes an object (h5py's and torch's objects have finalizers
    and weakref callbacks): Python drops the exception raised there, but the command must still stop before
    its next output, with one line and 143, instead of writing it and exiting 0."""
    import subprocess
    import sys

    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from cycleseg.fileio import atomic_write_text\n"
        "from cycleseg.usage import run_command\n"
        "class Finalized:\n"
        "    def __del__(self):\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        sum(range(10000))\n"                                # the handler runs here, inside __del__
        "def main():\n"
        "    Finalized()\n"
        "    atomic_write_text(Path(sys.argv[1]) / 'out.txt', 'written')\n"
        "    return 0\n"
        "sys.exit(run_command(main))\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 143 and len(err) == 1 and "stopped by SIGTERM" in err[0], done.stderr
    assert sorted(tmp_path.iterdir()) == [], sorted(tmp_path.iterdir())


def test_a_signal_that_a_library_wraps_in_its_own_error_still_stops_the_command(tmp_path):
    """SIGTERM during an ONNX export: torch.onnx's exporter catches our Stopped and raises its own error
    from it; the command ended with that error's traceback and exit 1, not the stop's one line and 143."""
    import subprocess
    import sys

    code = (
        "import os, signal, sys\n"
        "from cycleseg.usage import run_command\n"
        "def main():\n"
        "    try:\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        sum(range(10000))\n"
        "    except BaseException as e:\n"                            # as the exporter does
        "        raise RuntimeError('Failed to export the model') from e\n"
        "    return 0\n"
        "sys.exit(run_command(main))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 143 and len(err) == 1 and "stopped by SIGTERM" in err[0], done.stderr


def test_a_signal_while_outputs_are_committed_waits_for_them_and_says_so(tmp_path):
    """SIGTERM between the renames of a multi-file output (predict's commit): the command said "nothing it
    was writing was kept" while the new files were all in place, and left the staging folder with the
    replaced files behind (the next write removed it)."""
    import subprocess
    import sys

    (tmp_path / "out").mkdir()
    for name in ("a.txt", "b.txt"):
        (tmp_path / "out" / name).write_text("old")
    code = (
        "import os, signal, sys\n"
        "from cycleseg import fileio\n"
        "from cycleseg.usage import run_command\n"
        "commit = fileio.commit\n"
        "def signalled(*a, **k):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"                   # arrives between the renames
        "    commit(*a, **k)\n"
        "fileio.commit = signalled\n"
        "def main():\n"
        "    fileio.write_files(sys.argv[1], {'a.txt': b'new', 'b.txt': b'new'})\n"
        "    return 0\n"
        "sys.exit(run_command(main))\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=120)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 143 and len(err) == 1 and "finished writing its outputs: they are complete" in err[0], err
    assert [(p.name, p.read_text()) for p in sorted((tmp_path / "out").iterdir())] == [("a.txt", "new"), ("b.txt", "new")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]              # no staging folder left


def test_a_signal_while_a_command_imports_or_after_it_finished(tmp_path):
    """Ctrl-C while `python -m cycleseg.X` still imports torch: one line, 130, no import traceback; a signal
    after the command has finished (the interpreter shutting down) leaves its exit status as it was, and is
    said in one note (it was ignored without a word: a grid signalled as it printed "wrote" exited 0 silently)."""
    import subprocess
    import sys
    import time

    p = subprocess.Popen([sys.executable, "-m", "cycleseg.evaluate", str(tmp_path / "none.pt")],
                         stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    err = p.communicate(timeout=120)[1].strip().splitlines()
    assert p.returncode == 130 and err == ["error: stopped by SIGINT before it began; nothing was written"], err
    code = ("import os, signal, sys\nfrom cycleseg.usage import run_command, stop_before_start\n"
            "stop_before_start()\n"
            "def main():\n    return int(sys.argv[1])\n"
            "code = run_command(main)\nos.kill(os.getpid(), signal.SIGTERM)\nsys.exit(code)\n")
    for status in (0, 2):
        done = subprocess.run([sys.executable, "-c", code, str(status)], capture_output=True, text=True, timeout=120)
        assert done.returncode == status and done.stderr.splitlines() == [
            "note: SIGTERM arrived after the command had finished; nothing was stopped (the exit status is the "
            "command's)"], done.stderr
    code = ("import atexit, signal, sys\nfrom cycleseg.usage import run_command, stop_before_start\n"
            "stop_before_start()\nrun_command(lambda: 0)\natexit._run_exitfuncs()\n"
            "print(all(signal.getsignal(s) == signal.SIG_IGN for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "True", (done.stdout, done.stderr)    # the finalisation's reset to the default
                                                                        # handlers would end it by the signal: 143
