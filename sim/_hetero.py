"""Heterogeneous environments: geometries, nested draws, calibration, N* sweeps (docs/model.md §4).

Each environment i gets a coordinate e_i = s · u_i in R^D (u_i from a unit
geometry, s the per-geometry coordinate scale), learnabilities
α^k_i = μ_k exp(σ_α ε) and initial log-odds z0 = logit p0 + σ_0 ε (x0, y0
likewise around logit a0, logit b0). Transfer is the Gaussian kernel with
length ℓ_k (exact for N <= ``exact_below``, random Fourier features above).

Draws are *nested*: one draw of ``n_max`` environments per resampling; the
system with N environments uses the first N, so larger N extends smaller N
(the post's sweep). Resamplings and p0 values share one batch: state shape
``(n_resamplings, n_p0, N)``; every p0 sees the same environments (common
random numbers), so differences across p0 are not sampling noise.

All choices here (D, ℓ, σ's, geometry details) are ours: the post's values
were lost. They are fields of :class:`HeterogeneousConfig`, saved next to
every output.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from ._couplings import GaussianKernelCoupling, RandomFourierCoupling
from ._critical import (CriticalDiversity, FinalShare, IntegrationConfig, check_nonnegative,
                        check_probability, find_critical_diversity, log_grid, saturate)
from ._model import Latents, ToyModel

Tensor = torch.Tensor

GEOMETRIES = ("gaussian", "hypercube", "clusters", "curve")


@dataclass(frozen=True)
class HeterogeneousConfig:
    """Environment population for heterogeneous sweeps (docs/model.md §4; values are our choices).

    Attributes
    ----------
    geometry : {"gaussian", "hypercube", "clusters", "curve"}
        Isotropic Gaussian cloud N(0, I_D); uniform hypercube with unit variance
        per axis; Gaussian mixture of ``n_clusters`` unit-Gaussian centres with
        spread ``cluster_spread``; points uniform in t on a random closed curve
        e(t) = √2 (cos(2π f_d t + φ_d))_d, f_d ∈ {1, 2, 3} (a 1-D manifold in R^D).
    dim : int
        D, the embedding dimension.
    scale : float
        s > 0, multiplies every unit coordinate (tuned by :func:`calibrate_scale`).
    length_scale_z, length_scale_x, length_scale_y : float
        ℓ_k > 0: RS reasoning and RS skill transfer far, local skill near.
    alpha_z, alpha_x, alpha_y : float
        Medians μ_k of the log-normal learnabilities (>= 0).
    sigma_alpha : float
        σ_α, standard deviation of log α (>= 0).
    a0, b0 : float in (0, 1)
        Median initial RS skill and local skill.
    sigma0 : float
        Standard deviation of the initial log-odds around logit(p0, a0, b0).
    n_features : int
        M, random Fourier features when N > ``exact_below``.
    exact_below : int
        Largest N using the exact (dense) kernel.
    n_clusters, cluster_spread : int, float
        For ``"clusters"``.
    """

    geometry: str = "gaussian"
    dim: int = 4
    scale: float = 1.0
    length_scale_z: float = 1.0
    length_scale_x: float = 1.0
    length_scale_y: float = 0.05
    alpha_z: float = 1.0
    alpha_x: float = 1.0
    alpha_y: float = 1.0
    sigma_alpha: float = 0.3
    a0: float = 0.5
    b0: float = 0.1
    sigma0: float = 0.3
    n_features: int = 512
    exact_below: int = 1000
    n_clusters: int = 8
    cluster_spread: float = 0.15

    def __post_init__(self):
        if self.geometry not in GEOMETRIES:
            raise ValueError(f"geometry must be one of {GEOMETRIES}, got {self.geometry!r}")
        if self.dim < 1:
            raise ValueError(f"dim must be >= 1, got {self.dim}")
        for name in ("scale", "length_scale_z", "length_scale_x", "length_scale_y"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("alpha_z", "alpha_x", "alpha_y", "sigma_alpha", "sigma0", "cluster_spread"):
            check_nonnegative(name, getattr(self, name))
        check_probability("a0", self.a0)
        check_probability("b0", self.b0)
        if self.n_features < 1:
            raise ValueError(f"n_features must be >= 1, got {self.n_features}")


@dataclass
class EnvironmentDraw:
    """Unit-scale nested draws: the first N environments of each resampling form the N-env system.

    Attributes
    ----------
    coords : Tensor, shape (R, n_max, D)
        Unit coordinates u_i (multiply by ``scale``).
    noise_alpha : Tensor, shape (3, R, n_max)
        Standard normals for log α^z, log α^x, log α^y.
    noise_init : Tensor, shape (3, R, n_max)
        Standard normals for z0, x0, y0.
    feature_seed : int
        Seed of the random Fourier directions (the same for every N: nested).
    """

    coords: Tensor
    noise_alpha: Tensor
    noise_init: Tensor
    feature_seed: int

    @property
    def n_max(self) -> int:
        return int(self.coords.shape[1])


def unit_coordinates(geometry: str, n_resamplings: int, n_envs: int, dim: int,
                     generator: torch.Generator, *, n_clusters: int = 8,
                     cluster_spread: float = 0.15) -> Tensor:
    """Coordinates of shape (R, N, D) with unit-order spread for one geometry (see config)."""
    r, n, d = n_resamplings, n_envs, dim
    kw = dict(generator=generator, dtype=torch.float64)
    if geometry == "gaussian":
        return torch.randn(r, n, d, **kw)
    if geometry == "hypercube":
        return (torch.rand(r, n, d, **kw) - 0.5) * math.sqrt(12.0)
    if geometry == "clusters":
        centres = torch.randn(r, n_clusters, d, **kw)
        label = torch.randint(0, n_clusters, (r, n), generator=generator)
        return torch.gather(centres, 1, label[..., None].expand(r, n, d)) + \
            cluster_spread * torch.randn(r, n, d, **kw)
    if geometry == "curve":
        freq = torch.randint(1, 4, (r, 1, d), generator=generator).to(torch.float64)
        phase = torch.rand(r, 1, d, **kw) * 2 * math.pi
        t = torch.rand(r, n, 1, **kw)
        return math.sqrt(2.0) * torch.cos(2 * math.pi * freq * t + phase)
    raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}")


def draw_environments(config: HeterogeneousConfig, n_resamplings: int, n_max: int,
                      seed: int = 0) -> EnvironmentDraw:
    """One nested draw of ``n_max`` environments per resampling, reproducible from ``seed``."""
    g = torch.Generator().manual_seed(int(seed))
    coords = unit_coordinates(config.geometry, n_resamplings, n_max, config.dim, g,
                              n_clusters=config.n_clusters, cluster_spread=config.cluster_spread)
    noise_alpha = torch.randn(3, n_resamplings, n_max, generator=g, dtype=torch.float64)
    noise_init = torch.randn(3, n_resamplings, n_max, generator=g, dtype=torch.float64)
    return EnvironmentDraw(coords, noise_alpha, noise_init, int(seed) + 1)


def heterogeneous_builder(config: HeterogeneousConfig, draw: EnvironmentDraw, p0, *,
                          dtype=torch.float32, device=None):
    """A builder ``N -> (ToyModel, Latents)`` for :func:`sim.critical_diversity`.

    Parameters
    ----------
    config : HeterogeneousConfig
    draw : EnvironmentDraw
        Nested draws (N <= ``draw.n_max``).
    p0 : float or array of shape (P,), in (0, 1)
        Median initial RS propensity; one batch column per value.
    dtype, device
        Of the state (float32 is plenty for sweeps; float64 for tests).

    Returns
    -------
    callable(int) -> (ToyModel, Latents)
        Latents of shape (R, P, N); the model's couplings are exact Gaussian
        kernels for N <= ``config.exact_below``, else random Fourier features
        (the same directions for every N, so draws stay nested).
    """
    check_probability("p0", p0)
    p0 = torch.as_tensor(np.atleast_1d(np.asarray(p0, dtype=float)), dtype=torch.float64)

    def build(n: int):
        if not 1 <= n <= draw.n_max:
            raise ValueError(f"N must lie in [1, {draw.n_max}] for this draw, got {n}")
        couplings, alphas, y0 = _environments(config, draw, p0, n, (), dtype, device)
        return ToyModel(*couplings, *alphas), y0

    return build


def _environments(config: HeterogeneousConfig, draw: EnvironmentDraw, p0: Tensor, n: int, mid: tuple,
                  dtype, device):
    """Couplings, learnabilities and initial latents of the first ``n`` environments of ``draw``.

    Batch shape (R, *mid, P, n): resamplings, any axes ``mid`` the caller adds
    (size 1 here), the P values of ``p0``. Exact Gaussian kernels for
    n <= ``exact_below``, else random Fourier features with the draw's seed.
    """
    c = config
    r, p = draw.coords.shape[0], len(p0)
    between = (None,) * (len(mid) + 1)                                  # mid axes and P
    coords = (c.scale * draw.coords[:, :n]).to(device=device, dtype=dtype)[(slice(None),) + between]
    lengths = (c.length_scale_z, c.length_scale_x, c.length_scale_y)
    made: dict[float, object] = {}
    for ell in lengths:
        if ell in made:
            continue
        if n <= c.exact_below:
            made[ell] = GaussianKernelCoupling(coords, ell)
        else:
            gen = torch.Generator().manual_seed(draw.feature_seed)
            made[ell] = RandomFourierCoupling(coords, ell, c.n_features, generator=gen)
    na = draw.noise_alpha[(slice(None), slice(None)) + between + (slice(0, n),)]
    alphas = [(mu * torch.exp(c.sigma_alpha * na[k])).to(device=device, dtype=dtype)
              for k, mu in enumerate((c.alpha_z, c.alpha_x, c.alpha_y))]
    ni = draw.noise_init[(slice(None), slice(None)) + between + (slice(0, n),)]
    centre = [torch.logit(p0).reshape((1,) * (1 + len(mid)) + (p, 1)), math.log(c.a0 / (1 - c.a0)),
              math.log(c.b0 / (1 - c.b0))]
    shape = (r,) + tuple(mid) + (p, n)
    y0 = Latents(*((centre[k] + c.sigma0 * ni[k]).expand(shape).to(device=device, dtype=dtype)
                   .contiguous() for k in range(3)))
    return tuple(made[ell] for ell in lengths), alphas, y0


def _padded_system(config: HeterogeneousConfig, draw: EnvironmentDraw, p0: Tensor, ns,
                   dtype, device):
    """All N in ``ns`` at once: the N-env system embedded in the first max(ns) envs.

    Environments j >= N get w_j = 0 (held out): they send no updates, so the
    first N evolve exactly as the N-env system, and they are excluded from the
    mean p. Batch shape (R, G, P, n_pad) with G = len(ns).
    """
    n_pad = int(max(ns))
    couplings, alphas, y0 = _environments(config, draw, p0, n_pad, (len(ns),), dtype, device)
    w = (torch.arange(n_pad)[None, :] < torch.as_tensor(ns)[:, None]).to(dtype)
    w = w.to(device)[None, :, None, :]                                   # (1, G, 1, n_pad)
    return ToyModel(*couplings, *alphas, w=w), y0


def sweep_critical_diversity(config: HeterogeneousConfig, p0, *, n_resamplings: int = 16,
                             n_max: int = 10_000, n_grid_points: int = 16, threshold: float = 0.5,
                             integration: IntegrationConfig = IntegrationConfig(dt=2.0, t_max=3000.0),
                             seed: int = 0, dtype=torch.float32, device=None,
                             progress: bool = True, stop_when_crossed: bool = True,
                             chunk: int = 4, n_grid=None,
                             stop_fraction: float = 1.0, engine: str = "auto") -> CriticalDiversity:
    """N*(p0) on the post's log grid for one geometry, per resampling (docs/model.md §4).

    Grid points are integrated ``chunk`` at a time in one batch: the N-env
    system is the first N environments of the largest N of the chunk with the
    others held out (w = 0), which is exact (held-out envs send no updates).
    The search is :func:`sim.find_critical_diversity` (method ``"grid"``).

    Parameters
    ----------
    config : HeterogeneousConfig
    p0 : array of shape (P,), in (0, 1)
    n_resamplings : int
        R, independent nested environment draws (a batch axis).
    n_max, n_grid_points : int
        Grid of N: :func:`log_grid` (the post's 16 points from 1 to 10,000).
    threshold : float
        Mean final p (over trained envs) above which RS has won.
    integration : IntegrationConfig
        Euler settings in normalised time (default dt = 2, t_max = 3,000:
        RS takes off after ~1 / (p0 · gap), about 500 at p0 = 0.005).
    seed : int
        Seeds the draws (results reproducible).
    stop_when_crossed : bool
        Stop once every (resampling, p0) has crossed: larger N cannot change
        the first crossing.
    chunk : int
        Grid points per batched integration.
    n_grid : array of int, optional
        Explicit grid of N (overrides ``n_max``/``n_grid_points``).
    stop_fraction : float in (0, 1]
        With ``stop_when_crossed``, stop once this fraction of resamplings has
        crossed for every p0 (0.8 keeps median and IQR exact; the rest report
        status ``above_n_max`` with the last N run). 1.0: wait for all.
    engine : str
        Euler engine (see :func:`sim.euler`).

    Returns
    -------
    CriticalDiversity
        ``method="grid"`` (log-linear interpolation), ``n_star`` and
        ``status`` of shape (R, P), ``share`` of shape (G, R, P) over the grid
        points run (``n_grid``).
    """
    check_probability("p0", p0)
    p0_arr = np.atleast_1d(np.asarray(p0, dtype=float))
    p0_t = torch.as_tensor(p0_arr, dtype=torch.float64)
    grid = log_grid(n_max, n_grid_points) if n_grid is None else np.asarray(n_grid, dtype=int)
    draw = draw_environments(config, n_resamplings, int(grid[-1]), seed)

    def share(ns: np.ndarray) -> FinalShare:  # ns: (R, P, K), the same K values everywhere
        row = [int(n) for n in ns.reshape(-1, ns.shape[-1])[0]]
        model, y0 = _padded_system(config, draw, p0_t, row, dtype, device)   # batch (R, K, P)
        res = saturate(model, y0, integration=integration, threshold=threshold, engine=engine)
        return (np.moveaxis(res.share.double().cpu().numpy(), 1, -1), np.moveaxis(res.settled, 1, -1))

    def stop(crossed: np.ndarray) -> bool:  # crossed: (R, P)
        return stop_when_crossed and bool(np.all(crossed.mean(0) >= stop_fraction))

    res = find_critical_diversity(share, batch_shape=(n_resamplings, len(p0_arr)), method="grid",
                                  threshold=threshold, n_grid=grid, chunk=chunk, stop=stop, progress=progress,
                                  desc=f"{config.geometry}: N grid")
    res.extras.update(config=asdict(config), p0=p0_arr, seed=seed)
    return res


def calibrate_scale(config: HeterogeneousConfig, *, p0_ref: float = 0.1, target: float = 20.0,
                    n_resamplings: int = 8, scale_range=(0.05, 5.0), iterations: int = 8,
                    integration: IntegrationConfig = IntegrationConfig(dt=2.0, t_max=3000.0),
                    seed: int = 1000, n_max: int = 10_000, progress: bool = False
                    ) -> tuple[float, float]:
    """Tune the coordinate scale s so the median N*(p0_ref) hits ``target`` (the post's calibration).

    Bisection on log s inside ``scale_range``, assuming N* rises with s (farther
    environments transfer less). Uses its own seed, so the calibration draws
    are independent of the sweep's.

    Returns
    -------
    (scale, median_n_star) : the calibrated s and the median N*(p0_ref) it gives.
    """
    check_probability("p0_ref", p0_ref)
    lo, hi = math.log(scale_range[0]), math.log(scale_range[1])
    # never sweep far past the target: an s that pushes N* beyond 30 × target is
    # simply "too large" (saves running the grid to 10,000 with random features)
    grid = log_grid(n_max)
    cap = int(grid[min(len(grid) - 1, int(np.searchsorted(grid, 30 * target)))])

    def median_at(log_s):
        res = sweep_critical_diversity(replace(config, scale=math.exp(log_s)), [p0_ref],
                                       n_resamplings=n_resamplings, integration=integration,
                                       seed=seed, n_grid=grid[grid <= cap], progress=False)
        return float(np.median(res.ranked()))   # above the grid ranks as +inf: "too large"

    def distance(m):
        return abs(math.log(m) - math.log(target)) if math.isfinite(m) else math.inf

    best = (math.exp(0.5 * (lo + hi)), math.inf)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=iterations, desc=f"{config.geometry}: calibrate s", leave=False)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        m = median_at(mid)
        if distance(m) < distance(best[1]):
            best = (math.exp(mid), m)
        if m > target:
            hi = mid
        else:
            lo = mid
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return best
