"""The longer-training table and plot (ACDC, 10 % labels): each arm's final volume Dice at 1000, 2000 and
4000 steps over seeds 0-2, from the run folders of the grid and of the longer runs:

    python benchmarks/experiments/longer.py runs/acdc-methods runs/acdc-2000 runs/acdc-4000

Prints the markdown table and writes benchmarks/experiments/acdc-methods/longer.png.
"""
import json
import statistics
import sys
from pathlib import Path

from cycleseg import figures
from cycleseg.experiments import final_record

ARMS = {"partial": "Partial", "semi": "semi", "meanteacher": "Mean Teacher"}


def final(folder: Path):
    """(volume Dice, training seconds, steps) of a finished run, or None."""
    if not (folder / "config.json").exists():
        return None
    steps = json.loads((folder / "config.json").read_text())["steps"]
    rec = final_record(folder, steps)
    return (rec["volume_mdice"], rec["train_time"], steps) if rec else None


def main(grids) -> None:
    series, lines = {}, ["| arm | steps | seed 0 | seed 1 | seed 2 | volume Dice | gain over Partial | training s |",
                         "|---|---|---|---|---|---|---|---|"]
    partial = {}
    for grid in grids:
        for mode, label in ARMS.items():
            runs = [final(Path(grid) / f"{mode}-10pct-seed{s}") for s in (0, 1, 2)]
            if not all(runs):
                continue
            vals, steps = [r[0] for r in runs], runs[0][2]
            mean, sd = statistics.mean(vals), statistics.stdev(vals)
            if mode == "partial":
                partial[steps] = vals
            gain = ""
            if mode != "partial" and steps in partial:
                diffs = [v - p for v, p in zip(vals, partial[steps])]
                gain = f"{statistics.mean(diffs):+.3f} ({' / '.join(f'{d:+.3f}' for d in diffs)})"
            series.setdefault(mode, []).append((steps, mean, sd))
            lines.append(f"| {label} | {steps} | " + " | ".join(f"{v:.4f}" for v in vals) +
                         f" | {mean:.3f} ± {sd:.3f} | {gain} | {statistics.mean(r[1] for r in runs):.0f} |")
    print("\n".join(lines))
    plot = figures.fraction_plot({m: sorted(p) for m, p in series.items()}, [],
                                 "ACDC 10 %: volume Dice against training steps (mean, 1 std)",
                                 xlabel="training steps", tick=lambda s: f"{s:g}")
    out = Path(__file__).parent / "acdc-methods" / "longer.png"
    out.write_bytes(figures.png(plot))
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
