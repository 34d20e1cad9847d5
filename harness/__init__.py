"""prune-harness: prune PyTorch models and gate CI on their quality."""

__version__ = "0.1.0"
