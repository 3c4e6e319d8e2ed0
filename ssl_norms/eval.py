"""Evaluation of frozen representations: weighted cosine k-NN (Wu et al. 2018), where the online
k-NN callback and the analyses vote, and the linear probe (offline fit, shared top-k accuracy)."""

from __future__ import annotations

import warnings

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.functional.classification import multiclass_accuracy

from ssl_norms.hardware import fast_bf16


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


def _vote_scores(sim: Tensor, bank_labels: Tensor, num_classes: int, k: int, temperature: float) -> Tensor:
    """Class scores (N, C) of each row of ``sim`` (similarities to the bank): the votes of its ``k``
    most similar bank points, weighted by exp(sim / temperature)."""
    top, idx = sim.topk(k, dim=1)
    votes = torch.zeros(len(sim), num_classes, device=sim.device, dtype=top.dtype)
    return votes.scatter_add_(1, bank_labels[idx], (top / temperature).exp())


def _vote(sim: Tensor, bank_labels: Tensor, num_classes: int, k: int, temperature: float) -> Tensor:
    """The label each row of ``sim`` gets from :func:`_vote_scores`."""
    return _vote_scores(sim, bank_labels, num_classes, k, temperature).argmax(dim=1)


#: unit roundoff of the formats the similarity search may use
UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11, torch.float32: 2.0**-24}
#: the search keeps this many times k low-precision similarities per query to see past the top-k
#: boundary: dense neighbourhoods put many points within the rounding bound of the k-th
SEARCH_LISTED = 2


#: the first chunk of a low-precision search: when the bound cannot certify most of its queries
#: (backbone features of a weak model: cosines ~0.95 of dense neighbours), the rest is voted in fp32
PROBE_QUERIES = 128

#: below this many bank points the certificate's fixed cost outweighs the cheaper search (a 5k bank
#: ran at 0.4-0.6x the fp32 speed on a 2-core AVX-512-bf16 CPU; 50k at 1.0-1.25x)
LOW_PRECISION_MIN_BANK = 20_000


def search_dtype(device: torch.device | str, bank_size: int = LOW_PRECISION_MIN_BANK) -> torch.dtype:
    """The fastest exact-able format of the similarity search on ``device`` for a bank of
    ``bank_size`` points: fp16 (fp32 accumulation and output) on CUDA, bf16 on CPUs with fast bf16
    (:func:`ssl_norms.hardware.fast_bf16`), fp32 otherwise or for a small bank."""
    device = torch.device(device)
    if bank_size < LOW_PRECISION_MIN_BANK:
        return torch.float32
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if device.type == "cpu" and fast_bf16("cpu") else torch.float32


#: the CPU selection cuts each row of similarities into this many interleaved column blocks
SELECT_BLOCK = 8


def _select(sim: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """The ``n`` largest entries of each row of ``sim`` (sorted, as fp32) and their columns.

    On a CPU ``torch.topk``'s per-row cost grows with ``n`` (400 of 50k took 1.6x the time of 200),
    so the row is cut into SELECT_BLOCK interleaved blocks of columns and the top ``n`` is taken
    from the ``n`` blocks with the largest maxima: 0.6x the time of a plain top-400. Exact: an entry
    of any other block is at most its block's maximum, below n maxima of distinct chosen entries."""
    width = sim.shape[1]
    blocks = width // SELECT_BLOCK
    if sim.is_cuda or blocks < 4 * n:
        top, idx = sim.topk(n, dim=1)
        return top.float(), idx
    chosen = sim[:, : blocks * SELECT_BLOCK].view(len(sim), SELECT_BLOCK, blocks).amax(1).topk(n, dim=1, sorted=False)[1]
    columns = (chosen.unsqueeze(2) + blocks * torch.arange(SELECT_BLOCK, device=sim.device)).flatten(1)
    if width > blocks * SELECT_BLOCK:  # the < SELECT_BLOCK columns no block holds
        tail = torch.arange(blocks * SELECT_BLOCK, width, device=sim.device)
        columns = torch.cat([columns, tail.expand(len(sim), -1)], dim=1)
    top, pos = sim.gather(1, columns).topk(n, dim=1)
    return top.float(), columns.gather(1, pos)


class _LowPrecisionBank:
    """The normalised bank rounded to ``dtype`` and what bounds the error of its similarities."""

    def __init__(self, bank: Tensor, dtype: torch.dtype) -> None:
        self.bank, self.dtype, self.low = bank, dtype, bank.to(dtype)
        self.residual = self.low_norm = torch.zeros((), device=bank.device)
        for exact, low in zip(bank.split(4096), self.low.split(4096)):  # in pieces that stay in cache: 3x faster
            low = low.float()
            self.residual = torch.maximum(self.residual, (exact - low).norm(dim=1).max())  # max_j ||b_j - low(b_j)||
            self.low_norm = torch.maximum(self.low_norm, low.norm(dim=1).max())
        self.rounded_output = bank.device.type != "cuda"  # CPU matmuls return dtype, CUDA is asked for fp32
        width = bank.shape[1]
        # fp32 accumulation over `width` terms, in the search and in the fp32 reference it must match
        self.accumulation = 2 * width * UNIT_ROUNDOFF[torch.float32] / (1 - width * UNIT_ROUNDOFF[torch.float32])

    def search(self, queries: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The ``n`` largest low-precision similarities (as fp32) of normalised fp32 ``queries`` to
        the bank, their bank indices, per query a bound (N, 1) on the distance of a listed
        similarity from its exact one, and per query an upper bound (N, 1) on the exact similarity
        of every unlisted point."""
        low = queries.to(self.dtype)
        sim = torch.mm(low, self.low.T, out_dtype=torch.float32) if queries.is_cuda else low @ self.low.T
        top, idx = _select(sim, n)
        unlisted = top[:, -1:] if n < len(self.low) else torch.full_like(top[:, :1], -torch.inf)
        residual = (queries - low.float()).norm(dim=1, keepdim=True)
        low_norm = low.float().norm(dim=1, keepdim=True)
        # q.b - low(q).low(b) = dq.low(b) + low(q).db + dq.db (Cauchy-Schwarz on each term)
        bound = residual * self.low_norm + low_norm * self.residual + residual * self.residual
        bound = bound + self.accumulation * (low_norm * self.low_norm + 1)
        if self.rounded_output:  # x + u|x| grows with x: the ends of the listed values and the unlisted bound do
            ends = torch.cat([top[:, :1], top[:, -1:], unlisted.nan_to_num(0, 0, 0)], dim=1)
            bound = bound + UNIT_ROUNDOFF[self.dtype] * ends.abs().amax(dim=1, keepdim=True)
        bound = bound * (1 + 1e-3) + 1e-6  # slack for the fp32 norms above
        return top, idx, bound, unlisted + bound

    def rescore(self, queries: Tensor, idx: Tensor, rows_per_batch: int = 64) -> tuple[Tensor, Tensor, Tensor]:
        """The fp32 similarities of ``queries`` to the listed bank points ``idx`` (N, n), sorted, with
        their indices and their bound (N, 1): fp32 accumulation here and in the fp32 reference."""
        exact = torch.cat([
            torch.bmm(self.bank[i], q.unsqueeze(2)).squeeze(2)
            for q, i in zip(queries.split(rows_per_batch), idx.split(rows_per_batch))
        ])
        exact, order = exact.sort(dim=1, descending=True)
        return exact, idx.gather(1, order), torch.full_like(exact[:, :1], self.accumulation * (1 + 1e-3) + 1e-7)


def _certified_scores(
    top: Tensor, idx: Tensor, bound: Tensor, unlisted: Tensor, bank_labels: Tensor, num_classes: int, k: int,
    temperature: float, exact_top: tuple[int, ...],
) -> tuple[Tensor, Tensor]:
    """Scores of approximate similarities and which rows provably rank classes as the exact vote does.

    ``top`` and ``idx`` are the largest approximate similarities of each row (sorted; SEARCH_LISTED
    * k unless the bank is smaller), their bank indices and ``bound`` their error; ``unlisted``
    bounds from above the exact similarity of every bank point not listed. Bank point j is among
    the exact k nearest when sim_j - bound exceeds both (k+1)-th sim + bound and ``unlisted``. The
    free places left are taken by exact neighbours whose sim >= k-th sim - 2 bound: listed points
    of known class, or unlisted points of unknown class. Each class's exact vote then lies
    in [low, high]: low weights its sure neighbours at sim - bound; high adds at sim + bound (at
    ``unlisted``) at most as many listed boundary points of the class, or unlisted points, as there
    are free places.
    A row is certified when, for every K in ``exact_top`` (< num_classes), the K best classes of
    the scores all have a low above every other class's high.
    """
    labels = bank_labels[idx]
    device = top.device
    kth = top[:, k - 1 : k]
    after = top[:, k : k + 1] + bound if top.shape[1] > k else torch.full_like(kth, -torch.inf)
    in_top = torch.arange(top.shape[1], device=device) < k
    sure = in_top & (top - bound > torch.maximum(after, unlisted))
    boundary = ~sure & (top >= kth - 2 * bound)
    free = (k - sure.sum(dim=1, keepdim=True)).float()
    unlisted_weight = torch.where(unlisted >= kth - bound, (unlisted / temperature).exp(), 0)
    zeros = torch.zeros(len(top), num_classes, device=device)
    low = zeros.scatter_add(1, labels, torch.where(sure, ((top - bound) / temperature).exp(), 0))
    sure_high = zeros.scatter_add(1, labels, torch.where(sure, ((top + bound) / temperature).exp(), 0))
    boundary_weight = torch.where(boundary, ((top + bound) / temperature).exp(), 0)
    boundary_sum = zeros.scatter_add(1, labels, boundary_weight) + free * unlisted_weight
    boundary_max = torch.maximum(zeros.scatter_reduce(1, labels, boundary_weight, "amax"), unlisted_weight)
    high = sure_high + torch.minimum(boundary_sum, free * boundary_max)
    scores = zeros.scatter_add(1, labels, torch.where(in_top, (top / temperature).exp(), 0))
    order = scores.argsort(dim=1, descending=True)
    low, high = low.gather(1, order), high.gather(1, order)
    certified = torch.ones(len(top), dtype=torch.bool, device=device)
    slack = 1 + 4 * k * UNIT_ROUNDOFF[torch.float32]  # the rounding of k-term fp32 vote sums must not reorder classes
    for top_k in (t for t in exact_top if t < num_classes):
        certified &= low[:, :top_k].amin(dim=1) > high[:, top_k:].amax(dim=1) * slack
    return scores, certified


@torch.no_grad()
def knn_scores(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
    search: torch.dtype | None = None,
    exact_top: tuple[int, ...] = (1, 5),
) -> Tensor:
    """Class scores (N, num_classes) of ``test_feats``: votes of the ``k`` most cosine-similar training
    points, weighted by exp(sim / temperature), whose best ``K`` classes for every K in ``exact_top``
    are those of the fp32 vote (top-1 and top-5 accuracy are exact).

    The similarities are searched in ``search`` precision (default :func:`search_dtype`; fp32: the
    fp32 vote itself). With bf16/fp16 a query keeps its low-precision scores when a rigorous bound
    on the rounding error proves its class ranking (:func:`_certified_scores`); otherwise its listed
    neighbours are rescored in fp32 (when few queries of the chunk need it) and the bound tried
    again, and what still fails is recomputed in fp32, so the ranking never differs from fp32 (up
    to exact ties, which the fp32 vote
    itself breaks by kernel order). After a chunk of test points in which most votes were too close
    for the bound, the rest are voted in fp32 directly. Test points are processed in chunks so
    memory is O(chunk_size x n_train), which keeps 50k x 10k on a CPU.
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
    search = search or search_dtype(bank.device, len(bank))
    low_bank = _LowPrecisionBank(bank, search) if search != torch.float32 else None
    scores = []
    queries = F.normalize(test_feats.float(), dim=1)
    # a small first chunk tells whether the bound certifies these votes, before a whole chunk is searched twice
    first = min(chunk_size, PROBE_QUERIES) if low_bank is not None else chunk_size
    for chunk in [part for part in (queries[:first], *queries[first:].split(chunk_size)) if len(part)]:
        chunk = chunk.to(bank.device)
        if low_bank is None:
            scores.append(_vote_scores(chunk @ bank.T, labels, num_classes, k, temperature))
            continue
        top, idx, bound, unlisted = low_bank.search(chunk, min(SEARCH_LISTED * k, len(bank)))
        chunk_scores, certified = _certified_scores(top, idx, bound, unlisted, labels, num_classes, k, temperature,
                                                    exact_top)
        redo = (~certified).nonzero().squeeze(1)
        if 0 < len(redo) <= len(chunk) / 8:
            # fp32 similarities of the listed points leave only the unlisted ones' rounding; gathering the
            # listed rows costs about what a row of the fp32 matmul does, so only for a few rows
            exact, exact_idx, exact_bound = low_bank.rescore(chunk[redo], idx[redo])
            rescored, certified = _certified_scores(exact, exact_idx, exact_bound, unlisted[redo], labels, num_classes,
                                                    k, temperature, exact_top)
            chunk_scores[redo] = rescored
            redo = redo[~certified]
        if len(redo):
            chunk_scores[redo] = _vote_scores(chunk[redo] @ bank.T, labels, num_classes, k, temperature)
        scores.append(chunk_scores)
        if len(redo) > len(chunk) / 2:
            low_bank = None  # votes too close for the rounding bound: the search costs more than it saves
    return torch.cat(scores) if scores else torch.empty(0, num_classes)


@torch.no_grad()
def knn_predict(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
    search: torch.dtype | None = None,
) -> Tensor:
    """Predicted labels of ``test_feats`` from the ``k`` most cosine-similar training points.

    Features are L2-normalised; votes are weighted by exp(sim / temperature). The labels are those
    of the fp32 vote whatever ``search`` precision finds the neighbours (:func:`knn_scores`).
    """
    return knn_scores(train_feats, train_labels, test_feats, num_classes, k, temperature, chunk_size, search,
                      exact_top=(1,)).argmax(dim=1)


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


def rankme(embeddings: Tensor, eps: float = 1e-7) -> Tensor:
    """Effective rank (a 0-d tensor, like the two metrics below) of (N, D) ``embeddings`` (RankMe, Garrido et al. 2023): exp of the entropy of
    p_k = sigma_k / ||sigma||_1 + eps over the singular values sigma, with the paper's eps."""
    sigma = torch.linalg.svdvals(embeddings.float())
    p = sigma / sigma.sum() + eps
    return torch.exp(-(p * p.log()).sum())


def alignment(z1: Tensor, z2: Tensor, alpha: float = 2.0) -> Tensor:
    """Alignment (Wang & Isola 2020): E ||x - y||^alpha over the positive pairs (row i of ``z1`` and
    of ``z2``), on L2-normalised embeddings; lower is better aligned."""
    return (F.normalize(z1.float(), dim=1) - F.normalize(z2.float(), dim=1)).norm(dim=1).pow(alpha).mean()


def uniformity(z: Tensor, t: float = 2.0, chunk_size: int = 1024) -> Tensor:
    """Uniformity (Wang & Isola 2020): log E exp(-t ||x - y||^2) over all pairs of distinct rows of
    L2-normalised ``z``; lower is more uniform. Memory O(chunk_size x N)."""
    z = F.normalize(z.float(), dim=1)
    if len(z) < 2:
        raise ValueError("uniformity needs at least 2 embeddings")
    terms = []
    for start in range(0, len(z), chunk_size):
        sq_dist = (2 - 2 * z[start : start + chunk_size] @ z.T).clamp_min(0)  # ||x - y||^2 of unit vectors
        rows = torch.arange(len(sq_dist), device=z.device)
        sq_dist[rows, start + rows] = torch.inf  # a row with itself is no pair
        terms.append(torch.logsumexp(-t * sq_dist.flatten(), dim=0))
    return torch.logsumexp(torch.stack(terms), dim=0) - math.log(len(z) * (len(z) - 1))


def topk_accuracy(logits: Tensor, labels: Tensor, num_classes: int) -> dict[str, float]:
    """``top1`` and ``top5`` (top-min(5, num_classes)) accuracy of ``logits`` (N, C), fractions in [0, 1]."""
    labels = labels.to(logits.device).long()
    return {f"top{k}": float(multiclass_accuracy(logits, labels, num_classes, average="micro", top_k=min(k, num_classes)))
            for k in (1, 5)}


def zero_linear(in_features: int, out_features: int, device: torch.device | str = "cpu") -> nn.Linear:
    """A linear layer started at zero, built without drawing from the global RNG: fitting a probe
    must not change the random stream (data order, augmentations) of the run it evaluates."""
    linear = nn.utils.skip_init(nn.Linear, in_features, out_features, device=device)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


class LinearClassifier(nn.Module):
    """Features standardised with the training set's mean and std, then one linear layer."""

    def __init__(self, mean: Tensor, std: Tensor, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        # the objective is convex: a zero start makes the fit deterministic without any seed
        self.linear = zero_linear(len(mean), num_classes, mean.device)

    def standardise(self, feats: Tensor) -> Tensor:
        return (feats.to(self.mean.device).float() - self.mean) / self.std

    def forward(self, feats: Tensor) -> Tensor:
        return self.linear(self.standardise(feats))


def _check_probe_inputs(num_classes: int, **splits: tuple[Tensor, Tensor]) -> None:
    """One ValueError naming the problem unless ``num_classes >= 2`` and every split is (N, D) finite
    features of one width with N labels, integers in [0, num_classes)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"linear probe needs num_classes >= 2, got {num_classes!r}")
    for name, (feats, labels) in splits.items():
        if feats.ndim != 2 or labels.ndim != 1 or len(feats) != len(labels) or len(feats) == 0:
            raise ValueError(f"linear probe needs (N, D) {name} features and N {name} labels with N >= 1, "
                             f"got {tuple(feats.shape)} and {tuple(labels.shape)}")
        if labels.is_floating_point() or labels.is_complex() or not bool(((labels >= 0) & (labels < num_classes)).all()):
            raise ValueError(f"linear probe {name} labels must be integers in [0, {num_classes}), "
                             f"got dtype {labels.dtype}, range [{labels.min().item()}, {labels.max().item()}]")
        if not bool(feats.isfinite().all()):
            raise ValueError(f"linear probe {name} features hold NaN or inf values")
    widths = {name: feats.shape[1] for name, (feats, _) in splits.items()}
    if len(set(widths.values())) > 1:
        raise ValueError(f"linear probe needs features of one width, got {widths}")


def fit_linear_classifier(
    feats: Tensor, labels: Tensor, num_classes: int, weight_decay: float = 1e-4, max_iter: int = 500,
) -> LinearClassifier:
    """Multinomial logistic regression on standardised ``feats``: full-batch L-BFGS (strong Wolfe line
    search, at most ``max_iter`` iterations) on mean cross-entropy + ``weight_decay``/2 * ||W||^2
    (the bias is not decayed). Convex, started at zero: the same inputs always give the same fit.
    """
    _check_probe_inputs(num_classes, training=(feats, labels))
    if not (math.isfinite(weight_decay) and weight_decay >= 0) or max_iter < 1:
        raise ValueError(f"linear probe needs weight_decay >= 0 and max_iter >= 1, got {weight_decay}, {max_iter}")
    # evaluation code may run under inference mode, whose tensors cannot be trained
    with torch.inference_mode(False), torch.enable_grad():
        feats = feats.float().clone()
        classifier = LinearClassifier(feats.mean(0), feats.std(0, unbiased=False).clamp_min(1e-6), num_classes)
        x, y = classifier.standardise(feats), labels.to(feats.device).long().clone()
        linear = classifier.linear
        optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                                      tolerance_grad=1e-9, tolerance_change=1e-12)

        def closure() -> Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(linear(x), y) + weight_decay / 2 * linear.weight.square().sum()
            loss.backward()
            return loss

        optimizer.step(closure)
    return classifier.requires_grad_(False)


def linear_probe(
    train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, test_labels: Tensor, num_classes: int, **options,
) -> dict[str, float]:
    """Top-1/top-5 accuracy (fractions in [0, 1]) on the test set of a linear classifier trained on
    frozen training features (:func:`fit_linear_classifier`; ``options``: ``weight_decay``, ``max_iter``).
    Also returns ``train_top1``, to tell under-fitting from over-fitting."""
    _check_probe_inputs(num_classes, training=(train_feats, train_labels), test=(test_feats, test_labels))
    classifier = fit_linear_classifier(train_feats, train_labels, num_classes, **options)
    with torch.no_grad():
        result = topk_accuracy(classifier(test_feats), test_labels, num_classes)
        result["train_top1"] = topk_accuracy(classifier(train_feats), train_labels, num_classes)["top1"]
    return result
