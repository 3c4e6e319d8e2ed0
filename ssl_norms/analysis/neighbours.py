"""Leave-one-out cosine k-NN: every point classified by the others (never by itself)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def knn_predict_leave_one_out(
    feats: Tensor, labels: Tensor, num_classes: int, k: int = 200, temperature: float = 0.1, chunk_size: int = 1024,
    exclude_self: bool = True,
) -> Tensor:
    """Predicted label of every row of ``feats`` from its ``k`` most cosine-similar *other* rows.

    The vote is the one of :func:`ssl_norms.eval.knn_predict` (weights exp(sim / temperature);
    ``temperature=inf``: equal votes, ties to the smallest label).
    A point is excluded by position, not by similarity, so an exact duplicate of it still votes;
    ``exclude_self=False`` keeps the point among its own neighbours (fit and predict on one set).
    Memory is O(chunk_size x n).
    """
    if feats.ndim != 2 or len(feats) != len(labels):
        raise ValueError(f"need (N, D) features and N labels, got {tuple(feats.shape)} and {tuple(labels.shape)}")
    if len(feats) < 2:
        raise ValueError("leave-one-out k-NN needs at least 2 points")
    if k < 1 or temperature <= 0:
        raise ValueError(f"need k >= 1 and temperature > 0, got k={k}, temperature={temperature}")
    k = min(k, len(feats) - 1 if exclude_self else len(feats))
    bank = F.normalize(feats.float(), dim=1)
    labels = labels.to(bank.device).long()
    predictions = []
    for start in range(0, len(bank), chunk_size):
        chunk = bank[start : start + chunk_size]
        sim = chunk @ bank.T
        rows = torch.arange(len(chunk), device=bank.device)
        if exclude_self:
            sim[rows, start + rows] = -torch.inf  # a point is never its own neighbour
        top, idx = sim.topk(k, dim=1)
        votes = torch.zeros(len(chunk), num_classes, device=bank.device, dtype=top.dtype)
        votes.scatter_add_(1, labels[idx], (top / temperature).exp())
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions)
