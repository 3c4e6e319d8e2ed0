"""Offline evaluation routines (the callbacks call the same functions)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def knn_predict(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> Tensor:
    """Weighted cosine k-NN (Wu et al. 2018): predicted labels of ``test_feats``.

    Features are L2-normalised; each test point takes its ``k`` most similar training points, whose
    votes are weighted by exp(sim / temperature). Test points are processed in chunks so memory is
    O(chunk_size x n_train), which keeps 50k x 10k on a CPU.
    """
    if train_feats.ndim != 2 or test_feats.ndim != 2 or train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(
            f"knn_predict needs 2-d features of equal width, got {tuple(train_feats.shape)} and {tuple(test_feats.shape)}"
        )
    if len(train_feats) != len(train_labels):
        raise ValueError(f"{len(train_feats)} training features but {len(train_labels)} labels")
    if k < 1 or temperature <= 0:
        raise ValueError(f"knn_predict needs k >= 1 and temperature > 0, got k={k}, temperature={temperature}")
    k = min(k, len(train_feats))
    bank = F.normalize(train_feats.float(), dim=1)
    labels = train_labels.to(bank.device).long()
    predictions = []
    for chunk in F.normalize(test_feats.float(), dim=1).split(chunk_size):
        sim, idx = (chunk.to(bank.device) @ bank.T).topk(k, dim=1)
        weights = (sim / temperature).exp()
        votes = torch.zeros(len(chunk), num_classes, device=bank.device, dtype=weights.dtype)
        votes.scatter_add_(1, labels[idx], weights)
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions) if predictions else torch.empty(0, dtype=torch.long)
