"""Lightning callbacks for diagnostics, opt-in through ``conf/callbacks``."""

from mtl.callbacks.gradient_conflict import GradientConflict, cosine_similarities

__all__ = ["GradientConflict", "cosine_similarities"]
