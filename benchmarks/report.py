"""Markdown tables from a pytest-benchmark JSON file of cycleseg's benchmarks.

    python benchmarks/report.py results.json

Ops: one row per op, shape, dtype and pass: the median time of PyTorch's op (eager), of its
torch.compile, and of the fused op; the fused op's GB/s at the floor's bytes and its % of the device's
copy bandwidth (measured in the same run); the fused op's speed-up over eager and over compiled.
Steps: one row per variant: ms per step, images per second, peak memory, speed-up over --no-fast.
Inference: per network and batch, each variant's ms per batch, slices/s, speed-up over eager fp32 and
over onnxruntime, and its argmax agreement with eager fp32.
Data: per image size, each loader's images per second alone and the memory it adds, and feeding the\ntraining step: ms per step, the time waiting for data, the peak memory.
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
    graphed = {g: {k: v[k].get("graph_ms") for k in ("eager", "compiled", "fused") if k in v} for g, v in groups.items()}
    if any(t for g in graphed.values() for t in g.values()):
        out += ["", "Device time alone (CUDA graph replay of 10 calls; `-`: the call could not be captured):", "",
                "| op, shape, dtype, pass | eager ms | compiled ms | fused ms | fused GB/s | % of copy | fused vs eager |"
                " fused vs compiled |", "|---|---|---|---|---|---|---|---|"]
        for group in sorted(graphed):
            t, f = graphed[group], groups[group].get("fused", {})
            cell = (lambda x: f"{x:.3f}" if x else "-")
            row = f"| {group} | {cell(t.get('eager'))} | {cell(t.get('compiled'))} | {cell(t.get('fused'))} |"
            if t.get("fused"):
                gbs = f["bytes"] / (t["fused"] / 1e3) / 1e9
                row += f" {gbs:,.0f} | {100 * gbs / f['copy_gbs']:.0f} % |"
                row += "".join(f" {t[b] / t['fused']:.2f}x |" if t.get(b) else " - |" for b in ("eager", "compiled"))
            else:
                row += " - | - | - | - |"
            out.append(row)
    errors = sorted({e.get("graph_error") for v in groups.values() for e in v.values()} - {None, "not CUDA"})
    if errors:
        out += ["", "Calls that could not be captured in a CUDA graph: " + "; ".join(errors)]
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
        plain = v.get("pytorch_bf16", {}).get("step_ms")
        if plain and "fast" in v:
            out += ["", f"fast against the best plain-PyTorch eager setting (pytorch_bf16): "
                        f"{plain / v['fast']['step_ms']:.2f}x"]
        ref = v.get("no_fast", {}).get("first_step_terms")
        if ref:
            out += ["", "First step from the same weights and batch, largest relative difference of a loss term "
                    "from --no-fast: " + ", ".join(
                        f"{name} {max(abs(e['first_step_terms'][k] / ref[k] - 1) for k in ref):.1e}"
                        for name, e in v.items() if name != "no_fast" and "first_step_terms" in e)]
        out.append("")
    return out


def data_table(rows) -> list[str]:
    """One table per image size: each loader alone (images/s, memory it adds) and feeding the step."""
    by = defaultdict(dict)
    for b in rows:
        e = b["extra_info"]
        by[e["size"]].setdefault(e["loader"], {})["alone" if "images" in e else "step"] = (e, b["stats"]["median"])
    out = []
    for size, loaders in sorted(by.items()):
        rate = {n: v["alone"][0]["images"] / v["alone"][1] for n, v in loaders.items() if "alone" in v}
        best = max((n for n in rate if n != "streams"), key=rate.get, default=None)
        e0 = next(iter(next(iter(loaders.values())).values()))[0]
        out += [f"{size}x{size}, batch {e0['batch']}, {e0['cores']} cores:", "",
                "| loader | images/s alone | memory it adds (PSS MiB) | ms per step | waiting for data, ms | "
                "waiting, % of step | peak PSS feeding the step, MiB |", "|---|---|---|---|---|---|---|"]
        for name, v in loaders.items():
            row = f"| {name} |"
            row += f" {rate[name]:,.0f} | {v['alone'][0]['added_pss_mib']:.0f} |" if "alone" in v else " - | - |"
            if "step" in v:
                e = v["step"][0]
                row += (f" {e['step_s'] * 1e3:.0f} | {e['loader_wait_s'] * 1e3:.2f} | "
                        f"{100 * e['loader_wait_s'] / e['step_s']:.2f} % | {e['peak_pss_mib']:.0f} |")
            else:
                row += " - | - | - | - |"
            out.append(row)
        if best and "streams" in rate:
            out += ["", f"The streams: {rate['streams'] / rate[best]:.2f}x the images/s of the best DataLoader "
                        f"configuration ({best}).", ""]
    return out


def inference_table(rows) -> list[str]:
    groups = defaultdict(dict)
    for b in rows:
        groups[b["group"]][variant_of(b["name"])] = b["extra_info"]
    e0 = next(iter(next(iter(groups.values())).values()))
    out = [f"Device: {e0['device']}, torch {e0['torch']}.", "",
           "| network, size, batch | variant | ms per batch | slices/s | vs eager fp32 | vs onnxruntime | "
           "argmax agreement | bf16 |", "|---|---|---|---|---|---|---|---|"]
    for group in sorted(groups, key=lambda g: (g.split(",")[0], int(g.rsplit("batch ", 1)[1]))):
        v = groups[group]
        base, ort = v.get("eager_fp32", {}).get("ms"), v.get("onnxruntime", {}).get("ms")
        for name, e in sorted(v.items(), key=lambda kv: kv[1]["ms"]):
            out.append(f"| {group.removeprefix('G_IS inference, ')} | {name} | {e['ms']:.1f} | {e['slices_per_s']:,.0f} | "
                       + (f"{base / e['ms']:.2f}x" if base else "-") + " | "
                       + (f"{ort / e['ms']:.2f}x" if ort else "-")
                       + f" | {100 * e['argmax_agreement']:.2f} % | {'yes' if e['bf16'] else 'no'} |")
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
        kinds["data" if "images" in e or "step_s" in e else "step" if "step_ms" in e else
              "inference" if "slices_per_s" in e else "op"].append(b)
    lines = data_table(kinds["data"]) if kinds["data"] else []
    if kinds["op"]:
        lines += ([""] if lines else []) + ops_table(kinds["op"])
    if kinds["step"]:
        lines += ([""] if lines else []) + steps_table(kinds["step"])
    if kinds["inference"]:
        lines += ([""] if lines else []) + inference_table(kinds["inference"])
    print("\n".join(lines))


if __name__ == "__main__":
    main()
