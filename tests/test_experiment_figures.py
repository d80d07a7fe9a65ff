"""The experiment report's figures as a reader sees them (issue 21 §3.7), drawn from the committed demo
logs (data/reference/demo): no legend sits on a panel, and no line is too pale to see on the white page."""

import json
from pathlib import Path

import matplotlib.colors
import pytest

from physrl import fitting
from physrl.experiment import figures as _figures, scaling as _scaling, scaling_figures as _scaling_figures
from physrl.experiment.config import ExperimentConfig
from physrl.experiment.runs import plan_runs

DEMO = Path(__file__).resolve().parents[1] / "data" / "reference" / "demo"


def _contrast_on_white(colour) -> float:
    """WCAG 2 contrast ratio of ``colour`` against white (1: invisible, 21: black)."""
    def channel(v):
        return v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(v) for v in matplotlib.colors.to_rgb(colour))
    return 1.05 / (0.2126 * r + 0.7152 * g + 0.0722 * b + 0.05)


@pytest.fixture(scope="module")
def demo():
    config = ExperimentConfig.from_file(DEMO / "experiment.json")
    plan = {r.run_id: r for r in plan_runs(config)}
    loaded = {Path(r.source).name: r for r in fitting.load_runs([DEMO / k for k in plan])}
    runs = {k: loaded[k] for k in plan}
    return config, plan, runs, fitting.observations(list(runs.values()))


@pytest.fixture
def drawn(monkeypatch):
    """The matplotlib figures the report's figure functions make, kept open instead of rendered."""
    figs = []
    for module in (_figures, _scaling_figures):
        monkeypatch.setattr(module, "figure_to_data_uri", lambda fig, path=None: figs.append(fig) or "data:")
    return figs


def test_rs_share_lines_stand_out_from_the_white_page(demo, drawn, tmp_path):
    """Every run's line, N = 8 included (viridis drew it pale yellow, 1.3:1 on white), has a contrast of
    at least 2.3:1, and the colours still rise in order with N."""
    config, plan, runs, obs = demo
    _figures.rs_share_figure(obs, runs, plan, tmp_path / "rs_share.png")
    (fig,) = drawn
    lines = [ln for ax in fig.axes for ln in ax.get_lines() if len(ln.get_xdata()) > 2]
    assert len(lines) == 4  # one per sweep run (N = 1, 2, 4, 8)
    for line in lines:
        assert _contrast_on_white(line.get_color()) >= 2.3, (line.get_label(), line.get_color())
    labels = {h.get_label() for h in fig.legends[0].legend_handles}
    assert len(labels) == 4


def test_p_win_legend_covers_no_panel(demo, drawn, tmp_path):
    """The P(RS wins) figure's legend lies outside every panel (inside, it covered the error bars)."""
    config, plan, runs, obs = demo
    frozen = json.loads((DEMO / "predictions.json").read_text())
    sweep = {k: r for k, r in plan.items() if r.role != "calibration"}
    outcomes = _scaling.outcomes_table(obs, {k: runs[k] for k in sweep}, sweep, [400], config.threshold)
    estimates, _, p0s, _ = _scaling.n_star_by_p0(outcomes, 400, n_boot=20, seed=0)
    scaling = {"by_budget": {400: {"p0": p0s, "estimates": estimates,
                                   "win_table": _scaling.win_table(outcomes, 400)}}}
    _scaling_figures.win_probability_figure(scaling, frozen, [400], tmp_path / "p_win.png")
    (fig,) = drawn
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None] + list(fig.legends)
    assert legends, "the figure has no legend"
    entries = {t.get_text() for lg in legends for t in lg.get_texts()}
    assert {"logistic fit (Firth)", "frozen prediction", "observed (Jeffreys 95%)"} <= entries
    for lg in legends:
        box = lg.get_window_extent(renderer)
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent(renderer)), "a legend covers a panel"
