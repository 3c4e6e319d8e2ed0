"""The embedding norm as a confidence score (Draganov et al., ICML 2025: norms "encode network
confidence, with smaller norms corresponding to unexpected samples").

Sign convention: every score here is a *novelty* score, higher = more novel (less confident), so
norms enter negated. Out-of-distribution (OOD) samples are the positive class: AUROC is the chance
that a random OOD sample scores above a random in-distribution (ID) one (1: perfect, 0.5: chance,
below 0.5: the OOD samples have the *larger* norms); FPR@95 is the share of ID samples flagged as
novel at the threshold that flags 95% of the OOD samples (lower is better).

Usage::

    scorer = NormConfidence.fit(train_z, train_labels, num_classes)
    id_scores, ood_scores = scorer.score(test_z), scorer.score(ood_z)   # {"norm", "relative", "class_relative"}
    detection_metrics(id_scores["norm"], ood_scores["norm"])             # {"auroc": ..., "fpr95": ...}
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchmetrics.functional.classification import binary_auroc, binary_roc

from ssl_norms.eval import knn_predict

SCORERS = {
    "norm": "-||z||",
    "relative": "-(||z|| - m) / s, m and s the mean and std of the training norms (ranks as the raw norm)",
    "class_relative": "-(||z|| - m_c) / s_c, m_c and s_c those of the training norms of the predicted class c",
}


@dataclass(frozen=True)
class NormConfidence:
    """Norm statistics of a training set (overall and per class) and its embeddings as a k-NN bank."""

    mean: Tensor
    std: Tensor
    class_mean: Tensor  # (C,); classes with fewer than 2 training samples take the overall values
    class_std: Tensor
    bank: Tensor
    bank_labels: Tensor

    @classmethod
    def fit(cls, embeddings: Tensor, labels: Tensor, num_classes: int) -> "NormConfidence":
        if embeddings.ndim != 2 or len(embeddings) != len(labels) or len(embeddings) < 2:
            raise ValueError(f"need (N, D) embeddings and N labels with N >= 2, got {tuple(embeddings.shape)} and {tuple(labels.shape)}")
        labels = labels.long()
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes}), got [{labels.min().item()}, {labels.max().item()}]")
        norms = embeddings.double().norm(dim=1)
        count = torch.bincount(labels, minlength=num_classes).double()
        class_mean = torch.zeros(num_classes, dtype=norms.dtype).index_add_(0, labels, norms) / count.clamp_min(1)
        squares = torch.zeros(num_classes, dtype=norms.dtype).index_add_(0, labels, (norms - class_mean[labels]).square())
        class_std = (squares / (count - 1).clamp_min(1)).sqrt()
        mean, std, few = norms.mean(), norms.std(), count < 2
        return cls(mean, std, class_mean.where(~few, mean), class_std.where(~few, std), embeddings.detach(), labels)

    def predict(self, embeddings: Tensor, k: int = 200, temperature: float = 0.1) -> Tensor:
        """Classes of ``embeddings`` by the weighted cosine k-NN over the training embeddings."""
        return knn_predict(self.bank, self.bank_labels, embeddings, len(self.class_mean), k, temperature)

    def score(self, embeddings: Tensor, predicted: Tensor | None = None) -> dict[str, Tensor]:
        """The novelty scores of :data:`SCORERS` per row; ``predicted``: the classes from any classifier
        (default :meth:`predict`)."""
        predicted = self.predict(embeddings) if predicted is None else predicted.long()
        norms = embeddings.double().norm(dim=1)
        return {
            "norm": -norms,
            "relative": -(norms - self.mean) / self.std.clamp_min(1e-12),
            "class_relative": -(norms - self.class_mean[predicted]) / self.class_std[predicted].clamp_min(1e-12),
        }


def max_softmax_novelty(logits: Tensor) -> Tensor:
    """The maximum-softmax-probability baseline (Hendrycks & Gimpel 2017) as a novelty score: -max p."""
    return -logits.double().softmax(dim=1).amax(dim=1)


def detection_metrics(id_scores: Tensor, ood_scores: Tensor) -> dict[str, float]:
    """``auroc`` and ``fpr95`` of telling OOD (positive) from ID samples by a novelty score."""
    if len(id_scores) == 0 or len(ood_scores) == 0:
        raise ValueError(f"need ID and OOD scores, got {len(id_scores)} and {len(ood_scores)}")
    scores = torch.cat([id_scores, ood_scores]).double()
    # ranks in [0, 1], ties kept: torchmetrics squashes scores outside [0, 1] through a sigmoid,
    # which would tie large scores at 1.0
    distinct, ranks = scores.unique(return_inverse=True)
    scores = ranks.double() / max(len(distinct) - 1, 1)
    target = torch.cat([torch.zeros(len(id_scores)), torch.ones(len(ood_scores))]).long()
    fpr, tpr, _ = binary_roc(scores, target)
    return {"auroc": binary_auroc(scores, target).item(), "fpr95": fpr[tpr >= 0.95].min().item()}


def norm_auroc(reference_norms: Tensor, other_norms: Tensor) -> float:
    """AUROC of "low norm = novel" for telling ``other`` samples from ``reference`` ones."""
    return detection_metrics(-reference_norms, -other_norms)["auroc"]
