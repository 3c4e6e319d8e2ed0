from ssl_norms.callbacks.guards import NonFiniteGuard, NonFiniteLossError
from ssl_norms.callbacks.knn import OnlineKNN
from ssl_norms.callbacks.norm_monitor import EmbeddingNormMonitor
from ssl_norms.callbacks.summary import RunSummary

__all__ = ["EmbeddingNormMonitor", "NonFiniteGuard", "NonFiniteLossError", "OnlineKNN", "RunSummary"]
