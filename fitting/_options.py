"""The names the fit's command line shows: transfer variants and synthetic logs' default truth.

A leaf module (it imports only ``physrl.sim._options``, another leaf), so ``physrl fit --help`` and
``physrl fit synthesize --help`` list them without importing torch, lmfit or
pandas. The transfer variants are defined in docs/model.md §1 and §6
(``none``: C = I; ``homogeneous``: one coupling c per latent; ``kernel``: a
Gaussian kernel of the environments' coordinates with a length scale per
latent).
"""

from physrl.sim._options import SELECTIONS as SELECTIONS  # a leaf too: the selection laws' names (§9)

#: transfer (coupling) variants between environments, docs/model.md §1 and §6
TRANSFERS = ("none", "homogeneous", "kernel")

#: default true parameters of :func:`physrl.fitting.synthesize` (normalised: α_z = 1, time_scale = model time
#: per optimizer step; p0, a0, b0 probabilities in (0, 1); c_* transfers in [0, 1]; length scales in coordinate
#: units; gamma the selection-law exponent >= 0, 1 = the post's replicator, docs/model.md §9)
DEFAULT_TRUTH: dict[str, float] = {
    "p0": 0.1, "a0": 0.45, "b0": 0.25, "time_scale": 0.3, "alpha_z": 1.0, "alpha_x": 1.0, "alpha_y": 0.5,
    "c_z": 0.8, "c_x": 0.6, "c_y": 0.1,
    "length_scale_z": 3.0, "length_scale_x": 2.0, "length_scale_y": 0.7, "lam": 0.0, "gamma": 1.0,
}
