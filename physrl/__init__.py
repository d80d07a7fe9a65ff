"""physrl: the command-line front and the end-to-end experiment.

The three science packages are top-level: ``organisms`` (RL model organisms
that write rollout logs), ``fitting`` (reads logs, fits the ODE) and ``sim``
(the ODE simulator). Data flows one way: organisms -> logs -> fitting -> sim.
This package sits on top and is the only place that imports all three.
"""

__version__ = "0.1.0"
