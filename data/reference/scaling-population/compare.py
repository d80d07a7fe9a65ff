"""Compare data/reference/scaling-population (the scaling experiment, trainer = "population") with data/reference/scaling (TRL): per-cell end states
(P(RS wins) per (p0, N, budget)) and per-p0 observed N*, each against the reference's 95% interval.
Works on a finished experiment (its summary.json) or, partially, on the sweep runs finished so far."""
import json, sys
from pathlib import Path
import numpy as np

REF = Path(sys.argv[1] if len(sys.argv) > 1 else "data/reference/scaling")
OUT = Path(sys.argv[2] if len(sys.argv) > 2 else "data/reference/scaling-population")
ref = json.loads((REF / "summary.json").read_text())
ref_cells = {(round(c["p0"], 6), c["n_envs"], c["budget"]): c for c in ref["cells"]}
if (OUT / "summary.json").exists():
    s = json.loads((OUT / "summary.json").read_text())
    cells = {(round(c["p0"], 6), c["n_envs"], c["budget"]): (c["wins"], c["n"], c["p_win_observed"]) for c in s["cells"]}
    nstar = s["observed_n_star"]
    print("reach finished: summary.json")
else:
    from physrl import fitting
    from physrl.experiment.config import ExperimentConfig
    from physrl.experiment.runs import SWEEP, plan_runs, run_status
    from physrl.experiment import scaling as sc
    cfg = ExperimentConfig.from_file(OUT / "experiment.json")
    plan = {r.run_id: r for r in plan_runs(cfg, SWEEP) if run_status(OUT / "runs" / r.run_id) == "finished"}
    print(f"reach partial: {len(plan)} of {len(plan_runs(cfg, SWEEP))} sweep runs finished")
    if not plan:
        sys.exit(0)
    loaded = fitting.load_runs([OUT / "runs" / k for k in plan])
    by_src = {Path(r.source).name: r for r in loaded}
    runs = {k: by_src[k] for k in plan}
    obs = fitting.observations(list(runs.values()))
    table = sc.outcomes_table(obs, runs, plan, [200, 400], cfg.threshold)
    cells = {}
    for (p0, n, b), g in table.groupby(["p0", "n_envs", "budget"]):
        cells[(round(p0, 6), int(n), int(b))] = (int(g.win.sum()), len(g), float(g.win.mean()))
    nstar = None
inside = total = 0
for key in sorted(cells):
    wins, n, p = cells[key]
    c = ref_cells.get(key)
    if c is None:
        continue
    lo, hi = c["interval_95"]
    ok = lo <= p <= hi
    inside += ok
    total += 1
    print(f"p0={key[0]:<5} N={key[1]:<3} budget={key[2]}: reach {wins}/{n} = {p:.2f}; reference {c['wins']}/{c['n']} "
          f"= {c['p_win_observed']:.2f} [{lo:.2f}, {hi:.2f}] {'inside' if ok else 'OUTSIDE'}")
print(f"cells inside the reference's 95% interval: {inside} of {total}")
if nstar:
    for p0, e in nstar.items():
        r = ref["observed_n_star"].get(p0)
        for b in ("400", "200"):
            mine, theirs = e["by_budget"][b], r["by_budget"][b]
            lo, hi = theirs["interval_95"]
            v = mine["n_star"]
            ok = v is not None and (lo is None or lo <= v) and (hi is None or v <= hi)
            print(f"N*(p0={p0}) budget {b}: reach {v if v is None else round(v, 2)} {mine['interval_95']}; "
                  f"reference {theirs['n_star']} {theirs['interval_95']} {'inside' if ok else 'OUTSIDE or unbounded'}")
    print("slope: reach", ref and s["scaling"]["observed_slope"].get("value"), s["scaling"]["observed_slope"].get("interval_95"),
          "reference", ref["scaling"]["observed_slope"].get("value"), ref["scaling"]["observed_slope"].get("interval_95"))
    print("seconds:", s.get("seconds"))

# ---- paired by run: the same (p0, N, seed) has the same stage-1 model in both (same config and seed) ----------
from physrl import fitting
from physrl.experiment.config import ExperimentConfig
from physrl.experiment.runs import SWEEP, plan_runs, run_status
from physrl.experiment import scaling as sc

cfg = ExperimentConfig.from_file(OUT / "experiment.json")
plan = {r.run_id: r for r in plan_runs(cfg, SWEEP) if run_status(OUT / "runs" / r.run_id) == "finished"}


def outcomes(folder):
    loaded = fitting.load_runs([folder / "runs" / k for k in plan])
    by_src = {Path(r.source).name: r for r in loaded}
    runs = {k: by_src[k] for k in plan}
    return sc.outcomes_table(fitting.observations(list(runs.values())), runs, plan, [200, 400], cfg.threshold), runs


mine, mruns = outcomes(OUT)
theirs, truns = outcomes(REF)
same_key = sum((mruns[k].manifest.organisms or {}).get("stage1", {}).get("key")
               == (truns[k].manifest.organisms or {}).get("stage1", {}).get("key") for k in plan)
print(f"paired runs: {len(plan)}; same stage-1 key in both: {same_key}")
rng = np.random.default_rng(0)
for b in (200, 400):
    a = mine[mine.budget == b].set_index("run_id").loc[list(plan)]
    r = theirs[theirs.budget == b].set_index("run_id").loc[list(plan)]
    d = (a.final_p - r.final_p).to_numpy()
    agree = float((a.win == r.win).mean())
    # bootstrap over stage-1 models (clusters), as the experiment's intervals do
    clusters = a.cluster.to_numpy()
    ids = np.unique(clusters)
    boots = []
    for _ in range(2000):
        pick = rng.choice(ids, len(ids))
        boots.append(np.mean(np.concatenate([d[clusters == c] for c in pick])))
    lo, hi = np.percentile(boots, [2.5, 97.5])
    print(f"budget {b}: win/loss agree in {int((a.win == r.win).sum())} of {len(a)} runs; mean final RS share reach {a.final_p.mean():.3f} vs "
          f"reference {r.final_p.mean():.3f}; difference {d.mean():+.3f}, 95% [{lo:+.3f}, {hi:+.3f}] "
          f"(bootstrap over {len(ids)} stage-1 models); wins reach {int(a.win.sum())} vs reference {int(r.win.sum())}")
