"""Machine-learning support: the model registry (:mod:`runtime.ml.registry`)."""

from runtime.ml.registry import ModelRegistry

__all__ = ["ModelRegistry"]
