"""Every picture the package draws, from numbers and arrays it is given (nothing here runs a network):

    sample_grid         a run's validation samples: image | truth | prediction | G_SI(truth), with a legend
    comparison_grid     the experiments' pictures: image | truth | one column per method, with a legend
    confusion_heatmap   evaluate's confusion matrix, rows normalised
    fraction_plot       the experiments' score against labeled fraction
    time_plot           the experiments' validation score against training time
    curves              a run's (or several runs') loss terms, learning rate and validation scores by step
Each returns a PIL image; `png` turns one into bytes.
"""
from __future__ import annotations

import io
import textwrap

import numpy as np
from PIL import Image, ImageDraw

SAMPLE_TITLES = ["image", "truth", "prediction", "G_SI(truth)"]
COLOURS = {"partial": (200, 60, 40), "semi": (40, 90, 200), "full": (90, 90, 90), "meanteacher": (30, 150, 60),
           "fixmatch": (150, 60, 170), "adversarial": (200, 140, 20)}
LABELS = {"partial": "Partial", "semi": "Ours (semi)", "meanteacher": "Mean Teacher", "fixmatch": "FixMatch",
          "adversarial": "Hung et al."}


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def palette_png(mask: np.ndarray, palette) -> bytes:
    """(H, W) class ids as a palette PNG (palette index = class id)."""
    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    flat = [c for colour in palette for c in colour]
    img.putpalette(flat + [0] * (768 - len(flat)))
    return png(img)


def overlay(image: np.ndarray, mask: np.ndarray, palette, alpha: float = 0.45) -> Image.Image:
    """The (H, W, 3) uint8 image with the classes' colours blended over it."""
    colours = np.asarray(palette, np.uint8)[mask]
    return Image.fromarray(((1 - alpha) * image + alpha * colours).astype(np.uint8))


def colorize(mask: np.ndarray, palette, ignore_index: int = 255) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 colours; ignored pixels white."""
    pal = np.zeros((256, 3), np.uint8)
    pal[:len(palette)] = np.asarray(palette, np.uint8)
    pal[ignore_index] = 255
    return pal[mask]


def rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, C) uint8 -> (H, W, 3) (gray repeated)."""
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image


def titled_grid(columns: list[list[np.ndarray]], titles=None, scale: int = 2) -> Image.Image:
    """columns[c][r] is an (H, W, 3) uint8 picture -> one image, each column under its title."""
    rows = [np.concatenate([col[r] for col in columns], axis=1) for r in range(len(columns[0]))]
    grid = Image.fromarray(np.concatenate(rows, axis=0))
    if scale != 1:
        grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
    if not titles:
        return grid
    band = 16
    img = Image.new("RGB", (grid.width, grid.height + band), "white")
    img.paste(grid, (0, band))
    draw = ImageDraw.Draw(img)
    col_w = grid.width // len(columns)
    for i, t in enumerate(titles[:len(columns)]):
        draw.text((i * col_w + 3, 2), t, fill="black")
    return img


def image_truth_columns(images: np.ndarray, masks: np.ndarray, meta) -> list[list[np.ndarray]]:
    """The image and ground-truth columns from uint8 images (N, H, W, C) and masks (N, H, W)."""
    return [[rgb(im) for im in images], [colorize(m, meta.palette, meta.ignore_index) for m in masks]]


GSI_NOTE = "G_SI(truth): the paper's transposed convolutions leave a checkerboard pattern"


def with_legend(grid: Image.Image, meta, note: str = "") -> Image.Image:
    """The picture with a row of the classes' colours and names (and a note) below it."""
    names, palette = list(meta.class_names), meta.palette
    x, rows, width = 4, [[]], max(grid.width, 200)
    for name, colour in zip(names, palette):
        w = 16 + 7 * len(name) + 10
        if x + w > width and rows[-1]:
            rows.append([])
            x = 4
        rows[-1].append((x, name, tuple(colour)))
        x += w
    notes = textwrap.wrap(note, max(20, width // 7)) if note else []
    band = 16 * len(rows) + 14 * len(notes) + 4
    img = Image.new("RGB", (width, grid.height + band), "white")
    img.paste(grid, (0, 0))
    draw = ImageDraw.Draw(img)
    for r, row in enumerate(rows):
        y = grid.height + 4 + 16 * r
        for x, name, colour in row:
            draw.rectangle([x, y, x + 11, y + 11], fill=colour, outline=(120, 120, 120))
            draw.text((x + 15, y), name, fill="black")
    for i, line in enumerate(notes):
        draw.text((4, grid.height + 4 + 16 * len(rows) + 14 * i), line, fill=(90, 90, 90))
    return img


def sample_grid(samples: dict, meta) -> Image.Image:
    """evaluate.samples(...) as a grid under SAMPLE_TITLES (G_SI's column when the model has G_SI), with
    the classes' legend."""
    cols = image_truth_columns(samples["images"], samples["masks"], meta)
    cols.append([colorize(p, meta.palette, meta.ignore_index) for p in samples["predictions"]])
    if samples.get("gsi") is not None:
        cols.append([rgb(g) for g in samples["gsi"]])
    return with_legend(titled_grid(cols, SAMPLE_TITLES), meta, GSI_NOTE if samples.get("gsi") is not None else "")


def comparison_grid(images: np.ndarray, masks: np.ndarray, predictions: dict, meta) -> Image.Image:
    """image | truth | one column of predicted masks per method ({title: (N, H, W) class ids})."""
    cols = image_truth_columns(images, masks, meta)
    cols += [[colorize(p, meta.palette, meta.ignore_index) for p in preds] for preds in predictions.values()]
    return with_legend(titled_grid(cols, ["image", "truth", *predictions]), meta)


def confusion_heatmap(mat: np.ndarray, names) -> Image.Image:
    """A heat map of the confusion matrix, rows = truth normalised to 1, with class names and %."""
    k = len(names)
    cell, left = 44, max(60, 7 * max(len(n) for n in names) + 10)
    top = left
    img = Image.new("RGB", (max(left + k * cell + 10, 440), top + k * cell + 30), "white")
    draw = ImageDraw.Draw(img)
    rows = mat.sum(axis=1, keepdims=True)
    frac = np.divide(mat, rows, out=np.zeros(mat.shape, dtype=np.float64), where=rows > 0)
    for i in range(k):
        draw.text((5, top + i * cell + cell // 2 - 5), names[i], fill="black")
        label = Image.new("RGB", (top - 5, 12), "white")
        ImageDraw.Draw(label).text((0, 0), names[i], fill="black")
        img.paste(label.rotate(90, expand=True), (left + i * cell + cell // 2 - 6, 5))
        for j in range(k):
            f = frac[i, j]
            shade = int(255 * (1 - f))
            x0, y0 = left + j * cell, top + i * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=(shade, shade, 255), outline=(200, 200, 200))
            draw.text((x0 + 6, y0 + cell // 2 - 5), f"{100 * f:.0f}%", fill="white" if f > 0.5 else "black")
    draw.text((left, top + k * cell + 8), "rows: truth (each sums to 100 %), columns: prediction", fill="black")
    return img


class Axes:
    """A plot frame: data coordinates (x positions given as categories or numbers, y in [lo, hi]) to
    pixels, with the axes, ticks and labels drawn."""

    W, H, L, B, T, R = 560, 390, 60, 50, 42, 20

    def __init__(self, lo: float, hi: float, title: str, xlabel: str):
        self.lo, self.hi = lo, hi
        self.img = Image.new("RGB", (self.W, self.H), "white")
        self.draw = ImageDraw.Draw(self.img)
        d = self.draw
        d.line([(self.L, self.T), (self.L, self.H - self.B), (self.W - self.R, self.H - self.B)], fill="black")
        for i in range(5):
            v = lo + (hi - lo) * i / 4
            d.line([(self.L - 4, self.y(v)), (self.L, self.y(v))], fill="black")
            d.text((5, self.y(v) - 6), f"{v:.3f}", fill="black")
        d.text((self.W // 2 - 60, self.H - 20), xlabel, fill="black")
        d.text((self.L, 8), title, fill="black")

    def y(self, v: float) -> float:
        return self.H - self.B - (self.H - self.B - self.T) * (v - self.lo) / (self.hi - self.lo)

    def x(self, i: float, n: int) -> float:
        """The pixel of position i of n evenly spaced categories."""
        return self.L + (self.W - self.L - self.R) * (i + 0.5) / n

    def legend(self, entries: dict) -> None:
        """{label: colour} in a row above the plot, right-aligned."""
        x = self.W - self.R
        for label, colour in reversed(list(entries.items())):
            x -= 7 * len(label) + 16
            self.draw.text((x, 22), label, fill=colour)


def fraction_plot(series: dict, full: list, title: str, xlabel: str = "labeled fraction",
                  tick=lambda f: f"{round(100 * f)} %") -> Image.Image | None:
    """Score against labeled fraction (or any x named by `xlabel`, ticks written by `tick`):
    {method: [(x, mean, std)]} with one-std error bars, and Full's [(mean, std)] as dashed lines; None
    when there is nothing to plot."""
    points = [p for s in series.values() for p in s] + [(1.0, f[0], f[1]) for f in full]
    if not points:
        return None
    lo = min(m - s for _, m, s in points)
    hi = max(m + s for _, m, s in points)
    lo, hi = max(0.0, lo - 0.05 * (hi - lo + 1e-6)), min(1.0, hi + 0.05 * (hi - lo + 1e-6))
    ax = Axes(lo, hi, title, xlabel)
    xs = sorted({p[0] for p in points})
    for f in xs:
        ax.draw.text((ax.x(xs.index(f), len(xs)) - 12, ax.H - ax.B + 8), tick(f), fill="black")
    for m, pts in series.items():
        colour = COLOURS.get(m, (0, 0, 0))
        xy = [(ax.x(xs.index(f), len(xs)), ax.y(mu)) for f, mu, _ in pts]
        if len(xy) > 1:
            ax.draw.line(xy, fill=colour, width=2)
        for (f, mu, sd), (x, y) in zip(pts, xy):
            ax.draw.line([(x, ax.y(mu - sd)), (x, ax.y(mu + sd))], fill=colour)
            ax.draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    for mu, _ in full:
        for x in range(ax.L, ax.W - ax.R, 12):
            ax.draw.line([(x, ax.y(mu)), (x + 6, ax.y(mu))], fill=COLOURS["full"])
    ax.legend({**{LABELS.get(m, m): COLOURS.get(m, (0, 0, 0)) for m in series}, **({"Full": COLOURS["full"]} if full else {})})
    return ax.img


def time_plot(series: dict, title: str) -> Image.Image:
    """{label: [(seconds, score)]}, one line per label, against a linear time axis."""
    points = [p for pts in series.values() for p in pts]
    lo, hi = min(v for _, v in points), max(v for _, v in points)
    lo, hi = max(0.0, lo - 0.05 * (hi - lo + 1e-6)), min(1.0, hi + 0.05 * (hi - lo + 1e-6))
    tmax = max(t for t, _ in points) or 1.0
    ax = Axes(lo, hi, title, "training time, s")
    span = ax.W - ax.L - ax.R
    for i in range(5):
        t = tmax * i / 4
        ax.draw.text((ax.L + span * i / 4 - 10, ax.H - ax.B + 8), f"{t:.0f}" if tmax >= 20 else f"{t:.1f}",
                     fill="black")
    palette = list(COLOURS.values())
    legend = {}
    for k, (label, pts) in enumerate(series.items()):
        mode = next((m for m, name in {**LABELS, "full": "Full"}.items() if label.startswith(name)), None)
        colour = COLOURS.get(mode, palette[k % len(palette)])
        xy = [(ax.L + span * t / tmax, ax.y(v)) for t, v in pts]
        if len(xy) > 1:
            ax.draw.line(xy, fill=colour, width=2)
        for x, y in xy:
            ax.draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        legend[label.rsplit(" (", 1)[0]] = colour
    ax.legend(legend)
    return ax.img


RUN_COLOURS = [(40, 90, 200), (200, 60, 40), (30, 150, 60), (150, 60, 170), (200, 140, 20), (90, 90, 90)]
PANEL = (300, 170)                  # one panel of the curves, in pixels


def _panel(draw, x0: int, y0: int, title: str, series: dict) -> None:
    """One small plot at (x0, y0): {run: [(step, value)]} as lines, axes scaled to the data."""
    w, h = PANEL
    left, top, bottom, right = 46, 16, 18, 8
    pts = [v for line in series.values() for v in line if v[1] == v[1]]     # NaN left out
    draw.text((x0 + left, y0 + 2), title, fill="black")
    draw.line([(x0 + left, y0 + top), (x0 + left, y0 + h - bottom), (x0 + w - right, y0 + h - bottom)], fill="black")
    if not pts:
        return
    xmax = max(x for x, _ in pts) or 1
    lo, hi = min(v for _, v in pts), max(v for _, v in pts)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5 * (abs(lo) + 1e-3), hi + 0.5 * (abs(hi) + 1e-3)
    for v in (lo, hi):
        y = y0 + h - bottom - (h - top - bottom) * (v - lo) / (hi - lo)
        draw.text((x0 + 2, y - 6), f"{v:.3g}", fill="black")
    draw.text((x0 + w - right - 40, y0 + h - bottom + 4), f"{xmax:g}", fill="black")
    for k, line in enumerate(series.values()):
        xy = [(x0 + left + (w - left - right) * x / xmax, y0 + h - bottom - (h - top - bottom) * (v - lo) / (hi - lo))
              for x, v in line if v == v]
        if len(xy) > 1:
            draw.line(xy, fill=RUN_COLOURS[k % len(RUN_COLOURS)], width=1)
        elif xy:
            x, y = xy[0]
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=RUN_COLOURS[k % len(RUN_COLOURS)])


def curves(runs: dict, columns: int = 3) -> Image.Image:
    """{run name: its metrics.jsonl records}: a panel per training term (and lr) and per validation score,
    by step, one line per run."""
    panels: dict = {}
    for run, records in runs.items():
        for r in records:
            keys = [k for k, v in r.items() if isinstance(v, (int, float)) and k not in ("step", "time", "train_time")]
            for k in keys:
                title = k if r["split"] == "train" else f"val {k}"
                panels.setdefault(title, {}).setdefault(run, []).append((r["step"], float(r[k])))
    titles = sorted(panels, key=lambda t: (t.startswith("val"), t == "lr", t))
    rows = max(1, -(-len(titles) // columns))
    legend = 18 if len(runs) > 1 else 0
    img = Image.new("RGB", (PANEL[0] * columns, PANEL[1] * rows + legend), "white")
    draw = ImageDraw.Draw(img)
    for i, title in enumerate(titles):
        _panel(draw, PANEL[0] * (i % columns), legend + PANEL[1] * (i // columns), title, panels[title])
    x = 4
    for k, run in enumerate(runs if legend else ()):
        draw.text((x, 3), run, fill=RUN_COLOURS[k % len(RUN_COLOURS)])
        x += 7 * len(run) + 16
    return img
