"""The unit of replication: the stage-1 model, its clusters of runs, and how much they carry.

Every (p0, seed) of the diversity experiment pretrains its own stage-1 model
(organisms' stage 1; its cache key is recorded in each run's manifest under
``organisms.stage1.key``), and every N of that (p0, seed) starts from it. The
runs of one stage-1 model are therefore not independent replicates: they share
its initial propensities, skills and everything the pretraining left in the
weights. Every interval of the analysis resamples whole stage-1 models
(a cluster bootstrap, Davison & Hinkley 1997 §3.8; Field & Welsh 2007,
JRSS-B 69:369), stratified by p0 (the design fixes which p0 each stage-1 model
has), and :func:`random_intercept_logit` measures how much of the outcome
variance the stage-1 model carries: a logistic regression of *RS wins* on
log N per p0 with a random intercept per stage-1 model (statsmodels'
``BinomialBayesMixedGLM``, variational Bayes), its latent intra-class
correlation ICC = σ² / (σ² + π²/3) (Snijders & Bosker 2012 §17.3; Nakagawa &
Schielzeth 2010), with a cluster-bootstrap interval; a GEE with an
exchangeable working correlation and robust (sandwich) standard errors
(Liang & Zeger 1986) is reported beside it as the cluster-robust complement.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

#: the name of the unit of replication in the report and summary.json
CLUSTER = "stage-1 model"
#: where a run's cluster comes from
CLUSTER_SOURCE = ("the stage-1 cache key in each run's manifest (organisms.stage1.key): one stage-1 model per "
                  "(p0, seed), shared by every N of that pair; (p0, seed) where a manifest has no key")
#: bootstrap replicates behind the ICC's interval (each one a variational fit)
ICC_BOOTSTRAP = 200
#: the latent residual variance of a logistic model, π²/3
LOGISTIC_VARIANCE = math.pi ** 2 / 3


def stage1_key(run) -> str | None:
    """The stage-1 model a run started from: ``organisms.stage1.key`` of its manifest (None when absent)."""
    manifest = getattr(run, "manifest", None)
    organisms = (getattr(manifest, "organisms", None) or {}) if manifest is not None else {}
    key = (organisms.get("stage1") or {}).get("key")
    return str(key) if key else None


def cluster_labels(rows: pd.DataFrame) -> np.ndarray:
    """The stage-1 model of each outcome row: its ``cluster`` column, else ``p0=<p0>/seed=<seed>``
    (each (p0, seed) trains its own stage-1 model), else one cluster per row."""
    if "cluster" in rows and rows["cluster"].notna().all():
        return rows["cluster"].astype(str).to_numpy()
    if "seed" in rows:
        return np.array([f"p0={p:g}/seed={int(s)}" for p, s in zip(rows.p0, rows.seed)])
    return np.array([f"run {i}" for i in range(len(rows))])


def cluster_resamples(labels, strata, n_boot: int, rng: np.random.Generator, *,
                      with_draws: bool = False) -> list:
    """Row indices of ``n_boot`` cluster-bootstrap replicates.

    Within each stratum (p0), its clusters are drawn with replacement, as many
    as it has; every row of a drawn cluster enters. A cluster drawn twice enters
    twice.

    Parameters
    ----------
    labels, strata : array_like, shape (n,)
        Cluster and stratum of each row.
    n_boot : int
    rng : numpy Generator

    with_draws : bool
        Also return, per replicate, the draw each row came from (a cluster
        drawn twice is two clusters of the replicate).

    Returns
    -------
    list of ndarray, or of (ndarray, ndarray)
        One index array per replicate (with its draw numbers when ``with_draws``).
    """
    labels = np.asarray(labels)
    strata = np.asarray(strata)
    groups = []
    for s in pd.unique(strata):
        members = [np.flatnonzero((labels == c) & (strata == s)) for c in pd.unique(labels[strata == s])]
        groups.append(members)
    out = []
    for _ in range(n_boot):
        parts = []
        for members in groups:
            parts += [members[i] for i in rng.integers(len(members), size=len(members))]
        idx = np.concatenate(parts) if parts else np.zeros(0, int)
        if with_draws:
            draws = np.concatenate([np.full(len(p), k) for k, p in enumerate(parts)]) if parts else idx
            out.append((idx, draws))
        else:
            out.append(idx)
    return out


def _design(rows: pd.DataFrame) -> tuple[np.ndarray, list[str], list[float]]:
    """Per-p0 intercept and per-p0 slope on log N (one column pair per p0)."""
    p0s = sorted(rows.p0.unique().tolist())
    log_n = np.log(rows.n_envs.to_numpy(float))
    cols, names = [], []
    for p in p0s:
        at = np.isclose(rows.p0.to_numpy(float), p).astype(float)
        cols += [at, at * log_n]
        names += [f"p0={p:g}: intercept", f"p0={p:g}: log N"]
    return np.column_stack(cols), names, p0s


def _vb_fit(y, X, clusters):
    from statsmodels.genmod.bayes_mixed_glm import BinomialBayesMixedGLM

    codes, uniq = pd.factorize(clusters)
    Z = np.zeros((len(y), len(uniq)))
    Z[np.arange(len(y)), codes] = 1.0
    model = BinomialBayesMixedGLM(y, X, Z, np.zeros(len(uniq), int), vcp_p=1.0, fe_p=2.0)
    return model.fit_vb()


def icc_from_sd(sd) -> float:
    """Latent-scale ICC of a random-intercept logistic model with intercept SD ``sd``: σ²/(σ² + π²/3)."""
    v = np.asarray(sd, float) ** 2
    return v / (v + LOGISTIC_VARIANCE)


@dataclass
class RandomInterceptFit:
    """P(RS wins | N, p0) with a random intercept per stage-1 model, at one step budget.

    Attributes
    ----------
    budget : int
    cluster : str
        The unit (:data:`CLUSTER`) and where it comes from.
    n_clusters, n_runs : int
    fixed : dict
        name -> {"value", "sd"}: posterior means and SDs of the per-p0
        intercepts and slopes on log N (logit scale).
    sd_intercept : float
        σ, the random intercept's SD (logit scale; exp of the posterior mean of log σ).
    icc : float
        Latent ICC σ²/(σ² + π²/3) in [0, 1]: the share of the latent variance
        of winning that lies between stage-1 models.
    icc_interval_95 : list
        Percentile interval of the ICC over ``bootstrap["replicates"]``
        cluster-bootstrap refits (stage-1 models resampled within each p0).
    icc_posterior_95 : list
        The variational posterior's 95% interval of the ICC (log σ normal);
        variational Bayes understates posterior spread, so the bootstrap
        interval is the headline.
    gee : dict
        The cluster-robust complement: per fixed effect ``value`` and robust
        ``se``, and the exchangeable ``working_correlation`` of outcomes within
        a stage-1 model.
    method : str
    bootstrap : dict
    """

    budget: int
    cluster: str
    n_clusters: int
    n_runs: int
    fixed: dict
    sd_intercept: float
    icc: float
    icc_interval_95: list
    icc_posterior_95: list
    gee: dict = field(default_factory=dict)
    method: str = ("statsmodels BinomialBayesMixedGLM (variational Bayes): logit P(RS wins) = a[p0] + b[p0] log N "
                   "+ u[stage-1 model], u ~ Normal(0, σ²); latent ICC = σ²/(σ² + π²/3)")
    bootstrap: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def random_intercept_logit(outcomes: pd.DataFrame, budget: int, *, n_boot: int = ICC_BOOTSTRAP,
                           seed: int = 0) -> RandomInterceptFit:
    """Fit P(RS wins | N, p0) with a random intercept per stage-1 model and measure the latent ICC.

    Parameters
    ----------
    outcomes : DataFrame
        One row per sweep run and budget: ``p0, n_envs, budget, win`` and
        ``cluster`` (the stage-1 key; else ``seed``, see :func:`cluster_labels`).
    budget : int
        Optimizer steps at which the end states were read.
    n_boot : int
        Cluster-bootstrap refits behind the ICC's interval (0: none).
    seed : int

    Returns
    -------
    RandomInterceptFit

    Raises
    ------
    ValueError
        If no row has this budget, there are fewer than three stage-1 models, or every stage-1 model has
        a single run (the default demo: each N's family has its own stage-1 model).
    """
    import statsmodels.api as sm

    rows = outcomes[outcomes.budget == budget].reset_index(drop=True)
    if rows.empty:
        raise ValueError(f"no outcomes at budget {budget}")
    labels = cluster_labels(rows)
    if len(np.unique(labels)) < 3:
        raise ValueError(f"a random intercept per {CLUSTER} needs three or more of them, "
                         f"got {len(np.unique(labels))}")
    sizes = pd.Series(labels).value_counts()
    if int(sizes.max()) < 2:  # one run per model: the intercept's variance and a run's own noise are one thing
        raise ValueError(f"every {CLUSTER} has one run ({len(sizes)} models, {len(rows)} runs): its random "
                         "intercept cannot be told from a run's own noise, so no ICC is measured")
    X, names, _ = _design(rows)
    y = rows.win.to_numpy(float)
    res = _vb_fit(y, X, labels)
    log_sd, log_sd_sd = float(res.vcp_mean[0]), float(res.vcp_sd[0])
    fixed = {n: {"value": float(m), "sd": float(s)} for n, m, s in zip(names, res.fe_mean, res.fe_sd)}
    rng = np.random.default_rng(seed)
    strata = rows.p0.to_numpy(float)
    reps = []
    for idx, draw in cluster_resamples(labels, strata, n_boot, rng, with_draws=True):
        try:  # a stage-1 model drawn twice is two clusters of the replicate
            r = _vb_fit(y[idx], X[idx], draw)
            reps.append(float(icc_from_sd(math.exp(r.vcp_mean[0]))))
        except (ValueError, np.linalg.LinAlgError, FloatingPointError):
            continue
    reps = np.array(reps)
    gee_out: dict = {}
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # separation in a bootstrap-free GEE shows as a non-finite SE below
            gee = sm.GEE(y, X, groups=pd.factorize(labels)[0], family=sm.families.Binomial(),
                         cov_struct=sm.cov_struct.Exchangeable()).fit()
            se = np.asarray(gee.bse, float)
        gee_out = {"fixed": {n: {"value": float(v), "se": float(s) if np.isfinite(s) else None}
                             for n, v, s in zip(names, gee.params, se)},
                   "working_correlation": float(gee.cov_struct.dep_params),
                   "method": "statsmodels GEE, binomial, exchangeable working correlation within a stage-1 "
                             "model, robust (sandwich) standard errors"}
        if not np.isfinite(se).all():
            gee_out["note"] = "a robust standard error is not finite (outcomes separated at some p0): null"
    except (ValueError, np.linalg.LinAlgError) as err:  # reported, not fatal: the mixed model is the headline
        gee_out = {"error": str(err)}
    return RandomInterceptFit(
        budget=int(budget), cluster=f"{CLUSTER}: {CLUSTER_SOURCE}", n_clusters=int(len(np.unique(labels))),
        n_runs=int(len(y)), fixed=fixed, sd_intercept=math.exp(log_sd), icc=float(icc_from_sd(math.exp(log_sd))),
        icc_interval_95=([float(np.quantile(reps, 0.025)), float(np.quantile(reps, 0.975))] if reps.size
                         else [None, None]),
        icc_posterior_95=[float(icc_from_sd(math.exp(log_sd - 1.96 * log_sd_sd))),
                          float(icc_from_sd(math.exp(log_sd + 1.96 * log_sd_sd)))],
        gee=gee_out, bootstrap={"unit": CLUSTER, "strata": "p0", "replicates": int(reps.size),
                                "requested": int(n_boot)})

