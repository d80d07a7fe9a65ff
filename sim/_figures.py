"""The post's five figures (docs/model.md §5), each a function writing ``figure-K.png`` and ``.csv``.

Every figure function takes a :class:`FigureConfig`, returns the plotted
numbers as a pandas DataFrame (also written to ``figure-K.csv``), and saves
the resolved config to ``figure-K.json`` so the figure can be re-made.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ._critical import IntegrationConfig, critical_diversity_homogeneous, homogeneous_saturation
from ._hetero import GEOMETRIES, HeterogeneousConfig, calibrate_scale, sweep_critical_diversity
from ._selection import SelectionLaw


@dataclass(frozen=True)
class FigureConfig:
    """Settings shared by the figure commands.

    Attributes
    ----------
    quick : bool
        Small grids and few resamplings (each figure well under a minute).
    seed : int
        Seeds every random draw (figure 5).
    device : str
        ``"cpu"`` or ``"cuda"`` (resolved from ``auto`` by the CLI).
    p0, a0, b0 : float
        Single-env initial state for figures 1 (large gap: a0 = 0.5, b0 = 0.1).
    integration : IntegrationConfig
        For the homogeneous figures 1-4.
    hetero_integration : IntegrationConfig
        For figure 5.
    """

    quick: bool = False
    seed: int = 0
    device: str = "cpu"
    p0: float = 0.01
    a0: float = 0.5
    b0: float = 0.1
    integration: IntegrationConfig = IntegrationConfig()
    hetero_integration: IntegrationConfig = IntegrationConfig(dt=2.0, t_max=3000.0)
    progress: bool = True


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _loglog_fit(p0, n_star):
    ok = np.isfinite(n_star) & (n_star > 0)
    if ok.sum() < 2:
        return np.nan, np.nan, np.nan
    x, y = np.log10(np.asarray(p0)[ok]), np.log10(np.asarray(n_star)[ok])
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (slope * x + intercept)
    r2 = 1 - resid.var() / y.var() if y.var() > 0 else 1.0
    return slope, intercept, r2


def _single_env_map(cfg: FigureConfig, a0, b0, n):
    """Final p (and whether each run settled) on an n × n grid of normalised (α^x, α^y) in
    [1e-2, 1e1], α^z = 1 (the horizon counts on the z clock, so fast x or y cost steps, not accuracy)."""
    ax = np.logspace(-2, 1, n)
    AX, AY = np.meshgrid(ax, ax, indexing="xy")   # rows: α^y, columns: α^x
    run = homogeneous_saturation(1, cfg.p0, a0=a0, b0=b0, alpha_x=AX, alpha_y=AY,
                                 integration=cfg.integration, device=cfg.device)
    return ax, AX, AY, run.share.cpu().numpy(), run.settled


def figure_1(cfg: FigureConfig, out: Path) -> pd.DataFrame:
    """Single environment: final p over (α^x, α^y), large initial gap (a0 = 0.5, b0 = 0.1)."""
    plt = _plt()
    n = 15 if cfg.quick else 41
    ax, AX, AY, p, settled = _single_env_map(cfg, cfg.a0, cfg.b0, n)
    fig, axis = plt.subplots(figsize=(5, 4.2))
    im = axis.pcolormesh(ax, ax, p, vmin=0, vmax=1, cmap="viridis", shading="nearest")
    axis.set(xscale="log", yscale="log", xlabel=r"RS-skill learnability $\alpha^x/\alpha^z$",
             ylabel=r"local-skill learnability $\alpha^y/\alpha^z$",
             title=f"single env: final p  (p0={cfg.p0}, a0={cfg.a0}, b0={cfg.b0})")
    fig.colorbar(im, ax=axis, label="final RS propensity p")
    _save(plt, fig, out / "figure-1.png")
    return pd.DataFrame({"p0": cfg.p0, "a0": cfg.a0, "b0": cfg.b0, "alpha_x": AX.ravel(),
                         "alpha_y": AY.ravel(), "final_p": p.ravel(), "settled": settled.ravel()})


SKILL_PAIRS = ((0.5, 0.1), (0.3, 0.1), (0.3, 0.2), (0.2, 0.3))


def figure_2(cfg: FigureConfig, out: Path) -> pd.DataFrame:
    """Single environment: final p over (α^x, α^y) for several initial skill pairs (a0, b0)."""
    plt = _plt()
    n = 11 if cfg.quick else 31
    fig, axes = plt.subplots(1, len(SKILL_PAIRS), figsize=(4 * len(SKILL_PAIRS), 3.8),
                             sharey=True)
    frames = []
    for axis, (a0, b0) in zip(axes, SKILL_PAIRS):
        ax, AX, AY, p, settled = _single_env_map(cfg, a0, b0, n)
        im = axis.pcolormesh(ax, ax, p, vmin=0, vmax=1, cmap="viridis", shading="nearest")
        axis.set(xscale="log", yscale="log", title=f"a0={a0}, b0={b0}",
                 xlabel=r"$\alpha^x/\alpha^z$")
        frames.append(pd.DataFrame({"p0": cfg.p0, "a0": a0, "b0": b0, "alpha_x": AX.ravel(),
                                    "alpha_y": AY.ravel(), "final_p": p.ravel(), "settled": settled.ravel()}))
    axes[0].set_ylabel(r"$\alpha^y/\alpha^z$")
    fig.colorbar(im, ax=list(axes), label="final p", shrink=0.9)
    fig.suptitle(f"single env, p0={cfg.p0}: final RS propensity for several initial skills")
    fig.savefig(out / "figure-2.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return pd.concat(frames, ignore_index=True)


FIG3_P0 = (0.001, 0.003, 0.01, 0.03, 0.1)


def figure_3(cfg: FigureConfig, out: Path) -> pd.DataFrame:
    """Homogeneous canonical case: final p against N for several p0 (docs/model.md §3)."""
    plt = _plt()
    n_points = 25 if cfg.quick else 81
    p0s = FIG3_P0[1:] if cfg.quick else FIG3_P0
    ns = np.unique(np.round(np.logspace(0, 4, n_points)))
    N, P = np.meshgrid(ns, p0s, indexing="xy")
    run = homogeneous_saturation(N, P, integration=cfg.integration, device=cfg.device)
    p = run.share.cpu().numpy()
    fig, axis = plt.subplots(figsize=(5.5, 4))
    for k, p0 in enumerate(p0s):
        axis.plot(ns, p[k], marker=".", label=f"p0={p0:g}")
    axis.axhline(0.5, color="grey", ls=":", lw=1)
    axis.set(xscale="log", xlabel="number of environments N", ylabel="final mean p",
             title="homogeneous: a0=0.5, b0=0.1, α=1, c_z=c_x=1, c_y=0", ylim=(-0.02, 1.02))
    axis.legend(fontsize=8)
    _save(plt, fig, out / "figure-3.png")
    return pd.DataFrame({"p0": P.ravel(), "n_envs": N.ravel().astype(int), "final_p": p.ravel(),
                         "settled": run.settled.ravel()})


FIG4_C_Y = (0.0, 0.02, 0.05, 0.1)


def figure_4(cfg: FigureConfig, out: Path) -> pd.DataFrame:
    """Homogeneous: N* against p0 (log-log, bisection), and its dependence on c^y."""
    plt = _plt()
    p0s = np.logspace(-3, np.log10(0.3), 5 if cfg.quick else 12)
    c_ys = FIG4_C_Y[:2] if cfg.quick else FIG4_C_Y
    res = critical_diversity_homogeneous(p0s[None, :], c_y=np.array(c_ys)[:, None],
                                         integration=cfg.integration, device=cfg.device,
                                         progress=cfg.progress)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    slope, intercept, r2 = _loglog_fit(p0s, res.n_star[0])
    left.plot(p0s, res.n_star[0], "o", label="N* (bisection)")
    left.plot(p0s, 10 ** (intercept + slope * np.log10(p0s)), "-", color="grey",
              label=f"fit: slope {slope:.2f}, R²={r2:.3f}")
    left.set(xscale="log", yscale="log", xlabel="prior p0", ylabel="critical diversity N*",
             title="canonical case (c_y = 0)")
    left.legend(fontsize=8)
    for k, c_y in enumerate(c_ys):
        ok = np.isfinite(res.n_star[k])
        right.plot(p0s[ok], res.n_star[k][ok], "o-", label=f"c_y={c_y:g}")
    right.set(xscale="log", yscale="log", xlabel="prior p0", ylabel="N*",
              title="local-skill transfer c_y raises N*")
    right.legend(fontsize=8)
    _save(plt, fig, out / "figure-4.png")
    C, P = np.meshgrid(c_ys, p0s, indexing="ij")
    return pd.DataFrame({"c_y": C.ravel(), "p0": P.ravel(), "n_star": res.n_star.ravel(),
                         "status": [s.value for s in res.status.ravel()], "n_max": res.n_max.ravel(),
                         "method": res.method})


@dataclass(frozen=True)
class Figure5Config:
    """Figure 5 settings (our choices; the post's were lost).

    p0 values, calibration reference p0_ref and target N*, resamplings (the
    batch axis), and the base environment population.
    """

    p0: tuple = (0.005, 0.01, 0.02, 0.05)
    p0_ref: float = 0.02
    target: float = 20.0
    n_resamplings: int = 32
    n_calibration: int = 8
    calibration_iterations: int = 7
    geometries: tuple = GEOMETRIES
    base: HeterogeneousConfig = HeterogeneousConfig()

    @classmethod
    def quick(cls) -> "Figure5Config":
        return cls(p0=(0.01, 0.02, 0.05), n_resamplings=4, n_calibration=3,
                   calibration_iterations=3)


def figure_5(cfg: FigureConfig, out: Path, f5: Figure5Config | None = None) -> pd.DataFrame:
    """Heterogeneous: median and IQR of N* against p0 per geometry (docs/model.md §4)."""
    plt = _plt()
    f5 = f5 or (Figure5Config.quick() if cfg.quick else Figure5Config())
    if cfg.quick:  # p0 >= 0.01 takes off by t ~ 1 / (p0 · gap · median rate) ≈ 500
        cfg = replace(cfg, hetero_integration=replace(cfg.hetero_integration,
                                                      t_max=min(cfg.hetero_integration.t_max, 1000.0)))
    rows = []
    fig, axis = plt.subplots(figsize=(6, 4.5))
    for k, geometry in enumerate(f5.geometries):
        t0 = time.time()
        base = replace(f5.base, geometry=geometry)
        scale, n_ref = calibrate_scale(base, p0_ref=f5.p0_ref, target=f5.target,
                                       n_resamplings=f5.n_calibration,
                                       iterations=f5.calibration_iterations,
                                       integration=cfg.hetero_integration,
                                       seed=cfg.seed + 1000 + k, progress=cfg.progress)
        res = sweep_critical_diversity(replace(base, scale=scale), f5.p0,
                                       n_resamplings=f5.n_resamplings,
                                       integration=cfg.hetero_integration, seed=cfg.seed + k,
                                       device=cfg.device, progress=cfg.progress,
                                       stop_fraction=0.8)
        # resamplings above the last N run rank as +inf; a quartile that lands there has no value
        q25, med, q75 = np.percentile(res.ranked(), [25, 50, 75], axis=0)
        q25, med, q75 = (np.where(np.isfinite(q), q, np.nan) for q in (q25, med, q75))
        slope, _, r2 = _loglog_fit(f5.p0, med)
        ok = np.isfinite(med)
        axis.errorbar(np.asarray(f5.p0)[ok], med[ok], yerr=[(med - q25)[ok], (q75 - med)[ok]], marker="o",
                      capsize=3, label=f"{geometry} (s={scale:.2g}): slope {slope:.2f}")
        status = np.vectorize(lambda s: s.value)(res.status)
        for j, p0 in enumerate(f5.p0):
            above = int((status[:, j] == "above_n_max").sum())
            unconverged = int((status[:, j] == "not_converged").sum())
            note = "; ".join(text for text in (
                f"{above} of {f5.n_resamplings} resamplings above N = {int(res.n_grid[-1])} (the last N run)"
                if above else "",
                "a quartile lies above the last N run (no value)" if not np.isfinite(q75[j]) else "",
                f"{unconverged} resamplings not converged by the step cap" if unconverged else "") if text)
            rows.append({"geometry": geometry, "scale": scale, "p0": p0,
                         "n_star_median": med[j], "n_star_q25": q25[j], "n_star_q75": q75[j],
                         "n_resamplings": f5.n_resamplings, "slope": slope, "r2": r2,
                         "calibrated_n_star_ref": n_ref, "method": "grid", "note": note,
                         "seconds": time.time() - t0})
    axis.set(xscale="log", yscale="log", xlabel="prior p0", ylabel="critical diversity N*",
             title="heterogeneous kernel transfer: median and IQR of N*")
    axis.legend(fontsize=8)
    _save(plt, fig, out / "figure-5.png")
    return pd.DataFrame(rows)


FIGURES = {1: figure_1, 2: figure_2, 3: figure_3, 4: figure_4, 5: figure_5}


def make_figure(k: int, out, cfg: FigureConfig = FigureConfig()) -> pd.DataFrame:
    """Make figure ``k`` (1-5) into directory ``out``: figure-k.png, .csv and .json (config).

    Raises
    ------
    ValueError
        If ``k`` is not 1-5.
    """
    if k not in FIGURES:
        raise ValueError(f"figure number must be one of 1-5, got {k}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    df = FIGURES[k](cfg, out)
    df.to_csv(out / f"figure-{k}.csv", index=False)
    meta = {"figure": k, "config": asdict(cfg), "seconds": round(time.time() - t0, 2)}
    if k == 5:
        meta["figure5"] = asdict(Figure5Config.quick() if cfg.quick else Figure5Config())
    (out / f"figure-{k}.json").write_text(json.dumps(meta, indent=2, default=str))
    return df


# ---- the selection law (docs/model.md §9) ---------------------------------------------------------

#: γ values of the selection-law figure (0: log-odds growth independent of p; 1: the post's replicator)
SELECTION_GAMMAS = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0, 1.25)
#: priors of the selection-law figure
SELECTION_P0 = tuple(np.logspace(-4, -1, 13))
#: horizon of the selection-law figure on the RS-propensity clock: RS needs ~I_γ(p0) / gap to take over
#: (2.5e4 at p0 = 1e-4, γ = 1, gap 0.4), more than N*'s default 1e4
SELECTION_T_MAX = 40_000.0


def frozen_gap_takeover(gamma: float, p0) -> np.ndarray:
    """I_γ(p0) = ∫ from logit p0 to 0 of [σ(z)(1 − σ(z))]^(−γ) dz: the takeover time at a frozen gap.

    With a and b held (gap Δ, learnability α), z needs t = I_γ(p0) / (α Δ) to
    reach p = 1/2 (docs/model.md §9). Closed forms: γ = 0 gives |logit p0|,
    γ = 1/2 gives 4 sinh(|logit p0| / 2), γ = 1 gives
    (1 − p0)/p0 − p0/(1 − p0) + 2 |logit p0|. Computed by quadrature for any γ >= 0.

    Parameters
    ----------
    gamma : float >= 0
    p0 : float or array of probabilities in (0, 1/2)

    Returns
    -------
    ndarray of float, the shape of ``p0``, in units of 1 / (α Δ).
    """
    from scipy.integrate import quad

    def integrand(z):
        s = 1.0 / (1.0 + np.exp(-z))
        return (s * (1 - s)) ** (-gamma)

    p0 = np.asarray(p0, dtype=float)
    return np.vectorize(lambda p: quad(integrand, np.log(p / (1 - p)), 0.0, limit=200)[0])(p0)


def selection_law_slopes(gammas=SELECTION_GAMMAS, p0s=SELECTION_P0, *, n_grid_points: int = 241,
                         integration: IntegrationConfig = IntegrationConfig(), device: str = "cpu",
                         progress: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """N*(p0) of the canonical case under the power law for several γ, and the slope of log N* on log p0.

    N* is the crossing of the final mean p = 1/2 on a fine log grid of *real*
    N from 1 to 10,000 (``n_grid_points`` points, log-linear interpolation):
    the homogeneous reduction α (1 + (N − 1) c) is defined for real N, and
    integer N* at small γ (1 or 2 for every p0) would hide the slope.
    Points with N* at the grid's first N (RS wins already at N = 1) are
    excluded from the slope.

    Returns
    -------
    (points, slopes) : pandas.DataFrame
        points: ``gamma, p0, n_star, status, resolved``. slopes: ``gamma,
        slope`` (least squares of log10 N* on log10 p0 over the resolved
        points), ``r2``, ``n_points``, ``p0_min``, ``p0_max`` and
        ``frozen_gap_slope`` (the same fit to log I_γ(p0),
        :func:`frozen_gap_takeover`, over the same priors).
    """
    gammas = np.asarray(gammas, dtype=float)
    p0s = np.asarray(p0s, dtype=float)
    n_grid = np.logspace(0, 4, n_grid_points)
    res = critical_diversity_homogeneous(p0s[None, :], selection=SelectionLaw(gammas[:, None]), method="grid",
                                         n_grid=n_grid, integration=integration, device=device,
                                         progress=progress)
    rows, fits = [], []
    for k, g in enumerate(gammas):
        n_star = res.n_star[k]
        status = [s.value for s in res.status[k]]
        resolved = np.isfinite(n_star) & (n_star > n_grid[0] * (1 + 1e-9)) & (np.array(status) == "found")
        slope, _, r2 = _loglog_fit(p0s[resolved], n_star[resolved])
        frozen = frozen_gap_takeover(g, p0s[resolved]) if resolved.any() else np.array([])
        f_slope = _loglog_fit(p0s[resolved], frozen)[0] if resolved.sum() >= 2 else np.nan
        fits.append({"gamma": g, "slope": slope, "r2": r2, "n_points": int(resolved.sum()),
                     "p0_min": float(p0s[resolved].min()) if resolved.any() else np.nan,
                     "p0_max": float(p0s[resolved].max()) if resolved.any() else np.nan,
                     "frozen_gap_slope": f_slope})
        for j, p0 in enumerate(p0s):
            rows.append({"gamma": g, "p0": p0, "n_star": n_star[j], "status": status[j],
                         "resolved": bool(resolved[j])})
    return pd.DataFrame(rows), pd.DataFrame(fits)


def selection_law_figure(cfg: FigureConfig, out: Path, gammas=None) -> pd.DataFrame:
    """The slope of log N* on log p0 against the selection-law exponent γ, canonical case (docs/model.md §9).

    Left: N*(p0) for several γ (log-log). Right: the fitted slope against γ,
    with the frozen-gap prediction (:func:`frozen_gap_takeover`) and −γ.
    ``gammas`` None: :data:`SELECTION_GAMMAS` (every other one with
    ``cfg.quick``, which also takes every other prior and a coarser N grid).
    Writes ``selection-law.png`` and returns the points and slopes (one frame,
    slope columns repeated per point), which :func:`make_selection_figure`
    also writes as ``selection-law.csv``.
    """
    plt = _plt()
    p0s = SELECTION_P0[::2] if cfg.quick else SELECTION_P0
    if gammas is None:
        gammas = SELECTION_GAMMAS[::2] if cfg.quick else SELECTION_GAMMAS
    gammas = tuple(float(g) for g in gammas)
    points, slopes = selection_law_slopes(gammas, p0s, n_grid_points=81 if cfg.quick else 241,
                                          integration=cfg.integration, device=cfg.device, progress=cfg.progress)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, 4.2))
    cmap = plt.get_cmap("viridis")
    for k, g in enumerate(gammas):
        sel = points[points["gamma"] == g]
        ok = sel["resolved"].to_numpy()
        color = cmap(k / max(len(gammas) - 1, 1))
        left.plot(sel["p0"][ok], sel["n_star"][ok], "o-", ms=3, color=color,
                  label=f"γ = {g:g}: slope {slopes['slope'][k]:.2f}")
    left.set(xscale="log", yscale="log", xlabel="prior p0", ylabel="critical diversity N* (real N)",
             title="canonical case under [p(1−p)]^γ (a − b)")
    left.legend(fontsize=7)
    g_fine = np.linspace(0, max(gammas), 50)
    right.plot(g_fine, -g_fine, ":", color="grey", label="−γ (small-p0 limit, frozen gap)")
    right.plot(slopes["gamma"], slopes["frozen_gap_slope"], "s--", color="tab:orange", ms=4,
               label="frozen gap: fit to log I_γ(p0), same p0")
    right.plot(slopes["gamma"], slopes["slope"], "o-", color="tab:blue", label="measured: fit to log N*")
    right.axhline(-1, color="k", lw=0.6)
    right.set(xlabel="selection-law exponent γ (1 = the post's replicator)",
              ylabel="slope of log N* on log p0",
              title=f"p0 in [{min(p0s):.0e}, {max(p0s):.0e}] (points with N* > 1)")
    right.legend(fontsize=7)
    _save(plt, fig, out / "selection-law.png")
    return points.merge(slopes, on="gamma")


def make_selection_figure(out, cfg: FigureConfig = FigureConfig(), gammas=None) -> pd.DataFrame:
    """:func:`selection_law_figure` into directory ``out``: selection-law.png, .csv and .json (config)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    df = selection_law_figure(cfg, out, gammas)
    df.to_csv(out / "selection-law.csv", index=False)
    meta = {"figure": "selection-law", "config": asdict(cfg), "gammas": sorted(set(df["gamma"].tolist())),
            "seconds": round(time.time() - t0, 2)}
    (out / "selection-law.json").write_text(json.dumps(meta, indent=2, default=str))
    return df
