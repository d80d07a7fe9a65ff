"""Coverage of the fit's 95% intervals for every parameter, per ``--step0`` mode (issue 18 item 7).

Each synthetic set is one design sampled from the ODE with known parameters (``fitting.synthesize``),
truth ``DEFAULT_TRUTH``, eval every 10 optimizer steps to step 120 (``DESIGNS``): ``small``, four runs
with priors 0.05, 0.1, 0.2, 0.4, 4, 4, 3, 3 trained environments and two held-out ones each, 64 eval
rollouts per environment; ``many``, ten runs with priors from 0.05 to 0.5, 2-7 of 8 environments
trained, 32 eval rollouts (many runs with few step-0 rollouts each, where holding p0 at its measurement
biased fit_speed's fit). Every set is fitted once per mode
(``fixed``, ``prior``, ``free``; ``<mode>+emcee``: that fit's emcee intervals, with ``--emcee-steps``) and each parameter's
95% interval is checked against the truth. A parameter the fit could not identify has no interval and
counts as a miss (``identified`` says how often).

Usage: ``python benchmarks/fit_coverage.py --sets 30 --out coverage.csv`` (rows are appended per set, so a
killed run resumes); ``--table coverage.csv`` prints the coverage table (markdown) from a finished file.
Cost: about 2-4 s per fit on one core (``--emcee-steps`` adds ~20 s per set).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from physrl import fitting

MODES = ("fixed", "prior", "free")
#: designs: (priors, trained environments per run, environments per run, eval rollouts per environment)
DESIGNS = {
    "small": ((0.05, 0.1, 0.2, 0.4), (4, 4, 3, 3), 6, 64),
    # many runs with few step-0 rollouts each, like fit_speed's 20 x 16 (where fixed was biased) but smaller
    "many": (tuple(float(p) for p in np.geomspace(0.05, 0.5, 10)), (2, 4, 6, 7) * 2 + (2, 4), 8, 32),
    # benchmarks/fit_speed.py's design: 20 runs x 16 envs (4, 8, 12, 14 trained), 64 eval rollouts
    "speed": (tuple(float(p) for p in np.geomspace(0.05, 0.5, 20)), (4, 8, 12, 14) * 5, 16, 64),
}
#: optimizer steps and eval spacing per design (fit_speed's: 40 eval points to step 195)
SCHEDULE = {"small": (120, 10), "many": (120, 10), "speed": (195, 5)}


def design(root: Path, seed: int, dispersion: float = 1.0, which: str = "small") -> tuple[list, dict[str, float]]:
    """The runs of synthetic set ``seed`` of design ``which`` and the true values by fitted parameter name."""
    priors, trained, n_envs, rollouts = DESIGNS[which]
    steps, every = SCHEDULE[which]
    paths = []
    for i, (p0, n) in enumerate(zip(priors, trained)):
        paths.append(fitting.synthesize(root / f"s{seed}-r{i}", seed=1000 * seed + i, n_envs=n,
                                        n_heldout=n_envs - n, steps=steps, eval_every=every, rollouts_per_env=rollouts,
                                        params={"p0": p0}, dispersion=dispersion, overwrite=True))
    truth = fitting.identifiable_truth(dict(fitting.DEFAULT_TRUTH), "homogeneous")
    truth.pop("p0")
    truth.update({f"p0_r{i}": p0 for i, p0 in enumerate(priors)})
    return fitting.load_runs(paths), truth


def _rows(res, truth: dict, seed: int, mode: str, seconds: float, emcee: bool = False) -> list[dict]:
    rows = []
    for name, true in truth.items():
        est = res.estimates[name]
        if emcee:
            entry = res.emcee["params"].get(name) if res.emcee else None
            lo, hi = entry["interval95"] if entry else (np.nan, np.nan)
        else:
            lo, hi = res.interval(name, 0.95)
        rows.append({"set": seed, "mode": mode, "param": name, "truth": true, "value": est.value,
                     "lower": lo, "upper": hi, "identified": bool(np.isfinite(lo) and np.isfinite(hi)),
                     "covered": bool(lo <= true <= hi), "held": not est.vary, "converged": res.converged,
                     "seconds": seconds})
    return rows


def run(sets: int, out: Path, emcee_steps: int, dispersion: float, which: str = "small",
        modes=MODES, first: int = 0) -> None:
    done = set(pd.read_csv(out)["set"]) if out.exists() else set()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(first, first + sets):
            if seed in done:
                continue
            runs, truth = design(Path(tmp), seed, dispersion, which)
            rows = []
            for mode in modes:
                t = time.perf_counter()
                res = fitting.fit(runs, step0=mode, emcee_steps=emcee_steps, seed=seed)
                seconds = time.perf_counter() - t
                rows += _rows(res, truth, seed, mode, seconds)
                if emcee_steps:
                    rows += _rows(res, truth, seed, f"{mode}+emcee", seconds, emcee=True)
            frame = pd.DataFrame(rows)
            frame.to_csv(out, mode="a", header=not out.exists(), index=False)
            share = frame.groupby("mode")["covered"].mean()
            print(f"set {seed}: " + ", ".join(f"{m} {v:.2f}" for m, v in share.items())
                  + f" ({frame.groupby('mode')['seconds'].first().sum():.1f} s)", flush=True)


def _read(paths) -> pd.DataFrame:
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    return pd.concat([pd.read_csv(p) for p in paths], ignore_index=True).drop_duplicates(["set", "mode", "param"])


def _binomial_ci(k: int, n: int) -> tuple[float, float]:
    """Clopper-Pearson 95% interval of a coverage k / n (scipy ``binomtest(...).proportion_ci``)."""
    ci = stats.binomtest(int(k), int(n)).proportion_ci(0.95, method="exact")
    return float(ci.low), float(ci.high)


def table(paths) -> str:
    """Markdown: coverage of each parameter (rows) per mode (columns), with the number of sets.

    Each cell is k/n sets whose 95% interval held the truth, as a share with its Clopper-Pearson 95% interval.
    ``paths``: one CSV or several (a study split with ``--first``), concatenated.
    """
    df = _read(paths)
    covered = df.pivot_table(index="param", columns="mode", values="covered", aggfunc="sum")
    count = df.pivot_table(index="param", columns="mode", values="covered", aggfunc="count")
    cov = covered / count
    n = df.groupby("mode")["set"].nunique()
    ident = df.pivot_table(index="param", columns="mode", values="identified", aggfunc="mean")
    order = [p for p in df["param"].drop_duplicates()]
    modes = [m for m in (*MODES, *(f"{m}+emcee" for m in MODES)) if m in cov.columns]
    lines = ["| parameter | " + " | ".join(f"{m} (n={n[m]})" for m in modes) + " |",
             "|---|" + "---:|" * len(modes)]
    for p in order:
        cells = []
        for m in modes:
            lo, hi = _binomial_ci(covered.loc[p, m], count.loc[p, m])
            c = f"{cov.loc[p, m]:.2f} [{lo:.2f}, {hi:.2f}]"
            if ident.loc[p, m] < 1:
                c += f" ({ident.loc[p, m]:.0%} id.)"
            cells.append(c)
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    worst = cov.min()
    lines.append("| **lowest** | " + " | ".join(f"**{worst[m]:.2f}** ({cov[m].idxmin()})" for m in modes) + " |")
    conv = df.groupby("mode")["converged"].mean()
    lines.append("| converged | " + " | ".join(f"{conv[m]:.2f}" for m in modes) + " |")
    return "\n".join(lines)


def diagnose(paths, params=None) -> str:
    """Markdown: why a parameter misses. Per parameter and mode: mean estimate − truth (± its standard error
    over sets), the estimates' standard deviation over sets against the mean reported standard error
    (95% half-width / 1.96, natural scale), and the share of sets whose interval lies below / above the truth.
    Bias shows as a mean far from 0 with misses on one side; too-narrow intervals as sd > reported se."""
    df = _read(paths)
    df["bias"] = df["value"] - df["truth"]
    df["se"] = (df["upper"] - df["lower"]) / (2 * stats.norm.ppf(0.975))
    order = [p for p in df["param"].drop_duplicates() if params is None or p in params]
    lines = ["| parameter | mode | sets | mean est. − truth | sd of estimates | mean reported se | "
             "interval below truth | above truth |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for p in order:
        for m in [m for m in (*MODES, *(f"{m}+emcee" for m in MODES)) if m in set(df["mode"])]:
            x = df[(df["param"] == p) & (df["mode"] == m)]
            if x.empty:
                continue
            lines.append(f"| {p} | {m} | {len(x)} | {x.bias.mean():+.4f} ± {x.bias.std() / np.sqrt(len(x)):.4f} | "
                         f"{x.value.std():.4f} | {x.se.mean():.4f} | {(x.upper < x.truth).mean():.2f} | "
                         f"{(x.lower > x.truth).mean():.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", type=int, default=30)
    ap.add_argument("--first", type=int, default=0,
                    help="seed of the first set (split a long study over processes: --first 30 --sets 30)")
    ap.add_argument("--out", type=Path, default=Path("fit_coverage.csv"))
    ap.add_argument("--emcee-steps", type=int, default=0,
                    help="also score each mode's emcee intervals (rows '<mode>+emcee')")
    ap.add_argument("--dispersion", type=float, default=1.0, help="overdispersion φ of the synthetic counts")
    ap.add_argument("--design", choices=sorted(DESIGNS), default="small",
                    help="small: 4 runs x 6 envs x 64 rollouts; many: 10 runs x 8 envs x 32 rollouts; "
                         "speed: fit_speed's 20 runs x 16 envs x 64 rollouts, 40 eval points")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated --step0 modes to score")
    ap.add_argument("--table", type=Path, nargs="+", default=None,
                    help="print the table of finished CSV(s) and exit (several: one study split with --first)")
    ap.add_argument("--diagnose", default=None,
                    help="with --table: also print bias and spread against the reported se for these parameters "
                         "(comma-separated, or 'all')")
    args = ap.parse_args(argv)
    if args.table is not None:
        print(table(args.table))
        if args.diagnose:
            print()
            print(diagnose(args.table, None if args.diagnose == "all" else args.diagnose.split(",")))
        return 0
    run(args.sets, args.out, args.emcee_steps, args.dispersion, args.design, tuple(args.modes.split(",")),
        args.first)
    print(table(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
