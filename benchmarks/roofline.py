"""The roofline of the fused ops in the GPU step, predicted from the kernels' designs (no GPU needed).

    python benchmarks/roofline.py [--precision bf16|fp32] [--gbs 4050]

Captures the anchor's semi step with the GPU plan (benchmarks/launches.py: paper networks, 256x256,
batch 8 + 8, K = 21, channels_last) and, for every fused op call, counts the bytes its floor must move
and the bytes its design moves (from the kernels each call launched), then predicts each time at the
device's copy bandwidth (default: the H200's measured 4.05 TB/s). Predictions, not measurements: the
GPU check (gpu_check.sh) measures the ops.

Floors and designs (bytes per element or pixel; s = bytes per value) are each op's own (its module's
`roofline`, listed with --floors).
"""
from __future__ import annotations

import argparse
from collections import defaultdict

from launches import SIZES, capture_step, capturing

from cycleseg.ops import REGISTRY
from cycleseg.ops.registry import owner


def call_bytes(call: dict, kernels: set) -> tuple[float, float]:
    """(floor, design) bytes of one op call, by the op's own roofline."""
    return owner(call["op"]).roofline(call, kernels)


def table(precision: str, gbs: float) -> list[str]:
    with capturing() as rec:
        capture_step(rec, "semi", precision, "channels_last", SIZES[0])
    kernels = defaultdict(set)
    for r in rec.records:
        kernels[r["call"]].add(r["kernel"].split(":")[1])
    rows = defaultdict(lambda: [0, 0.0, 0.0, set()])
    for call in rec.calls:
        floor, design = call_bytes(call, kernels[call["call"]])
        shape = call["shapes"][0] if call["pass"] == "fwd" else call["shapes"][1]
        row = rows[(call["op"], call["pass"], "x".join(map(str, shape)))]
        row[0] += 1
        row[1] += floor
        row[2] += design
        row[3] |= kernels[call["call"]]
    out = [f"The {rec.calls[0]['where']}, {precision}, channels_last; predicted at "
           f"{gbs:,.0f} GB/s copy bandwidth.", "",
           "| op | pass | shape | calls | kernels | floor MB | design MB | design / floor | predicted us (design) | "
           "predicted us (floor) | measured us |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    total = [0.0, 0.0]
    for (op, pass_, shape), (n, floor, design, ks) in sorted(rows.items()):
        total[0] += floor
        total[1] += design
        out.append(f"| {op} | {pass_} | {shape} | {n} | {', '.join(sorted(ks))} | {floor / 1e6:.1f} | "
                   f"{design / 1e6:.1f} | {design / floor:.2f}x | {design / gbs / 1e3:.0f} | {floor / gbs / 1e3:.0f} | "
                   f"waiting for a GPU run |")
    out.append(f"| all fused ops | | | {len(rec.calls)} | | {total[0] / 1e6:.1f} | {total[1] / 1e6:.1f} | "
               f"{total[1] / total[0]:.2f}x | {total[1] / gbs / 1e3:.0f} | {total[0] / gbs / 1e3:.0f} | |")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--gbs", type=float, default=4050.0, help="copy bandwidth, GB/s (bytes read + written)")
    p.add_argument("--floors", action="store_true", help="print each op's floor and design, and stop")
    a = p.parse_args(argv)
    if a.floors:
        print("\n".join(f"{name}: {fused.floors}" for name, fused in REGISTRY.items()))
        return
    print("\n".join(table(a.precision, a.gbs)))


if __name__ == "__main__":
    main()
