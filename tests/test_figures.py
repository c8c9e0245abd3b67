"""figures.py: matplotlib figures with what a reader needs (ticks, log scales where values span decades,
smoothed training terms beside their raw values, validation points, error bars over seeds)."""
import numpy as np
from types import SimpleNamespace

from cycleseg import figures


def records(steps=200, every=50):
    out = []
    for s in range(1, steps + 1):
        out.append({"step": s, "split": "train", "time": s * 0.1, "lr": 1e-3 * (1 - s / steps),
                    "gen_seg": 2.0 * 0.97 ** s + 1e-3, "disc_seg": 0.5 + 0.01 * np.sin(s)})
        if s % every == 0:
            out.append({"step": s, "split": "val", "time": s * 0.1, "train_time": s * 0.1, "miou": s / steps,
                        "volumes": 20})
    return out


def test_curves_panels_scales_and_points():
    fig = figures.curves_figure({"run": records()})
    axes = {ax.get_title(): ax for ax in fig.axes}
    assert sorted(axes) == ["disc_seg", "gen_seg", "lr", "val miou"]          # counts (volumes) are no curve
    assert axes["gen_seg"].get_yscale() == "log" and axes["disc_seg"].get_yscale() == "linear"
    assert len(axes["gen_seg"].lines) == 2                                   # raw and smoothed
    assert axes["val miou"].lines[0].get_marker() == "o" and len(axes["val miou"].lines[0].get_xdata()) == 4
    assert all(len(ax.get_yticks()) > 2 for ax in fig.axes)
    image = figures.curves({"run": records(), "other": records(100)})
    assert image.mode == "RGB" and image.width > 600


def test_smoothing_is_tensorboards():
    v = np.array([1.0, 0.0, 0.0, 4.0])
    w, avg, norm, want = 0.6, 0.0, 0.0, []
    for x in v:
        avg, norm = w * avg + (1 - w) * x, w * norm + (1 - w)
        want.append(avg / norm)
    assert np.allclose(figures.smooth(v, w), want) and figures.smooth(v, w)[0] == 1.0


def test_plots_and_grids_render():
    meta = SimpleNamespace(class_names=["bg", "a", "b"], palette=[[0, 0, 0], [255, 0, 0], [0, 255, 0]],
                           ignore_index=255)
    frac = figures.fraction_plot({"partial": [(0.1, 0.5, 0.02), (0.2, 0.6, 0.01)]}, [(0.7, 0.01)], "Dice: d")
    assert frac.size == (600, 400)
    assert figures.fraction_plot({}, [], "nothing") is None
    conf = figures.confusion_heatmap(np.array([[5, 1, 0], [0, 3, 1], [2, 0, 7]]), meta.class_names)
    assert conf.mode == "RGB"
    rng = np.random.default_rng(0)
    grid = figures.comparison_grid(rng.integers(0, 255, (3, 16, 16, 1), dtype=np.uint8),
                                   rng.integers(0, 3, (3, 16, 16)).astype(np.uint8),
                                   {"Partial 10 %": rng.integers(0, 3, (3, 16, 16))}, meta,
                                   row_labels=["q1", "q2", "q3"])
    assert grid.mode == "RGB" and min(grid.size) > 300


def test_tensorboard_events_hold_the_records_and_pictures(tiny_argv, tmp_path):
    import json

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from cycleseg.train import main as train_main

    assert train_main(tiny_argv("tb", "--mode", "partial", "--steps", "4", "--eval-every", "2", "--log-every", "1",
                                "--tensorboard")) == 0
    run = tmp_path / "tb"
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r["gen_seg"] for r in records if r["split"] == "train"}
    val = {r["step"]: r["miou"] for r in records if r["split"] == "val"}
    got = {e.step: e.value for e in events.Scalars("train/gen_seg")}
    assert sorted(got) == sorted(train) and all(abs(got[s] - train[s]) < 1e-6 for s in train)
    assert {e.step: round(e.value, 6) for e in events.Scalars("val/miou")} == {s: round(v, 6) for s, v in val.items()}
    assert "val/iou/background" in events.Tags()["scalars"]
    assert [e.step for e in events.Images("val/samples")] == sorted(val)


def test_a_resumed_run_purges_the_events_a_kill_left_after_its_checkpoint(tiny_argv, tmp_path):
    """A run killed at step 12 with its last checkpoint at 8, then resumed: TensorBoard showed steps 1..12,
    9, 10, ... (the killed run's 9..12 kept beside the resumed run's): the resumed writer purges them."""
    import json

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    from cycleseg.train import main as train_main

    argv = tiny_argv("tb", "--mode", "partial", "--steps", "4", "--eval-every", "2", "--log-every", "1",
                     "--tensorboard")
    assert train_main(argv + ["--stop-after", "2"]) == 0
    run = tmp_path / "tb"
    killed = SummaryWriter(str(run / "tensorboard"))                  # what the killed run wrote after step 2
    for step in (3, 4, 5):
        killed.add_scalar("train/gen_seg", 99.0, step)
    killed.close()
    assert train_main(argv + ["--resume"]) == 0
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    want = [(r["step"], round(r["gen_seg"], 5)) for r in records if r["split"] == "train"]
    assert [(e.step, round(e.value, 5)) for e in events.Scalars("train/gen_seg")] == want


def test_names_no_font_draws_long_names_and_many_classes(recwarn):
    """Class names in Chinese drew empty boxes with a matplotlib warning at every picture; a 100-character
    name ran off the picture; VOC's 21 classes drew their legend over the last row of pictures. Now: the
    code point where no installed font has the glyph, names cut to NAME_WIDTH, the legend below the
    pictures and inside the figure."""
    drawn = figures.fonts()[1]
    if 0x5FC3 not in drawn:                                   # no CJK font here: the code point is drawn
        assert figures.literal("心") == "<U+5FC3>"
    assert figures.literal("a" * 100) == "a" * (figures.NAME_WIDTH - 1) + "…"
    assert figures.literal("$x$") == r"\$x\$"
    for names in (["心肌", "背景"] + [f"class {i} " + "a" * 90 for i in range(5)], [f"c{i}" for i in range(21)],
                  ["background", "RV", "Myo", "LV"]):
        meta = SimpleNamespace(class_names=names, palette=[(9 * i, 0, 0) for i in range(len(names))], ignore_index=255)
        cols = [[np.zeros((16, 16, 3), np.uint8)] * 3 for _ in range(3)]
        fig = figures.picture_figure(cols, ["image", "truth", "prediction"], meta, note=figures.GSI_NOTE)
        figures.render(fig)
        renderer = fig.canvas.get_renderer()
        box = fig.legends[0].get_window_extent(renderer)
        lowest = min(ax.get_window_extent(renderer).y0 for ax in fig.axes)
        assert box.y1 <= lowest and box.y0 >= 0, (names[0], box, lowest)
        assert box.x0 >= 0 and box.x1 <= fig.bbox.width, (names[0], box, fig.bbox.width)
        assert len(fig.legends[0].get_texts()) == len(names)
        assert max(len(t.get_text()) for t in fig.legends[0].get_texts()) <= figures.NAME_WIDTH
    heat = figures.confusion_heatmap(np.eye(3) * 5, ["心肌", "b" * 80, "c"])
    assert heat.size[0] > 500
    assert not [w for w in recwarn if "missing from font" in str(w.message) or "Tight layout" in str(w.message)]


def test_a_run_of_one_lr_point_is_drawn():
    """Runs that each logged a single record (a run of a few steps, --log-every past its end) left the lr
    panel empty: it drew the learning rate as a line only, and a line of one point draws nothing."""
    runs = {r: [{"step": 5, "split": "train", "lr": 1e-3, "gen_seg": 0.5}] for r in ("a", "b")}
    fig = figures.curves_figure(runs)
    for ax in fig.axes:
        assert [ln.get_marker() for ln in ax.get_lines()] == ["o", "o"], ax.get_title()


def test_each_run_keeps_its_colour_in_every_panel():
    """plot of runs of several modes: a panel only some runs have (Mean Teacher's and FixMatch's consistency)
    coloured its lines by their place among those runs, so they took other runs' legend colours."""
    runs = {"adv": [{"step": s, "split": "train", "gen_seg": 1.0} for s in (1, 2, 3)],
            "mt": [{"step": s, "split": "train", "gen_seg": 1.0, "consistency": 0.1} for s in (1, 2, 3)],
            "fm": [{"step": s, "split": "train", "gen_seg": 1.0, "consistency": 0.7} for s in (1, 2, 3)]}
    fig = figures.curves_figure(runs)
    legend = {t.get_text(): h.get_facecolor() for t, h in zip(fig.legends[0].get_texts(), fig.legends[0].legend_handles)}
    panel = next(ax for ax in fig.axes if ax.get_title() == "consistency")
    drawn = {ln.get_label(): ln.get_color() for ln in panel.get_lines() if not ln.get_label().startswith("_")}
    from matplotlib.colors import to_rgba
    assert set(drawn) == {"mt", "fm"}
    for run, colour in drawn.items():
        assert to_rgba(colour) == tuple(legend[run]), (run, colour, legend[run])
