"""Figures of a fit and of a prediction check (matplotlib, Agg backend).

- :func:`plot_run`: per environment (rows) and latent p, a, b (columns):
  observed p̂/â/b̂ with Jeffreys intervals, the model's mean curve, the band
  of the mean (parameter uncertainty) and the wider predictive band
  (parameter + sampling noise). Eval points are drawn one per eval step;
  train rows (logged at every step, a few rollouts each) are pooled per eval
  interval, so a 400-step run shows ~20 grey points, not 400 error bars.
- :func:`plot_predicted_vs_observed`: observed against predicted for every
  observation, one panel per latent, with the identity line.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from physrl.contract import jeffreys_interval  # noqa: E402

from ._predict import Prediction  # noqa: E402

LATENT_LABELS = {"p": "p  (RS share)", "a": "a  (reward | RS)", "b": "b  (reward | not RS)"}
COLORS = {"p": "tab:red", "a": "tab:purple", "b": "tab:blue"}
MAX_ROWS = 8
#: train rows are pooled into this many bins when the run has no eval steps to pool them between
TRAIN_BINS = 20


def pooled_train_points(train, eval_steps, level: float = 0.95):
    """Train rows of one environment pooled per eval interval: one point per interval and latent.

    Parameters
    ----------
    train : pandas.DataFrame
        Observation rows (``fitting.observations``) of one env, phase ``train``: ``step``, ``n``, ``n_rs``,
        ``a_n``, ``a_sum``, ``b_n``, ``b_sum``.
    eval_steps : array of int
        The run's eval steps (interval edges: a train row at step s joins the interval [e_k, e_{k+1}) holding
        it); without any, ``TRAIN_BINS`` equal bins over the train steps.
    level : float
        Coverage of the Jeffreys intervals on the pooled counts.

    Returns
    -------
    dict latent -> (step, hat, lo, hi), arrays
        ``step`` is the pooled rows' mean step; a latent with no rollouts in an interval (â without RS
        rollouts) has no point there.
    """
    steps = train["step"].to_numpy(float)
    if len(steps) == 0:
        return {lat: (np.array([]),) * 4 for lat in ("p", "a", "b")}
    edges = np.unique(np.asarray(eval_steps, float))
    if len(edges) < 2:
        edges = np.linspace(steps.min(), steps.max(), TRAIN_BINS + 1)
    edges = np.unique(np.concatenate([[min(steps.min(), edges[0]) - 1], edges, [max(steps.max(), edges[-1]) + 1]]))
    which = np.searchsorted(edges, steps, side="right")  # [e_{k-1}, e_k) -> k: the updates after eval e_{k-1}
    g = train.assign(_bin=which, _w=steps).groupby("_bin")
    sums = g[["n", "n_rs", "a_n", "a_sum", "b_n", "b_sum"]].sum()
    mid = g["_w"].mean().to_numpy(float)
    out = {}
    for lat, k, n in (("p", "n_rs", "n"), ("a", "a_sum", "a_n"), ("b", "b_sum", "b_n")):
        kk, nn = sums[k].to_numpy(float), sums[n].to_numpy(float)
        ok = nn > 0
        lo, hi = jeffreys_interval(kk[ok], nn[ok], level)
        out[lat] = (mid[ok], kk[ok] / nn[ok], np.asarray(lo, float), np.asarray(hi, float))
    return out


def _rows(pred: Prediction, weights: dict[str, float]) -> list[str]:
    """At most MAX_ROWS envs: trained first, then held-out ones (which show transfer)."""
    trained = [e for e in pred.env_ids if weights.get(e, 0) > 0]
    held = [e for e in pred.env_ids if weights.get(e, 0) <= 0]
    if len(pred.env_ids) <= MAX_ROWS:
        return list(pred.env_ids)
    n_held = min(len(held), MAX_ROWS // 2)
    return trained[: MAX_ROWS - n_held] + held[:n_held]


def plot_run(pred: Prediction, weights: dict[str, float], path: str | Path, title: str = "") -> Path:
    """Observed points with intervals and the model's bands, per environment and latent.

    Parameters
    ----------
    pred : Prediction
        From :func:`fitting.predict` (on a fitted run: in-sample curves).
    weights : dict env_id -> w
        To label trained / held-out environments.
    path : str or Path
        PNG to write.
    title : str

    Returns
    -------
    Path
    """
    rows = _rows(pred, weights)
    fig, axes = plt.subplots(len(rows), 3, figsize=(11, 1.9 * len(rows) + 0.9), sharex=True, squeeze=False)
    table = pred.observations
    steps = pred.steps
    col = {e: j for j, e in enumerate(pred.env_ids)}
    phase = table["phase"] if "phase" in table else None
    eval_steps = np.unique(table.loc[phase == "eval", "step"]) if phase is not None else np.array([])
    labelled = set()

    def once(label):  # a legend entry the first time an artist of that kind is drawn
        if label in labelled:
            return None
        labelled.add(label)
        return label

    for i, env in enumerate(rows):
        mine = table[table["env_id"] == env].sort_values("step")
        if phase is not None and (mine["phase"] == "eval").any():
            obs, train = mine[mine["phase"] == "eval"], mine[mine["phase"] == "train"]
        elif phase is not None:  # train rows only: pooled points, the band of the per-step rows
            obs, train = mine.iloc[:0], mine
        else:
            obs, train = mine, mine.iloc[:0]
        band = obs if len(obs) else mine
        pooled = pooled_train_points(train, eval_steps) if len(train) else None
        for j, lat in enumerate(("p", "a", "b")):
            ax = axes[i, j]
            k = col[env]
            # predictive band (parameter + sampling noise) of the drawn eval points' own n
            ax.fill_between(band["step"], band[f"band_lo_{lat}"], band[f"band_hi_{lat}"], color=COLORS[lat],
                            alpha=0.12, lw=0, label="predictive band" if (i, j) == (0, 0) else None)
            ax.fill_between(steps, pred.lower[lat][:, k], pred.upper[lat][:, k], color=COLORS[lat], alpha=0.35,
                            lw=0, label="band of the mean" if (i, j) == (0, 0) else None)
            ax.plot(steps, pred.mean[lat][:, k], color=COLORS[lat], lw=1.6,
                    label="model" if (i, j) == (0, 0) else None)
            if pooled is not None and len(pooled[lat][0]):
                st, hat, lo, hi = pooled[lat]
                ax.errorbar(st, hat, yerr=[np.clip(hat - lo, 0, None), np.clip(hi - hat, 0, None)], fmt="s",
                            ms=3.2, lw=0.8, color="0.45", mfc="white", mew=0.9, alpha=0.9,
                            label=once("train rollouts pooled per eval interval (Jeffreys 95%)"))
            hat = obs[f"{lat}_hat"].to_numpy(float)
            lo = obs[f"{lat}_lo"].to_numpy(float)
            hi = obs[f"{lat}_hi"].to_numpy(float)
            ok = np.isfinite(hat)
            if ok.any():
                ax.errorbar(obs["step"].to_numpy()[ok], hat[ok], yerr=[hat[ok] - lo[ok], hi[ok] - hat[ok]],
                            fmt="o", ms=3, lw=0.8, color="black", alpha=0.85,
                            label=once("eval (Jeffreys 95%)" if phase is not None else "observed (Jeffreys 95%)"))
            ax.set_ylim(-0.03, 1.03)
            ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(LATENT_LABELS[lat], fontsize=10)
            if j == 0:
                w = weights.get(env, 0.0)
                ax.set_ylabel(f"{env}\n{'w=%.3g' % w if w > 0 else 'held out'}", fontsize=9)
            if i == len(rows) - 1:
                ax.set_xlabel("optimizer step")
    shown = "" if len(rows) == len(pred.env_ids) else f" ({len(rows)} of {len(pred.env_ids)} envs shown)"
    fig.suptitle(f"{title}{shown}", fontsize=11)
    fig.legend(loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_predicted_vs_observed(preds: list[Prediction], path: str | Path, title: str = "",
                               labels: list[str] | None = None) -> Path:
    """Observed p̂, â, b̂ against the model's prediction for every observation of ``preds``.

    ``labels`` name the runs in the legend (default: their run_id; ``physrl fit`` passes folder names).
    Returns the PNG path. Coverage of the predictive band is printed per panel.
    """
    labels = [p.run_id for p in preds] if labels is None else list(labels)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.9))
    markers = "os^Dv<>p*h"
    for j, lat in enumerate(("p", "a", "b")):
        ax = axes[j]
        ax.plot([0, 1], [0, 1], color="gray", lw=1, ls="--")
        for m, pred in enumerate(preds):
            t = pred.observations
            ok = np.isfinite(t[f"{lat}_hat"].to_numpy(float))
            sc = ax.scatter(t.loc[ok, f"pred_{lat}"], t.loc[ok, f"{lat}_hat"], c=t.loc[ok, "step"], s=9,
                            cmap="viridis", marker=markers[m % len(markers)], alpha=0.7,
                            label=labels[m] if len(preds) > 1 else None)
        cov = [p.metrics.coverage[lat] for p in preds if p.metrics.coverage[lat] is not None]
        cov_txt = f"inside predictive band: {np.mean(cov):.0%}" if cov else ""
        ax.set_title(f"{LATENT_LABELS[lat]}\n{cov_txt}", fontsize=10)
        ax.set_xlabel("predicted")
        ax.set_ylabel("observed")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
    fig.subplots_adjust(wspace=0.35)
    fig.colorbar(sc, ax=axes, label="optimizer step", shrink=0.8)
    if len(preds) > 1:
        axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=11)
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
