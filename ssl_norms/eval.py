"""Weighted cosine k-NN (Wu et al. 2018): the online k-NN callback and the analyses both vote here."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_vote(k: int, temperature: float) -> None:
    if k < 1 or temperature <= 0:
        raise ValueError(f"k-NN needs k >= 1 and temperature > 0, got k={k}, temperature={temperature}")


def single_class_note(bank_labels: Tensor, labels: Tensor) -> str | None:
    """Why a k-NN accuracy of these labels says nothing about the embedding, or None when it does:
    a bank of one class predicts that class everywhere (accuracy trivially 1.0 on that class), and
    evaluated samples of one class measure only that class's recall."""
    bank, evaluated = bank_labels.unique(), labels.unique()
    if len(bank) == 1:
        share = float((labels == bank[0]).float().mean()) if len(labels) else 1.0
        return (f"the k-NN bank holds a single class ({int(bank[0])}): every prediction is that class, so the k-NN "
                f"accuracy is trivially {round(share, 4)} (the share of that class among the evaluated samples) and says "
                "nothing about the embedding")
    if len(evaluated) == 1:
        return (f"the samples the k-NN evaluates hold a single class ({int(evaluated[0])}): the k-NN accuracy is "
                "that class's recall, not an accuracy over classes")
    return None


def _vote(sim: Tensor, bank_labels: Tensor, num_classes: int, k: int, temperature: float) -> Tensor:
    """The label each row of ``sim`` (similarities to the bank) gets from its ``k`` most similar bank
    points, whose votes are weighted by exp(sim / temperature)."""
    top, idx = sim.topk(k, dim=1)
    votes = torch.zeros(len(sim), num_classes, device=sim.device, dtype=top.dtype)
    votes.scatter_add_(1, bank_labels[idx], (top / temperature).exp())
    return votes.argmax(dim=1)


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
    """Predicted labels of ``test_feats`` from the ``k`` most cosine-similar training points.

    Features are L2-normalised; votes are weighted by exp(sim / temperature). Test points are
    processed in chunks so memory is O(chunk_size x n_train), which keeps 50k x 10k on a CPU.
    """
    if train_feats.ndim != 2 or test_feats.ndim != 2 or train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(
            f"knn_predict needs 2-d features of equal width, got {tuple(train_feats.shape)} and {tuple(test_feats.shape)}"
        )
    if len(train_feats) != len(train_labels):
        raise ValueError(f"{len(train_feats)} training features but {len(train_labels)} labels")
    _check_vote(k, temperature)
    k = min(k, len(train_feats))
    bank = F.normalize(train_feats.float(), dim=1)
    labels = train_labels.to(bank.device).long()
    predictions = [
        _vote(chunk.to(bank.device) @ bank.T, labels, num_classes, k, temperature)
        for chunk in F.normalize(test_feats.float(), dim=1).split(chunk_size)
    ]
    return torch.cat(predictions) if predictions else torch.empty(0, dtype=torch.long)


@torch.no_grad()
def knn_predict_leave_one_out(
    feats: Tensor, labels: Tensor, num_classes: int, k: int = 200, temperature: float = 0.1, chunk_size: int = 1024,
    exclude_self: bool = True,
) -> Tensor:
    """Predicted label of every row of ``feats`` from its ``k`` most cosine-similar *other* rows
    (the vote of :func:`knn_predict`; ``temperature=inf``: equal votes).

    A point is excluded by position, not by similarity, so an exact duplicate of it still votes;
    ``exclude_self=False`` keeps the point among its own neighbours (fit and predict on one set, as
    the released notebook does). Memory is O(chunk_size x n).
    """
    if feats.ndim != 2 or len(feats) != len(labels):
        raise ValueError(f"need (N, D) features and N labels, got {tuple(feats.shape)} and {tuple(labels.shape)}")
    if len(feats) < 2:
        raise ValueError("leave-one-out k-NN needs at least 2 points")
    _check_vote(k, temperature)
    note = single_class_note(labels, labels)
    if note:
        warnings.warn(note, stacklevel=2)
    k = min(k, len(feats) - 1 if exclude_self else len(feats))
    bank = F.normalize(feats.float(), dim=1)
    labels = labels.to(bank.device).long()
    predictions = []
    for start in range(0, len(bank), chunk_size):
        sim = bank[start : start + chunk_size] @ bank.T
        if exclude_self:
            rows = torch.arange(len(sim), device=bank.device)
            sim[rows, start + rows] = -torch.inf  # a point is never its own neighbour
        predictions.append(_vote(sim, labels, num_classes, k, temperature))
    return torch.cat(predictions)
