"""Evaluate `physrl forecast` on the scaling reference's 120 sweep runs (issue 23).

Leave-one-stage-1-model-out: every sweep run is forecast from its first 10%, 25% and 50% of the budget with a
population prior built from the runs of the *other* 17 stage-1 models only (their per-run fits and their end
states); the baselines (ScaleRL sigmoid, persistence, the population's base rate at the run's prior and N) see
the same prefix and the same population. Scores against the end state (RS share over the trained envs' eval
rollouts at step 400 > 0.5): Brier, log loss (probabilities clipped to [1e-3, 1 − 1e-3]) and coverage of the
90% band of the end share; differences forecast − baseline with percentile-bootstrap 95% intervals over
stage-1 models (whole clusters resampled, 2000 replicates).

Phases (each reads the previous one's files)::

    OMP_NUM_THREADS=1 python data/reference/forecast/evaluate.py fits       # per-run fits -> population_fits.json
    OMP_NUM_THREADS=1 python data/reference/forecast/evaluate.py forecasts  # -> forecasts.csv
    OMP_NUM_THREADS=1 python data/reference/forecast/evaluate.py scores     # -> scores.json/.csv/.png, table.md
    OMP_NUM_THREADS=1 python data/reference/forecast/evaluate.py examples   # physrl forecast -> examples/RUN/
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
RUNS = HERE.parent / "scaling" / "runs"
FRACTIONS = (0.10, 0.25, 0.50)
METHODS = ("ode", "sigmoid", "persistence", "base_rate")
THRESHOLD, LEVEL, CLIP, N_BOOT = 0.5, 0.9, 1e-3, 2000
EXAMPLES = ("sweep-N3-p0.1-h11-s2", "sweep-N8-p0.05-h10-s2", "sweep-N2-p0.2-h8-s4", "sweep-N16-p0.05-h2-s5")


def _runs():
    from physrl import fitting

    dirs = sorted(p for p in RUNS.iterdir() if p.name.startswith("sweep-"))
    return dirs, fitting.load_runs(dirs)


def fits() -> None:
    from physrl import fitting as F

    dirs, runs = _runs()
    t0 = time.process_time()
    out = F.fit_population(runs, cache_dir=HERE / ".fit_cache", progress=True)
    cpu = time.process_time() - t0
    doc = {"note": "each sweep run fitted alone (fitting.fit, transfer none, eval rows, step-0 state fixed, "
                   "2 starts); the population the leave-one-stage-1-model-out priors are drawn from",
           "cpu_seconds": cpu, "fits": [f.to_dict() for f in out]}
    (HERE / "population_fits.json").write_text(json.dumps(doc, indent=1))
    print(f"{len(out)} fits, {sum(f.converged for f in out)} converged, {cpu:.1f} s CPU")


def _population():
    from physrl import fitting as F

    doc = json.loads((HERE / "population_fits.json").read_text())
    return [F.RunFit.from_dict(d) for d in doc["fits"]]


def forecasts(only: int | None = None) -> None:
    from physrl import fitting as F

    dirs, runs = _runs()
    pop = _population()
    rows, t0 = [], time.process_time()
    out_csv = HERE / "forecasts.csv"
    for i, (d, run) in enumerate(zip(dirs, runs)):
        if only is not None and i >= only:
            break
        s1 = F.stage1_model(run)
        budget = F.budget_of(run)
        for frac in FRACTIONS:
            at = int(round(frac * budget))
            t = time.process_time()
            fc = F.forecast(run, at, population=pop, exclude={s1}, threshold=THRESHOLD, level=LEVEL, seed=i)
            cpu = time.process_time() - t
            row = {"run": d.name, "stage1": s1, "n_envs": sum(e.w > 0 for e in run.environments),
                   "p0": F.nominal_prior(run), "fraction": frac, "at": at, "truth_share": fc.truth["share"],
                   "truth_wins": int(fc.truth["rs_wins"]), "ess": fc.posterior["ess"],
                   "dropped": fc.posterior["dropped"], "cpu_seconds": cpu,
                   "p_cross": fc.crossing["p_cross"], "cross_step": fc.crossing["step"]}
            for name, m in fc.methods.items():
                row[f"{name}_p"] = m.p_rs_wins
                row[f"{name}_share"] = m.share
                row[f"{name}_lo"] = None if m.band is None else m.band[0]
                row[f"{name}_hi"] = None if m.band is None else m.band[1]
            rows.append(row)
        print(f"{i + 1}/{len(runs)} {d.name}: {time.process_time() - t0:.0f} s CPU so far", flush=True)
        pd.DataFrame(rows).to_csv(out_csv, index=False)
    print(f"{len(rows)} forecasts, {time.process_time() - t0:.1f} s CPU")


def examples() -> None:
    """Per-run figures of the report, made by the command line: ``physrl forecast RUN --at 100 --population
    <the sweep runs of the other stage-1 models> --out examples/RUN`` (per-run fits read from the cache)."""
    from physrl.cli import main
    from physrl import fitting as F

    dirs, runs = _runs()
    keys = {d.name: F.stage1_model(r) for d, r in zip(dirs, runs)}
    for name in EXAMPLES:
        others = [str(d) for d in dirs if keys[d.name] != keys[name]]
        code = main(["forecast", str(RUNS / name), "--at", "100", "--population", *others,
                     "--cache", str(HERE / ".fit_cache"), "--out", str(HERE / "examples" / name)])
        if code:
            raise SystemExit(code)


def _scores(df: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame(index=df.index)
    y = df["truth_wins"].to_numpy(float)
    for m in METHODS:
        p = np.clip(df[f"{m}_p"].to_numpy(float), CLIP, 1 - CLIP)
        out[f"{m}_brier"] = (p - y) ** 2
        out[f"{m}_logloss"] = -(y * np.log(p) + (1 - y) * np.log(1 - p))
        inside = (df[f"{m}_lo"] <= df["truth_share"]) & (df["truth_share"] <= df[f"{m}_hi"])
        out[f"{m}_coverage"] = inside.astype(float)
    return out


def scores() -> None:
    df = pd.read_csv(HERE / "forecasts.csv")
    rng = np.random.default_rng(0)
    clusters = sorted(df["stage1"].unique())
    # a replicate draws len(clusters) stage-1 models with replacement: counts per cluster, shape (N_BOOT, C)
    counts = rng.multinomial(len(clusters), np.full(len(clusters), 1 / len(clusters)), size=N_BOOT)
    table, rows = {}, []
    for frac, part in df.groupby("fraction"):
        sc = _scores(part)
        member = (part["stage1"].to_numpy()[:, None] == np.array(clusters)[None, :]).astype(float)  # (runs, C)
        sums = member.T @ sc.to_numpy()                                                            # (C, cols)
        n_per = member.sum(0)                                                                      # (C,)
        boots = pd.DataFrame((counts @ sums) / (counts @ n_per)[:, None], columns=sc.columns)
        point = sc.mean()
        entry = {}
        for metric in ("brier", "logloss", "coverage"):
            for m in METHODS:
                col = f"{m}_{metric}"
                lo, hi = np.quantile(boots[col], [0.025, 0.975])
                entry[col] = {"value": float(point[col]), "interval_95": [float(lo), float(hi)]}
                rows.append({"fraction": frac, "metric": metric, "method": m, "value": point[col], "lower": lo,
                             "upper": hi, "n_runs": len(part)})
            for m in METHODS[1:]:
                d = boots[f"ode_{metric}"] - boots[f"{m}_{metric}"]
                dp = float(point[f"ode_{metric}"] - point[f"{m}_{metric}"])
                lo, hi = np.quantile(d, [0.025, 0.975])
                entry[f"ode_minus_{m}_{metric}"] = {"value": dp, "interval_95": [float(lo), float(hi)]}
                rows.append({"fraction": frac, "metric": f"{metric} difference", "method": f"ode - {m}",
                             "value": dp, "lower": lo, "upper": hi, "n_runs": len(part)})
        table[str(frac)] = entry
    goal = {}
    for metric in ("brier", "logloss"):
        e = table["0.25"]
        goal[metric] = {m: {"difference": e[f"ode_minus_{m}_{metric}"]["value"],
                            "interval_95": e[f"ode_minus_{m}_{metric}"]["interval_95"],
                            "beats": e[f"ode_minus_{m}_{metric}"]["interval_95"][1] < 0} for m in METHODS[1:]}
    # sensitivity: stage-1 models of one seed share its environment family; resample seeds instead (6 clusters)
    seeds = df["run"].str.extract(r"-s(\d+)$")[0].astype(int).to_numpy()
    part = df[df["fraction"] == 0.25]
    sc = _scores(part)
    s_ids = sorted(set(seeds))
    member = (seeds[df["fraction"].to_numpy() == 0.25][:, None] == np.array(s_ids)[None, :]).astype(float)
    cnt = rng.multinomial(len(s_ids), np.full(len(s_ids), 1 / len(s_ids)), size=N_BOOT)
    boots = pd.DataFrame((cnt @ (member.T @ sc.to_numpy())) / (cnt @ member.sum(0))[:, None], columns=sc.columns)
    by_seed = {}
    for metric in ("brier", "logloss"):
        for m in METHODS[1:]:
            lo, hi = np.quantile(boots[f"ode_{metric}"] - boots[f"{m}_{metric}"], [0.025, 0.975])
            by_seed[f"ode_minus_{m}_{metric}"] = {"value": goal[metric][m]["difference"],
                                                  "interval_95": [float(lo), float(hi)], "beats": bool(hi < 0)}
    doc = {"n_runs": int(df["run"].nunique()), "clusters": len(clusters), "fractions": sorted(df["fraction"].unique()), "bootstrap": N_BOOT,
           "threshold": THRESHOLD, "level": LEVEL, "log_loss_clip": CLIP, "scores": table,
           "goal_at_0.25": goal, "goal_at_0.25_by_seed": by_seed,
           "cpu_seconds_forecasts": float(df["cpu_seconds"].sum()),
           "cpu_seconds_per_forecast_median": float(df["cpu_seconds"].median()),
           "ess_median": float(df["ess"].median())}
    (HERE / "scores.json").write_text(json.dumps(doc, indent=1))
    pd.DataFrame(rows).to_csv(HERE / "scores.csv", index=False)
    _figure(table, int(df['run'].nunique()), len(clusters))
    md = _markdown(table, df)
    (HERE / "table.md").write_text(md)
    print(md)
    print(json.dumps({"goal": goal, "by_seed": by_seed}, indent=1))


def _markdown(table: dict, df: pd.DataFrame) -> str:
    """The README's table: score [95% interval] per method and fraction, then forecast − baseline differences."""
    fr = sorted(table, key=float)
    head = "| metric | method | " + " | ".join(f"{float(f):.0%} of budget" for f in fr) + " |"
    lines = [head, "|" + "---|" * (2 + len(fr))]
    cell = lambda e: f"{e['value']:.3f} [{e['interval_95'][0]:.3f}, {e['interval_95'][1]:.3f}]"  # noqa: E731
    for metric, words in (("brier", "Brier"), ("logloss", "log loss"), ("coverage", "90% band coverage")):
        for m in METHODS:
            lines.append(f"| {words} | {m} | " + " | ".join(cell(table[f][f"{m}_{metric}"]) for f in fr) + " |")
    for metric, words in (("brier", "Brier"), ("logloss", "log loss"), ("coverage", "coverage")):
        for m in METHODS[1:]:
            lines.append(f"| {words} difference | ode − {m} | "
                         + " | ".join(cell(table[f][f"ode_minus_{m}_{metric}"]) for f in fr) + " |")
    ess = df.groupby("fraction")["ess"].median()
    lines.append(f"| posterior ESS (median of 512 draws) | ode | " + " | ".join(f"{ess[float(f)]:.0f}" for f in fr)
                 + " |")
    return "\n".join(lines) + "\n"


def _figure(table: dict, n_runs: int, n_clusters: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    fr = sorted(float(f) for f in table)
    for ax, metric, title in zip(axes, ("brier", "logloss", "coverage"),
                                 ("Brier (end state; lower is better)", "log loss (lower is better)",
                                  "coverage of the 90% band of the end share")):
        for j, m in enumerate(METHODS):
            v = [table[str(f)][f"{m}_{metric}"]["value"] for f in fr]
            lo = [table[str(f)][f"{m}_{metric}"]["interval_95"][0] for f in fr]
            hi = [table[str(f)][f"{m}_{metric}"]["interval_95"][1] for f in fr]
            x = np.array(fr) * 100 + (j - 1.5) * 0.8
            ax.errorbar(x, v, yerr=[np.subtract(v, lo), np.subtract(hi, v)], marker="o", capsize=3, label=m)
        if metric == "coverage":
            ax.axhline(0.9, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("% of the budget seen")
        ax.set_title(title, fontsize=10)
        ax.set_xticks([f * 100 for f in fr])
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Forecasting the end state of {n_runs} sweep runs from a prefix, leave-one-stage-1-model-out "
                 f"(95% bootstrap over {n_clusters} stage-1 models)", fontsize=10)
    fig.tight_layout()
    fig.savefig(HERE / "scores.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    phase = sys.argv[1] if len(sys.argv) > 1 else "all"
    if phase in ("fits", "all"):
        fits()
    if phase in ("forecasts", "all"):
        forecasts(int(sys.argv[2]) if len(sys.argv) > 2 else None)
    if phase in ("scores", "all"):
        scores()
    if phase in ("examples", "all"):
        examples()
