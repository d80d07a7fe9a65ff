"""The figure of one forecast: the prefix, the model's band to the budget, the baselines, the truth."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from scipy import stats

from physrl.contract import atomic_write_bytes


def plot_forecast(fc, path: str | Path) -> None:
    """The prefix, the model's band to the budget, the baselines' end forecasts and the truth when known (PNG).

    ``fc``: a :class:`fitting.Forecast`; ``path``: the PNG to write (atomically: temporary file and rename).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.6))
    pre = fc.prefix
    lo, hi = _beta_band_arrays(pre["k"], pre["n"], 0.9)
    share = np.asarray(pre["share"], float)
    # the Jeffreys band at k = 0 (k = n) lies wholly above (below) the observed 0 (1): clip, errorbar needs >= 0
    ax.errorbar(pre["step"], share, yerr=[np.clip(share - lo, 0, None), np.clip(hi - share, 0, None)],
                fmt="o", color="k", ms=4, lw=1, label=f"observed RS share (to step {fc.at}; 90% Jeffreys)")
    c = fc.curve
    ax.fill_between(c["step"], c["lower"], c["upper"], color="C0", alpha=0.25,
                    label=f"ODE + population prior, {int(fc.level * 100)}% band of the share")
    ax.plot(c["step"], c["median"], color="C0", lw=2, label="ODE median")
    ax.plot(c.get("sigmoid_step", c["step"]), c.get("sigmoid_full", c["sigmoid"]), color="C1", lw=1.5, ls="--",
            label="ScaleRL sigmoid fitted to the prefix (point)")
    ax.axvline(fc.at, color="grey", lw=1, ls=":")
    ax.axhline(fc.threshold, color="grey", lw=0.8)
    x_end = fc.budget
    colours = {"ode": "C0", "sigmoid": "C1", "persistence": "C2", "base_rate": "C3"}
    for i, (name, m) in enumerate(fc.methods.items()):
        if m.share is None:
            continue
        x = x_end + (i + 1) * 0.025 * fc.budget
        ax.errorbar([x], [m.share], yerr=[[m.share - m.band[0]], [m.band[1] - m.share]], fmt="s",
                    color=colours.get(name, "k"), capsize=3, ms=5,
                    label=f"{name} at budget: P(RS wins) = {m.p_rs_wins:.2f}")
    if fc.truth is not None:
        ax.plot([fc.truth["step"]], [fc.truth["share"]], marker="*", color="crimson", ms=14, ls="none",
                label=f"truth at step {fc.truth['step']}: {fc.truth['share']:.2f}")
    cr = fc.crossing
    if cr.get("step") is not None and cr.get("band") is not None:
        ax.errorbar([cr["step"]], [0.5], xerr=[[cr["step"] - cr["band"][0]], [cr["band"][1] - cr["step"]]],
                    fmt="v", color="C4", capsize=3, label=f"passes 0.5 (P = {cr['p_cross']:.2f}), band")
    ax.set_xlim(-0.02 * fc.budget, fc.budget * 1.13)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("RS share (trained envs, eval)")
    name = Path(fc.source).name
    who = fc.run_id if name == fc.run_id else f"{name}\n({fc.run_id})"
    ax.set_title(f"{who}: forecast from step {fc.at} of {fc.budget}", fontsize=9)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())   # a kill mid-write leaves the old figure whole, never half a PNG


def _beta_band_arrays(k, n, level):
    k, n = np.asarray(k, float), np.asarray(n, float)
    t = (1 - level) / 2
    return stats.beta.ppf(t, k + 0.5, n - k + 0.5), stats.beta.ppf(1 - t, k + 0.5, n - k + 0.5)
