"""Every picture the package draws, from numbers and arrays it is given (nothing here runs a network):

    sample_grid         a run's validation samples: image | truth | prediction | G_SI(truth), with a legend
    comparison_grid     the experiments' pictures: image | truth | one column per method, with a legend
    confusion_heatmap   evaluate's confusion matrix, rows normalised
    fraction_plot       the experiments' score against labeled fraction
    time_plot           the experiments' validation score against training time
    curves              a run's (or several runs') loss terms, learning rate and validation scores by step
Every one is drawn by matplotlib (its object API on the Agg canvas: no pyplot state, no display needed) and
returned as a PIL image; `png` turns one into bytes. `palette_png`, `overlay` and `colorize` are pixel
maps, not drawings.
"""
from __future__ import annotations

import functools
import io

import numpy as np
from matplotlib import font_manager, ft2font
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from PIL import Image

from .methods import METHODS
from .report import percent

SAMPLE_TITLES = ["image", "truth", "prediction", "G_SI(truth)"]
COLOURS = {mode: method.colour for mode, method in METHODS.items()}
LABELS = {mode: method.label for mode, method in METHODS.items() if not method.all_labels}


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


GSI_NOTE = "G_SI(truth): the paper's transposed convolutions leave a checkerboard pattern"
DPI = 100


# fonts that draw the scripts DejaVu Sans lacks (CJK, Korean), used where one is installed
FALLBACK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans CJK KR", "Source Han Sans", "WenQuanYi Zen Hei",
                  "WenQuanYi Micro Hei", "Microsoft YaHei", "SimHei", "PingFang SC", "Hiragino Sans", "Malgun Gothic",
                  "AppleGothic", "Arial Unicode MS")
NAME_WIDTH = 32         # a longer class or run name is cut to this many characters, ending in "…"


@functools.cache
def fonts() -> tuple[list[str], frozenset]:
    """(the font families every text is drawn in: DejaVu Sans, then the installed FALLBACK_FONTS; the code
    points they draw)."""
    installed = {f.name: f.fname for f in font_manager.fontManager.ttflist}
    families = ["DejaVu Sans"] + [f for f in FALLBACK_FONTS if f in installed]
    drawn: set = set()
    for family in families:
        try:
            drawn |= set(ft2font.FT2Font(installed.get(family) or font_manager.findfont(family)).get_charmap())
        except Exception:                                         # an unreadable font file: its glyphs are not counted
            continue
    return families, frozenset(drawn)


def render(fig: Figure) -> Image.Image:
    """The figure as an RGB PIL image, every text in fonts()' families."""
    families = fonts()[0]
    for text in fig.findobj(lambda a: hasattr(a, "set_fontfamily")):
        text.set_fontfamily(families)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())


def image_truth_columns(images: np.ndarray, masks: np.ndarray, meta) -> list[list[np.ndarray]]:
    """The image and ground-truth columns from uint8 images (N, H, W, C) and masks (N, H, W)."""
    return [[rgb(im) for im in images], [colorize(m, meta.palette, meta.ignore_index) for m in masks]]


def picture_grid(columns: list[list[np.ndarray]], titles, meta, note: str = "", row_labels=None) -> Image.Image:
    """columns[c][r], (H, W, 3) uint8 pictures, in a grid under the columns' titles, each row labelled
    (row_labels, optional), with the classes' colours and names (and a note) below."""
    return render(picture_figure(columns, titles, meta, note, row_labels))


def picture_figure(columns: list[list[np.ndarray]], titles, meta, note: str = "", row_labels=None) -> Figure:
    """picture_grid's matplotlib figure."""
    n_rows, n_cols = len(columns[0]), len(columns)
    side = 1.25
    names = [literal(n) for n in meta.class_names]
    width = side * n_cols + (0.9 if row_labels else 0.1)
    # the legend in as many columns (6 at most) as its longest name lets fit across, below the pictures
    ncol = next((c for c in range(min(len(names), 6), 1, -1) if legend_width(names, c) <= width), 1)
    low = 0.05 + (0.2 if note else 0.0)                              # inches under the legend
    below = low + 0.19 * -(-len(names) // ncol) + 0.1                # inches under the pictures
    height = side * n_rows + 0.3 + below
    fig = Figure(figsize=(width, height), dpi=DPI)
    for c, col in enumerate(columns):
        for r, pic in enumerate(col):
            ax = fig.add_subplot(n_rows, n_cols, r * n_cols + c + 1)
            ax.imshow(pic, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0 and titles:
                ax.set_title(titles[c], fontsize=8)
            if c == 0 and row_labels:
                ax.set_ylabel(row_labels[r], fontsize=7)
    handles = [Patch(facecolor=np.asarray(col) / 255, edgecolor="0.5", label=name)
               for name, col in zip(names, meta.palette)]
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=7, frameon=False,
               bbox_to_anchor=(0.5, low / height), borderaxespad=0, handleheight=0.9, labelspacing=0.35)
    if note:
        fig.text(0.5, 0.005, note, ha="center", va="bottom", fontsize=6, color="0.35", wrap=True)
    fig.subplots_adjust(left=0.12 if row_labels else 0.02, right=0.98, top=1 - 0.3 / height,
                        bottom=below / height, wspace=0.04, hspace=0.08)
    return fig


def legend_width(names: list, ncol: int) -> float:
    """Inches a fontsize-7 legend of `names` in `ncol` columns takes (filled a column at a time, each column as
    wide as its longest name)."""
    rows = -(-len(names) // ncol)
    return sum(0.05 * max(map(len, names[c * rows:(c + 1) * rows]), default=0) + 0.5 for c in range(ncol))


def sample_grid(samples: dict, meta) -> Image.Image:
    """evaluate.samples(...) as a grid under SAMPLE_TITLES (G_SI's column when the model has G_SI), with
    the classes' legend."""
    cols = image_truth_columns(samples["images"], samples["masks"], meta)
    cols.append([colorize(p, meta.palette, meta.ignore_index) for p in samples["predictions"]])
    if samples.get("gsi") is not None:
        cols.append([rgb(g) for g in samples["gsi"]])
    return picture_grid(cols, SAMPLE_TITLES, meta, GSI_NOTE if samples.get("gsi") is not None else "")


def comparison_grid(images: np.ndarray, masks: np.ndarray, predictions: dict, meta, row_labels=None) -> Image.Image:
    """image | truth | one column of predicted masks per method ({title: (N, H, W) class ids}); row_labels:
    a label per row (say, why it was chosen and each method's Dice there)."""
    cols = image_truth_columns(images, masks, meta)
    cols += [[colorize(p, meta.palette, meta.ignore_index) for p in preds] for preds in predictions.values()]
    return picture_grid(cols, ["image", "truth", *predictions], meta, row_labels=row_labels)


def literal(text, width: int = NAME_WIDTH) -> str:
    """A name from users' data (a class, a run) as matplotlib draws it literally: a `$` would start mathtext
    (a "$\\frac{a$" class name crashed training at its first picture, "$x^2$" was drawn as maths); a character
    no installed font draws as its code point (<U+5FC3>; it was an empty box, and a warning on the terminal at
    every picture); longer than `width` characters, cut to width ending in "…" (a long name ran off the picture)."""
    drawn = fonts()[1]
    text = "".join(c if ord(c) in drawn or c == "\n" else f"<U+{ord(c):04X}>" for c in str(text))
    return (text if len(text) <= width else text[:width - 1] + "…").replace("$", r"\$")


def confusion_heatmap(mat: np.ndarray, names) -> Image.Image:
    """A heat map of the confusion matrix, rows = truth normalised to 1, with class names and %."""
    k = len(names)
    rows = mat.sum(axis=1, keepdims=True)
    frac = np.divide(mat, rows, out=np.zeros(mat.shape, dtype=np.float64), where=rows > 0)
    labels = [literal(n) for n in names]
    size = max(4.0, 0.55 * k + 2.2) + 0.065 * max(0, max(map(len, labels)) - 12)   # room for long names
    fig = Figure(figsize=(size + 1.0, size), dpi=DPI)
    ax = fig.add_subplot()
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(k), labels, fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("truth")
    if k <= 25:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{100 * frac[i, j]:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if frac[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the truth row")
    ax.set_title("confusion matrix (% of each truth row)", fontsize=9)
    fig.tight_layout()
    return render(fig)


def fraction_plot(series: dict, full: list, title: str, xlabel: str = "labeled fraction",
                  tick=lambda f: f"{percent(f)} %") -> Image.Image | None:
    """Score against labeled fraction (or any x named by `xlabel`, ticks written by `tick`):
    {method: [(x, mean, std)]} with one-std error bars over seeds, and Full's [(mean, std)] as a dashed
    line in its band; None when there is nothing to plot."""
    points = [p for s in series.values() for p in s] + [(1.0, f[0], f[1]) for f in full]
    if not points:
        return None
    xs = sorted({p[0] for p in points})
    fig = Figure(figsize=(6.0, 4.0), dpi=DPI)
    ax = fig.add_subplot()
    for m, pts in series.items():
        pos = [xs.index(f) for f, _, _ in pts]
        ax.errorbar(pos, [mu for _, mu, _ in pts], yerr=[sd for _, _, sd in pts], marker="o", capsize=4,
                    color=COLOURS.get(m, "black"), label=LABELS.get(m, m))
    for mu, sd in full:
        ax.axhline(mu, color=COLOURS["full"], linestyle="--", label="Full")
        ax.axhspan(mu - sd, mu + sd, color=COLOURS["full"], alpha=0.12)
    ax.set_xticks(range(len(xs)), [tick(f) for f in xs])
    ax.set_xlim(-0.5, len(xs) - 0.5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(title.split(":")[0] if ":" in title else "score")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return render(fig)


def time_plot(series: dict, title: str) -> Image.Image:
    """{label: [(seconds, score)]}, one line per label with its validation points, against training time."""
    fig = Figure(figsize=(6.0, 4.0), dpi=DPI)
    ax = fig.add_subplot()
    for label, pts in series.items():
        mode = next((m for m, name in {**LABELS, "full": "Full"}.items() if label.startswith(name)), None)
        ax.plot([t for t, _ in pts], [v for _, v in pts], marker="o", markersize=3, label=label.rsplit(" (", 1)[0],
                color=COLOURS.get(mode))
    ax.set_xlabel("training time, s")
    ax.set_ylabel("validation score")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return render(fig)


def smooth(values: np.ndarray, weight: float = 0.9) -> np.ndarray:
    """TensorBoard's smoothing: an exponential moving average with its start-up bias removed."""
    out, avg, norm = np.empty(len(values)), 0.0, 0.0
    for i, v in enumerate(values):
        avg, norm = weight * avg + (1 - weight) * v, weight * norm + (1 - weight)
        out[i] = avg / norm
    return out


NOT_CURVES = ("step", "time", "train_time", "volumes")       # record keys that are not scores or terms


def curves(runs: dict, columns: int = 3) -> Image.Image:
    """{run name: its metrics.jsonl records}: a panel per training term (and lr) and per validation score,
    by step, one colour per run: training terms raw (faint) and smoothed, validation scores as points;
    a log scale where a panel's positive values span more than two decades."""
    return render(curves_figure(runs, columns))


FLOAT32_MAX = float(np.finfo(np.float32).max)


def curve_points(runs: dict) -> dict:
    """{panel title: {run: [(step, value)]}}: the numbers of the records that curves draws (a training
    term as itself, a validation score as 'val <name>'; NaN kept, drawn as a gap, and so is a value beyond
    float32's range: no loss or score is one, and matplotlib cannot scale an axis to 1e308)."""
    panels: dict = {}
    for run, records in runs.items():
        for r in records:
            for k, v in r.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in NOT_CURVES:
                    title = k if r["split"] == "train" else f"val {k}"
                    v = float(v) if abs(v) <= FLOAT32_MAX else float("nan")
                    panels.setdefault(title, {}).setdefault(run, []).append((r["step"], v))
    return panels


def curves_figure(runs: dict, columns: int = 3) -> Figure:
    """curves' matplotlib figure."""
    panels = curve_points(runs)
    titles = sorted(panels, key=lambda t: (t.startswith("val"), t == "lr", t)) or ["(no records yet)"]
    rows = max(1, -(-len(titles) // columns))
    fig = Figure(figsize=(3.4 * columns, 2.3 * rows + (0.3 if len(runs) > 1 else 0)), dpi=DPI)
    colours = [f"C{i}" for i in range(10)]
    for i, title in enumerate(titles):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.set_title(literal(title), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        for run, line in panels.get(title, {}).items():
            x = np.array([p[0] for p in line if p[1] == p[1]], dtype=np.float64)   # NaN left out
            y = np.array([p[1] for p in line if p[1] == p[1]], dtype=np.float64)
            colour = colours[list(runs).index(run) % len(colours)]   # the run's colour in the legend, in every panel
            if title.startswith("val") or len(y) < 3:      # points: a line of one point draws nothing
                ax.plot(x, y, marker="o", markersize=3, color=colour, label=literal(run))
            elif title == "lr":
                ax.plot(x, y, color=colour, linewidth=1.2, label=literal(run))
            else:
                ax.plot(x, y, color=colour, alpha=0.25, linewidth=0.8)
                ax.plot(x, smooth(y), color=colour, linewidth=1.2, label=literal(run))
        ys = [p[1] for line in panels.get(title, {}).values() for p in line if p[1] == p[1]]
        if ys and min(ys) > 0 and max(ys) / min(ys) > 100:
            ax.set_yscale("log")
        if i >= len(titles) - columns:
            ax.set_xlabel("step", fontsize=7)
    top = 1 - (0.3 if len(runs) > 1 else 0.0) / fig.get_figheight()
    if len(runs) > 1:
        handles = [Patch(color=colours[k % len(colours)], label=literal(run)) for k, run in enumerate(runs)]
        fig.legend(handles=handles, loc="upper center", ncol=min(len(runs), 6), fontsize=7, frameon=False)
    # fixed margins: tight_layout would measure every label first, doubling the time of a redraw at each evaluation
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.35 / fig.get_figheight(), top=top - 0.25 / fig.get_figheight(),
                        wspace=0.28, hspace=0.45)
    return fig
