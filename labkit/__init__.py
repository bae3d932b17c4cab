"""labkit: meta-learned plasticity rules with random feedback pathways.

A tutorial library reproducing Shervani-Tabar & Rosenbaum, "Meta-learning biologically
plausible plasticity rules with random feedback pathways", Nat. Commun. 14, 1805 (2023).

Data flows one way: ``data`` -> ``learner`` (``networks`` + ``feedback`` + ``rules``) ->
``meta`` -> ``results`` on disk -> ``plots``.
"""
__version__ = "0.1.0"
