"""The compile gate: every Triton kernel launch of the training step, compiled for a GPU without one.

    python benchmarks/compile_check.py                      # installed Triton and 3.6.0 (the GPU machines')
    python benchmarks/compile_check.py --tritons installed  # the installed Triton only
    python benchmarks/compile_check.py --records r.json     # given launches instead of the captured ones

Launches are captured from the real steps (benchmarks/launches.py: semi, partial and adversarial, bf16
and fp32, channels_last and NCHW, the anchor's size, an odd size and the CPU preset) and from each op
alone at 63x65. Each distinct specialisation is compiled for sm_90 the way a launch would: Triton's
own binder specialises the arguments (integers equal to 1 become constants, integers divisible by 16
and 16-byte-aligned pointers get the divisibility attribute), then triton.compile; ptxas reports
registers, spills and shared memory. One line per specialisation names op, pass, kernel, dtype and
layout. Exit status 1 on any failure or spill: CI runs it (tests/test_compile_check.py), so a kernel
that a GPU would reject cannot land. Another Triton is fetched once with pip into
~/.cache/cycleseg/triton-<version> and used in a subprocess.
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

GPU_TRITON = "3.6.0"                # the Triton of the lent GPU machines (torch 2.11 image)
SM = {"regs": 65536, "smem": 228 * 1024, "warps": 64, "blocks": 32}   # Hopper (sm_90) per-SM limits


def cached_triton(version: str) -> Path:
    """A folder holding Triton `version` (pip install --target, once)."""
    target = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cycleseg" / f"triton-{version}"
    if not (target / "triton" / "__init__.py").exists():
        print(f"fetching triton=={version} into {target}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                        f"triton=={version}"], check=True, timeout=600)
    return target


# -- the worker: specialise and compile (runs with whichever Triton is first on the path) ---------------

def _decode(v):
    import torch
    import triton.language as tl

    if isinstance(v, dict) and "tensor" in v:                       # a stand-in with the dtype and alignment
        dtype = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16, "fp64": torch.float64,
                 "u8": torch.uint8, "i32": torch.int32, "i64": torch.int64}[v["tensor"]]
        base = torch.empty(64, dtype=dtype)                         # CPU allocations are 64-byte aligned
        return base if v["aligned"] else base[1:]
    if isinstance(v, dict) and "tl" in v:
        return tl.dtype(v["tl"])
    return v


def _function(kernel: str):
    module, name = kernel.split(":")
    return getattr(importlib.import_module(module), name)


def specialise(record: dict, arch: int):
    """(key, signature, constexprs, attrs, options) of a launch, from Triton's own binder."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = _function(record["kernel"])
    backend = make_backend(GPUTarget("cuda", arch, 32))
    args = [_decode(a) for a in record["args"]]
    kwargs = {k: _decode(v) for k, v in record["kwargs"].items()}
    kwargs.setdefault("debug", False)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, spec, options = binder(*args, **kwargs)
    key = f"{record['kernel']} {spec} {sorted(options.items()) if isinstance(options, dict) else options}"
    return key, fn._pack_args(backend, kwargs, bound, spec, options)


def _ptxas(ptx: str, arch: int) -> dict:
    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = get_ptxas(arch).path                                    # the ptxas Triton compiles with
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "k.ptx").write_text(ptx)
        out = subprocess.run([str(ptxas), f"-arch=sm_{arch}a", "-v", str(Path(d) / "k.ptx"), "-o",
                              str(Path(d) / "k.cubin")], capture_output=True, text=True, timeout=300)
    text = out.stderr + out.stdout
    found = {k: re.search(p, text) for k, p in (("regs", r"Used (\d+) registers"),
                                                   ("spill_stores", r"(\d+) bytes spill stores"),
                                                   ("spill_loads", r"(\d+) bytes spill loads"))}
    if out.returncode or not found["regs"]:
        raise RuntimeError(f"ptxas failed: {text.strip().splitlines()[-1] if text.strip() else out.returncode}")
    return {k: int(m.group(1)) if m else 0 for k, m in found.items()}


def compile_record(record: dict, arch: int) -> dict:
    """Compile one launch's specialisation; its resources, or the error."""
    import triton
    from triton.backends.compiler import GPUTarget

    try:
        _, (options, signature, constexprs, attrs) = specialise(record, arch)
        src = triton.compiler.ASTSource(_function(record["kernel"]), signature, constexprs, attrs)
        k = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options.__dict__)
        res = _ptxas(k.asm["ptx"], arch)
        loads = re.findall(r"ld\.global\S*", k.asm["ptx"])
        res.update(smem=int(k.metadata.shared), warps=int(k.metadata.num_warps), loads=len(loads),
                   vec_loads=sum(".v2" in x or ".v4" in x for x in loads))
        return {"ok": True, **res}
    except Exception as e:                                          # reported, then the gate fails
        first = str(e).strip().splitlines()
        return {"ok": False, "error": f"{type(e).__name__}: {first[0] if first else ''}"[:300]}


def blocks_per_sm(regs: int, smem: int, warps: int) -> int:
    """Resident programs per SM allowed by registers (allocated per warp in 256s), shared memory, warps."""
    per_warp = math.ceil(regs * 32 / 256) * 256
    by_regs = SM["regs"] // max(1, per_warp * warps)
    by_smem = SM["smem"] // smem if smem else SM["blocks"]
    return min(by_regs, by_smem, SM["warps"] // warps, SM["blocks"])


def _constexprs(record: dict) -> str:
    kw = record["kwargs"]
    shown = {k: v for k, v in kw.items() if k.isupper() and not isinstance(v, dict)}
    return " ".join(f"{k}={v}" for k, v in shown.items()) + (f" warps={kw['num_warps']}" if "num_warps" in kw else "")


def worker(records: list[dict], arch: int, jobs: int) -> int:
    import triton

    print(f"== triton {triton.__version__} ({Path(triton.__file__).parent}), sm_{arch}", flush=True)
    groups: dict = {}
    for r in records:
        key, _ = specialise(r, arch)
        groups.setdefault(key, []).append(r)
    firsts = [g[0] for g in groups.values()]
    failed = spilled = 0
    # spawned workers: a fork of this process (torch and Triton loaded, their threads possibly holding
    # locks) can deadlock in the child
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for r, res, n in zip(firsts, pool.map(compile_record, firsts, [arch] * len(firsts)),
                             (len(g) for g in groups.values())):
            name = r["kernel"].split(":")[1]
            head = f"{r['op']:22s} {r['pass']} {name:16s} {r['dtype']:4s} {r['layout']:13s}"
            if not res["ok"]:
                failed += 1
                print(f"FAIL  {head} {res['error']}  [{_constexprs(r)}; {r['where']}]", flush=True)
                continue
            spill = res["spill_stores"] + res["spill_loads"]
            spilled += spill > 0
            occ = blocks_per_sm(res["regs"], res["smem"], res["warps"])
            print(f"{'SPILL' if spill else 'ok   '} {head} regs {res['regs']:3d}  spill {spill:4d} B  "
                  f"smem {res['smem']:6d} B  blocks/SM {occ:2d}  loads {res['loads']:3d} ({res['vec_loads']} vector)  "
                  f"[{_constexprs(r)}]  x{n}; {r['where']}", flush=True)
    print(f"== triton {triton.__version__}: {len(groups)} specialisations from {len(records)} launches, "
          f"{failed} failed, {spilled} spilled", flush=True)
    return 1 if failed or spilled else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--tritons", nargs="+", default=["installed", GPU_TRITON],
                   help="Triton versions to compile with: 'installed' and/or versions fetched with pip")
    p.add_argument("--records", help="a JSON list of launches (default: captured from the steps now)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")          # Triton's default (3.9 warns it will change)
    if a.worker:
        return worker(json.loads(Path(a.records).read_text()), a.arch, a.jobs)
    if a.records:
        path = Path(a.records)
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))    # benchmarks/launches.py, beside this file
        from launches import capture_all

        path = Path(tempfile.mkdtemp(prefix="cycleseg-launches-")) / "launches.json"
        records = capture_all()
        path.write_text(json.dumps(records))
        print(f"captured {len(records)} launches -> {path}", flush=True)
    status = 0
    for version in a.tritons:
        env = dict(os.environ)
        if version != "installed":
            env["PYTHONPATH"] = os.pathsep.join([str(cached_triton(version)), env.get("PYTHONPATH", "")])
        cmd = [sys.executable, __file__, "--worker", "--records", str(path), "--arch", str(a.arch), "--jobs",
               str(a.jobs)]
        status |= subprocess.run(cmd, env=env).returncode
    return status


if __name__ == "__main__":
    sys.exit(main())
