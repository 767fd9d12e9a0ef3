"""jepa: train Joint-Embedding Predictive Architectures."""

__version__ = "0.1.0"
