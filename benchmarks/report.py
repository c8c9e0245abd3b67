"""Markdown tables from a pytest-benchmark JSON file of cycleseg's benchmarks.

    python benchmarks/report.py results.json

Ops: one row per op, shape, dtype and pass: the median time of PyTorch's op (eager), of its
torch.compile, and of the fused op; the fused op's GB/s at the floor's bytes and its % of the device's
copy bandwidth (measured in the same run); the fused op's speed-up over eager and over compiled.
Steps: one row per variant: ms per step, images per second, peak memory, speed-up over --no-fast.
Data: images per second of each loader, and the loader's share of a training step.
"""
import argparse
import json
from collections import defaultdict


def variant_of(name: str) -> str:
    return name.split("[", 1)[1].rstrip("]").split("-")[0] if "[" in name else name


def ops_table(rows) -> list[str]:
    groups = defaultdict(dict)
    for b in rows:
        groups[b["group"]][variant_of(b["name"])] = b["extra_info"]
    first = next(iter(groups.values()))
    e0 = next(iter(first.values()))
    out = [f"Device: {e0['device']}, torch {e0['torch']}; copy bandwidth {e0['copy_gbs']:,.0f} GB/s (read + write).", "",
           "| op, shape, dtype, pass | eager ms | compiled ms | fused ms | fused GB/s | % of copy | fused vs eager | "
           "fused vs compiled |", "|---|---|---|---|---|---|---|---|"]
    for group in sorted(groups):
        v = groups[group]
        ms = {k: v[k]["median_ms"] if k in v else None for k in ("eager", "compiled", "fused")}
        cell = (lambda t: f"{t:.3f}" if t is not None else "-")
        row = f"| {group} | {cell(ms['eager'])} | {cell(ms['compiled'])} | {cell(ms['fused'])} |"
        if ms["fused"]:
            f = v["fused"]
            gbs = f["bytes"] / (ms["fused"] / 1e3) / 1e9
            row += f" {gbs:,.0f} | {100 * gbs / f['copy_gbs']:.0f} % |"
            for base in ("eager", "compiled"):
                row += f" {ms[base] / ms['fused']:.2f}x |" if ms[base] else " - |"
        else:
            row += " - | - | - | - |"
        out.append(row)
    return out


def steps_table(rows) -> list[str]:
    groups = defaultdict(dict)
    for b in rows:
        groups[b["group"]][variant_of(b["name"])] = b["extra_info"]
    out = []
    for group, v in sorted(groups.items()):
        e0 = next(iter(v.values()))
        out += [f"{group} on {e0['device']}, torch {e0['torch']}:", "",
                "| variant | what runs | ms per step | images/s | peak GiB | vs --no-fast | compile s |",
                "|---|---|---|---|---|---|---|"]
        base = v.get("no_fast", {}).get("step_ms")
        for name, e in v.items():
            speed = f"{base / e['step_ms']:.2f}x" if base else "-"
            peak = f"{e['peak_gib']:.2f}" if e.get("peak_gib") is not None else "-"
            out.append(f"| {name} | {e['plan']} | {e['step_ms']:.1f} | {e['images_per_s']:.1f} | {peak} | {speed} | "
                       f"{e['warmup_s']:.0f} |")
        ref = v.get("no_fast", {}).get("first_step_terms")
        if ref:
            out += ["", "First step from the same weights and batch, largest relative difference of a loss term "
                    "from --no-fast: " + ", ".join(
                        f"{name} {max(abs(e['first_step_terms'][k] / ref[k] - 1) for k in ref):.1e}"
                        for name, e in v.items() if name != "no_fast" and "first_step_terms" in e)]
        out.append("")
    return out


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("json")
    a = p.parse_args(argv)
    data = json.load(open(a.json))
    bench = data["benchmarks"]
    kinds = defaultdict(list)
    for b in bench:
        e = b["extra_info"]
        kinds["data" if "images" in e or "step_s" in e else "step" if "step_ms" in e else "op"].append(b)
    lines = []
    for b in kinds["data"]:
        e, med = b["extra_info"], b["stats"]["median"]
        if "images" in e:
            lines.append(f"- {b['group']}: {b['name']}: {e['images'] / med:,.0f} images/s (median {med * 1e3:.1f} ms "
                         f"for {e['images']} images)")
        else:
            lines.append(f"- {b['group']}: step {e['step_s'] * 1e3:.0f} ms, of which waiting for data "
                         f"{e['loader_wait_s'] * 1e3:.2f} ms ({100 * e['loader_wait_s'] / e['step_s']:.2f} %)")
    if kinds["op"]:
        lines += ([""] if lines else []) + ops_table(kinds["op"])
    if kinds["step"]:
        lines += ([""] if lines else []) + steps_table(kinds["step"])
    print("\n".join(lines))


if __name__ == "__main__":
    main()
