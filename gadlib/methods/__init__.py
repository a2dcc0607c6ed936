"""GAD methods, one family per module, all reachable through the registry."""
from gadlib.methods.base import (Method, References, Scores, create_method, list_methods, needs_training,
                                 register_method)
from gadlib.methods import image_residual, inctrl, knn, nagl, resad, vod  # noqa: F401  (register the methods)

__all__ = ["Method", "References", "Scores", "create_method", "list_methods", "needs_training", "register_method"]
