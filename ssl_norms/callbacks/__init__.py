from ssl_norms.callbacks.compile import CompileBackbone
from ssl_norms.callbacks.cut_init import CutInit
from ssl_norms.callbacks.grad_scale import GradScale
from ssl_norms.callbacks.guards import NonFiniteGuard, NonFiniteLossError
from ssl_norms.callbacks.knn import OnlineKNN
from ssl_norms.callbacks.linear_probe import OnlineLinearProbe
from ssl_norms.callbacks.norm_monitor import EmbeddingNormMonitor
from ssl_norms.callbacks.progress import ProgressLines
from ssl_norms.callbacks.representation import RepresentationMetrics
from ssl_norms.callbacks.summary import RunSummary
from ssl_norms.callbacks.wandb_media import WandbValidationMedia
from ssl_norms.callbacks.weight_norms import WeightNormMonitor

__all__ = ["CompileBackbone", "CutInit", "EmbeddingNormMonitor", "GradScale", "NonFiniteGuard", "NonFiniteLossError", "OnlineKNN", "OnlineLinearProbe", "ProgressLines", "RepresentationMetrics", "RunSummary", "WandbValidationMedia", "WeightNormMonitor"]
