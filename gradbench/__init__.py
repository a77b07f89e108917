"""gradbench: compare how neural networks get their gradients.

Forward gradients (Baydin et al. 2022), backpropagation, hand-derived backprop and finite
differences, each paired with the classic update rules, trained under one Hydra config.
Run `gradbench --help`.
"""

__version__ = "0.1.0"
