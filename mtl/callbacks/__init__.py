"""Lightning callbacks for diagnostics, opt-in through ``conf/callbacks``."""

from mtl.callbacks.expert_utilization import ExpertUtilization
from mtl.callbacks.gradient_conflict import GradientConflict, cosine_similarities

__all__ = ["ExpertUtilization", "GradientConflict", "cosine_similarities"]
