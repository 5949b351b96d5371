"""Lightning callbacks for diagnostics, opt-in through ``conf/callbacks``."""

from mtl.callbacks.attention_masks import AttentionMasks
from mtl.callbacks.expert_utilization import ExpertUtilization
from mtl.callbacks.gradient_conflict import GradientConflict, cosine_similarities
from mtl.callbacks.last_epochs_mean import LastEpochsMean

__all__ = ["AttentionMasks", "ExpertUtilization", "GradientConflict", "LastEpochsMean", "cosine_similarities"]
