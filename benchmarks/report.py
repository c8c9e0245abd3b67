"""Markdown table from a pytest-benchmark JSON file: median time, GB/s at the floor's bytes, speed-up
over the eager reference of the same group, and on a GPU % of the copy bandwidth given with --copy-gbs.

    python benchmarks/report.py results.json [--copy-gbs 4050]
"""
import argparse
import json
from collections import defaultdict


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("json")
    p.add_argument("--copy-gbs", type=float, default=None, help="measured device copy bandwidth, GB/s")
    a = p.parse_args(argv)
    data = json.load(open(a.json))
    groups = defaultdict(dict)
    special = [b for b in data["benchmarks"] if "images" in b["extra_info"] or "step_s" in b["extra_info"]]
    for b in special:
        e, med = b["extra_info"], b["stats"]["median"]
        if "images" in e:
            print(f"- {b['group']}: {b['name']}: {e['images'] / med:,.0f} images/s (median {med * 1e3:.1f} ms "
                  f"for {e['images']} images)")
        else:
            print(f"- {b['group']}: step {e['step_s'] * 1e3:.0f} ms, of which waiting for data "
                  f"{e['loader_wait_s'] * 1e3:.2f} ms ({100 * e['loader_wait_s'] / e['step_s']:.2f} %)")
    if special:
        print()
    for b in data["benchmarks"]:
        if b in special:
            continue
        variant = b["name"].split("[")[1].split("-")[0] if "[" in b["name"] else b["name"]
        groups[b["group"]][variant] = b
    pct = a.copy_gbs is not None
    print("| op, shape, pass | variant | median ms | GB/s (floor bytes) |" + (" % copy bw |" if pct else "")
          + " vs reference eager |")
    print("|---|---|---|---|" + ("---|" if pct else "") + "---|")
    for group in sorted(groups):
        base = groups[group].get("reference")
        for variant, b in sorted(groups[group].items(), key=lambda kv: kv[0]):
            med = b["stats"]["median"]
            gbs = b["extra_info"]["bytes"] / med / 1e9
            speed = f"{base['stats']['median'] / med:.2f}x" if base else "-"
            row = f"| {group} | {variant} | {med * 1e3:.2f} | {gbs:.1f} |"
            if pct:
                row += f" {100 * gbs / a.copy_gbs:.0f} % |"
            print(row + f" {speed} |")


if __name__ == "__main__":
    main()
