"""Compile every Triton kernel of cycleseg for a GPU target without a GPU, and report its resources.

    python benchmarks/compile_check.py [--arch 90] [--ptxas]

Triton compiles for sm_90 on a CPU machine; this catches API differences between Triton versions (the
GPU machines run Triton 3.6, development machines a newer one) and shows registers and spills (with
--ptxas, through the ptxas that ships in Triton's wheel). Signatures mimic the launchers at training
shapes: pointers 16-byte aligned, strides of 1 specialised as constants as the launcher would.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.pop("TRITON_INTERPRET", None)


def kernels():
    """(name, jit function, {arg: type or constexpr value}) for every kernel, fp32 at training shapes."""
    from cycleseg.ops.backend import triton_kernels

    inr, ls, ce = (triton_kernels(op) for op in ("instance_norm_relu", "lsgan_loss", "softmax_cross_entropy"))

    f32, i32, u8 = "*fp32", "i32", "*u8"
    acc = {"ACC": "fp32"}
    ce_common = dict(K=i32, HW=i32, W=i32, blocks_per_image=i32, sxn=i32, sxk=i32, sxh=i32, sxw=1, sw_k=i32,
                     ignore_index=i32)
    yield "ce_fwd", ce._fwd, dict(x_ptr=f32, t_ptr=u8, w_ptr=f32, out_ptr=f32, part_ptr=f32, **ce_common,
                                  HAS_WEIGHT=False, PER_PIXEL=False, FLAT=True, **acc, BLOCK_P=ce.BLOCK_P)
    yield "ce_finalize", ce._finalize, dict(part_ptr=f32, num_parts=i32, out_ptr=f32, denom_ptr=f32, MEAN=True,
                                            **acc, BLOCK=ce.FINAL_BLOCK)
    yield "ce_bwd", ce._bwd, dict(x_ptr=f32, t_ptr=u8, w_ptr=f32, g_ptr=f32, denom_ptr=f32, dx_ptr=f32,
                                  **{k: v for k, v in ce_common.items() if k not in ("sw_k", "ignore_index")},
                                  sdn=i32, sdk=i32, sdh=i32, sdw=1, sw_k=i32, ignore_index=i32, HAS_WEIGHT=False,
                                  PER_PIXEL=False, FLAT_X=True, FLAT_D=True, **acc, BLOCK_P=ce.BLOCK_P)
    for hw in (4096, 16384):
        yield f"in_plane_fwd HW={hw}", inr._plane_fwd, dict(x_ptr=f32, y_ptr=f32, mean_ptr=f32, rstd_ptr=f32,
                                                            HW=i32, eps="fp32", SLOPE=0.0, **acc, BLOCK=hw)
        yield f"in_plane_bwd HW={hw}", inr._plane_bwd, dict(dy_ptr=f32, x_ptr=f32, mean_ptr=f32, rstd_ptr=f32,
                                                            dx_ptr=f32, HW=i32, SLOPE=0.0, **acc, BLOCK=hw)
    for layout, (br, bc) in {"nchw": (256, 8), "channels_last": (32, 64)}.items():
        strides = dict(sn=i32, sc=1 if layout == "channels_last" else i32, sh=i32, sw=1 if layout == "nchw" else i32)
        sx = {f"sx{k[1:]}": v for k, v in strides.items()}
        sy = {f"sy{k[1:]}": v for k, v in strides.items()}
        sg = {f"sg{k[1:]}": v for k, v in strides.items()}
        sd = {f"sd{k[1:]}": v for k, v in strides.items()}
        tiles = dict(C=i32, HW=i32, W=i32, chunk=i32, S=i32)
        blocks = dict(BLOCK_R=br, BLOCK_C=bc)
        yield f"in_tiles_stats {layout}", inr._tiles_stats, dict(x_ptr=f32, part_ptr=f32, **tiles, **strides,
                                                                 FLAT=True, **acc, **blocks)
        yield f"in_tiles_fwd {layout}", inr._tiles_fwd, dict(x_ptr=f32, y_ptr=f32, part_ptr=f32, mean_ptr=f32,
                                                             rstd_ptr=f32, **tiles, eps="fp32", **sx, **sy,
                                                             SLOPE=0.2, FLAT_X=True, FLAT_Y=True, **acc, **blocks)
        yield f"in_tiles_bwd_sums {layout}", inr._tiles_bwd_sums, dict(
            dy_ptr=f32, x_ptr=f32, mean_ptr=f32, rstd_ptr=f32, part_ptr=f32, **tiles, **sg, **sx, SLOPE=0.0,
            FLAT_G=True, FLAT_X=True, **acc, **blocks)
        yield f"in_tiles_bwd {layout}", inr._tiles_bwd, dict(
            dy_ptr=f32, x_ptr=f32, mean_ptr=f32, rstd_ptr=f32, part_ptr=f32, dx_ptr=f32, **tiles, **sg, **sx, **sd,
            SLOPE=0.0, FLAT_G=True, FLAT_X=True, FLAT_D=True, **acc, **blocks)
    yield "lsgan_partials", ls._partials, dict(a_ptr=f32, b_ptr=f32, na=i32, nb=i32, ta="fp32", tb="fp32",
                                               part_ptr=f32, blocks_a=i32, **acc, BLOCK=ls.BLOCK)
    yield "lsgan_finalize", ls._finalize, dict(part_ptr=f32, blocks_a=i32, blocks_b=i32, na=i32, nb=i32,
                                               out_ptr=f32, DISC=True, **acc, BLOCK=ls.FINAL_BLOCK)
    yield "lsgan_bwd", ls._bwd, dict(g_ptr=f32, a_ptr=f32, b_ptr=f32, da_ptr=f32, db_ptr=f32, na=i32, nb=i32,
                                     ta="fp32", tb="fp32", blocks_a=i32, coef="fp32", **acc, BLOCK=ls.BLOCK)


def compile_one(fn, args: dict, arch: int, num_warps: int = 4):
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = fn.arg_names
    missing = set(names) - set(args)
    if missing:
        raise ValueError(f"{fn.__name__}: no value for {sorted(missing)}")
    signature, constexprs = {}, {}
    for n in names:
        v = args[n]
        if n == "ACC":                                              # the accumulation dtype (constexpr)
            signature[n], constexprs[n] = "constexpr", {"fp32": tl.float32, "fp64": tl.float64}[v]
        elif isinstance(v, str) and (v.startswith("*") or v in ("i32", "i64", "fp32")):
            signature[n] = v
        else:                                                       # constexpr or a specialised constant 1
            signature[n], constexprs[n] = "constexpr", v
    # The launcher's specialisation: pointers are 16-byte aligned, and integers divisible by 16 (sizes
    # and strides at training shapes: 64x64 planes and up) are marked so.
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n, v in args.items()
             if isinstance(v, str) and (v.startswith("*") or v in ("i32", "i64"))}
    src = ASTSource(fn, signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})


def ptxas_report(ptx: str, arch: int) -> str:
    import triton

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "k.ptx"
        p.write_text(ptx)
        out = subprocess.run([str(ptxas), f"-arch=sm_{arch}a", "-v", str(p), "-o", str(Path(d) / "k.cubin")],
                             capture_output=True, text=True)
    text = out.stderr + out.stdout
    regs = re.search(r"Used (\d+) registers", text)
    spill = re.search(r"(\d+) bytes spill stores", text)
    return f"{regs.group(1) if regs else '?'} registers, {spill.group(1) if spill else '?'} bytes spilled"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--ptxas", action="store_true", help="report registers and spills through ptxas")
    a = p.parse_args(argv)
    import triton
    print(f"triton {triton.__version__}, target sm_{a.arch}")
    failed = 0
    for name, fn, args in kernels():
        warps = 16 if "plane" in name and "16384" in name else 4
        try:
            k = compile_one(fn, args, a.arch, warps)
            ptx = k.asm["ptx"]
            vec = len(re.findall(r"ld\.global[\w.:]*\.v4", ptx))
            line = f"ok    {name:32s} {vec:3d} 16-byte loads"
            if a.ptxas:
                line += ", " + ptxas_report(ptx, a.arch)
            print(line)
        except Exception as e:                                      # report every kernel, then fail
            failed += 1
            print(f"FAIL  {name:32s} {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
