"""prune-harness: prune PyTorch models and gate CI on their quality.

Importing the package pins the numeric code paths of this process (portable numerics, see
:mod:`harness.numerics`) before torch is imported, unless ``PRUNE_HARNESS_NUMERICS=native``.
"""

from harness import numerics as _numerics

_numerics.configure()

__version__ = "0.1.0"
