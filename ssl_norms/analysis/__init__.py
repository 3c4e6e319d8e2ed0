"""The paper's analyses of trained models, as functions and as ``ssl-norms analyze <name>``.

Usage::

    from ssl_norms.analysis import TrainedRun, knn_by_norm
    run = TrainedRun.load("runs/simclr-cifar10/x/checkpoints/last.ckpt", data_root="/data")
    result = knn_by_norm(run, "out/")          # out/knn_by_norm.png, .csv, .json, _samples.npz

Each analysis returns an :class:`AnalysisResult` (paths written, headline numbers). Embeddings come
from un-augmented images unless the run is loaded with ``augmented=True``. The names that need torch
(loading a run, the k-NN and AUROC helpers) are imported on first use, so that the analyses'
command line answers ``--help`` without torch.
"""

import importlib
from typing import Any

from ssl_norms.analysis.command import ANALYSES, run_all, run_analysis
from ssl_norms.analysis.confidence import (
    bucket_summary,
    entropy_by_norm,
    extreme_indices,
    extremes,
    human_agreement_by_norm,
    knn_by_norm,
    norm_buckets,
)
from ssl_norms.analysis.curves import plot_runs_over_epochs, read_metrics_by_epoch, run_labels, training_curves
from ssl_norms.analysis.human_labels import entropy_bits, original_train_indices, storage_format
from ssl_norms.analysis.novelty import detection_table, novelty
from ssl_norms.analysis.opposite_pairs import opposite_pairs, opposite_rate_at_epochs, recomputed_opposite_rate
from ssl_norms.analysis.output import AnalysisResult, AnalysisUnavailable

_WITH_TORCH = {
    **dict.fromkeys(("FirstView", "TrainedRun", "embed_dataset", "load_datamodule", "load_model"), "ssl_norms.analysis.loading"),
    "norm_auroc": "ssl_norms.confidence",
    "knn_predict_leave_one_out": "ssl_norms.eval",
}

__all__ = [
    "ANALYSES", "AnalysisResult", "AnalysisUnavailable", "FirstView", "TrainedRun",
    "bucket_summary", "detection_table", "embed_dataset", "entropy_bits", "entropy_by_norm", "extreme_indices", "extremes",
    "human_agreement_by_norm", "knn_by_norm", "knn_predict_leave_one_out", "load_datamodule", "load_model",
    "norm_auroc", "norm_buckets", "novelty", "opposite_pairs", "opposite_rate_at_epochs", "original_train_indices",
    "plot_runs_over_epochs", "read_metrics_by_epoch", "recomputed_opposite_rate",
    "run_all", "run_analysis", "run_labels", "storage_format", "training_curves",
]


def __getattr__(name: str) -> Any:
    if name in _WITH_TORCH:
        return getattr(importlib.import_module(_WITH_TORCH[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
