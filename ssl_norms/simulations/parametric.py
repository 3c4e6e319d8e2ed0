"""Parametric simulations: a small MLP trained with a supervised InfoNCE loss on latent classes.

Data come from the paper's latent-class generator (:mod:`ssl_norms.data.synthetic`): class
centres on S^(latent_dim-1), samples N(c, sigma^2 I) re-normalised to the sphere, mapped to
R^ambient_dim by one fixed random matrix. The network is a 2-layer ReLU MLP
ambient_dim -> hidden -> latent_dim whose outputs are the embeddings; the loss only sees their
directions (cosine logits), so the embedding norms are free to evolve.

* :func:`fig2b` - embedding norm vs. the distance to the k-th nearest neighbour (cosine distance
  between embeddings, excluding self) of the same trained model on the same data (paper Fig. 2b).
* :func:`fig2c` - per-class mean embedding norm over training with imbalanced classes
  (paper Fig. 2c).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from ssl_norms.figures import new_figure
from ssl_norms.simulations.output import SimulationOutput
from ssl_norms.simulations.settings import Count, Dimension, Momentum, NonNegative, Positive, Seed, Several
from ssl_norms.threads import one_cpu_thread

if TYPE_CHECKING:  # torch is imported by the functions that compute, so `simulate --help` does without it
    import torch
    from torch import Tensor, nn


def supcon_loss(z: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """Supervised-contrastive InfoNCE on cosine similarities (single view).

    For anchor i with positives P(i) = {p != i : y_p = y_i} in the batch,
    L_i = -1/|P(i)| sum_p log( exp(s_ip / T) / sum_{a != i} exp(s_ia / T) ), s = cosine similarity.
    Anchors without a positive in the batch are skipped.
    """
    import torch
    import torch.nn.functional as F

    zn = F.normalize(z, dim=-1)
    logits = zn @ zn.T / temperature
    n = len(z)
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~self_mask
    num_pos = pos.sum(1)
    has = num_pos > 0
    pos_log_prob = log_prob.masked_fill(~pos, 0.0).sum(1)
    return -(pos_log_prob[has] / num_pos[has]).mean()


def random_pair_nce(z: Tensor, labels: Tensor, temperature: float, generator: torch.Generator | None = None) -> Tensor:
    """The supervised InfoNCE of the paper's released simulation notebook (SSLEmbeddingNorms
    ``Simulations.ipynb``, ``attract_pairs_infonce_loss``): every anchor draws one random other
    member of its class, the pairs are made symmetric, and
    L_i = -log( sum_{p in P(i)} exp(s_ip / T) / sum_{a != i} exp(s_ia / T) + 1e-8 ) over the anchors
    that got a pair, s = cosine similarity (unlike :func:`supcon_loss`, the positives are summed
    inside the log and only the drawn pairs attract)."""
    import torch
    import torch.nn.functional as F

    zn = F.normalize(z, dim=-1)
    n = len(z)
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    same = (labels[:, None] == labels[None, :]) & ~self_mask
    # one uniformly random same-class partner per anchor
    partner = torch.rand(n, n, generator=generator).to(z.device).masked_fill(~same, -1.0).argmax(1)
    has_partner = same.any(1)
    pairs = torch.zeros_like(same)
    pairs[has_partner.nonzero().flatten(), partner[has_partner]] = True
    pairs |= pairs.T.clone()
    similarity = (zn @ zn.T / temperature).exp().masked_fill(self_mask, 0.0)
    loss = -torch.log(similarity.masked_fill(~pairs, 0.0).sum(1) / similarity.sum(1) + 1e-8)
    return loss[pairs.any(1)].mean()


POSITIVES = ("all", "random_pair")  # train_supcon's losses: supcon_loss, random_pair_nce


def make_mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    from torch import nn

    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


@contextmanager
def _seeded(seed: int):
    """Seed torch's global RNG inside the block without leaking state to the caller."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def train_supcon(
    x: Tensor,
    labels: Tensor,
    *,
    hidden: int,
    out_dim: int,
    epochs: int,
    batch_size: int,
    lr: float,
    temperature: float,
    optimizer: str,
    seed: int,
    momentum: float = 0.9,
    positives: str = "all",
    drop_last: bool = True,
    callback: Callable[[int, nn.Module], None] | None = None,
    callback_every: int = 0,
) -> tuple[nn.Module, list[float]]:
    """Train ``make_mlp`` with :func:`supcon_loss` (``positives="all"``) or :func:`random_pair_nce`
    (``"random_pair"``); returns the model and per-step losses. ``drop_last=False`` also trains on
    the ragged last batch of every epoch (the released notebook's DataLoader).

    ``callback(step, model)`` is called at step 0 (before training), every ``callback_every``
    steps and after the last step. Must be called inside a seeded context.
    """
    import torch

    model = make_mlp(x.shape[1], hidden, out_dim)
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    else:
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    if positives not in POSITIVES:
        raise ValueError(f"positives must be one of {', '.join(POSITIVES)}, got {positives!r}")
    n = len(x)
    if drop_last and batch_size > n:
        raise ValueError(f"--batch_size {batch_size} is larger than the {n} training samples: no full batch, so no training step")
    g = torch.Generator().manual_seed(seed + 1)
    losses: list[float] = []
    step = 0
    if callback is not None:
        callback(0, model)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for start in range(0, n - batch_size + 1 if drop_last else n, batch_size):
            idx = perm[start : start + batch_size]
            if positives == "all":
                loss = supcon_loss(model(x[idx]), labels[idx], temperature)
            else:
                loss = random_pair_nce(model(x[idx]), labels[idx], temperature, g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
            if callback is not None and callback_every and step % callback_every == 0:
                callback(step, model)
    if callback is not None and (not callback_every or step % callback_every != 0):
        callback(step, model)
    return model, losses


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def knn_cosine_distance(z: Tensor, k: int, chunk: int = 2048) -> Tensor:
    """Cosine distance (1 - cos) from each row to its k-th nearest other row (self excluded)."""
    import torch
    import torch.nn.functional as F

    if k >= len(z):
        raise ValueError(f"--k {k} needs more than {k} samples, got {len(z)}")
    zn = F.normalize(z.double(), dim=-1)
    out = torch.empty(len(z), dtype=torch.float64)
    for s in range(0, len(z), chunk):
        sim = zn[s : s + chunk] @ zn.T
        rows = torch.arange(s, min(s + chunk, len(z)))
        sim[rows - s, rows] = -float("inf")  # exclude self
        kth = sim.topk(k, dim=1).values[:, -1]
        out[s : s + chunk] = 1 - kth
    return out


def _train(x: Tensor, labels: Tensor, params: dict, **kwargs) -> tuple[nn.Module, list[float]]:
    """:func:`train_supcon` with the training settings of a simulation's ``params`` (its keyword
    arguments); the embeddings live in R^latent_dim."""
    keys = ("hidden", "epochs", "batch_size", "lr", "temperature", "optimizer", "momentum", "seed", "positives", "drop_last")
    return train_supcon(x, labels, out_dim=params["latent_dim"], **{k: params[k] for k in keys}, **kwargs)


def _world_and_data(num_classes, latent_dim, ambient_dim, sigma, samples, class_weights, seed, mapping_std=0.0):
    """``mapping_std`` > 0 rescales the generator's N(0, 1/latent_dim) map to N(0, mapping_std^2)
    entries (the released notebook's ``torch.randn(data_dim, dim) * 10`` is ``mapping_std=10``)."""
    from ssl_norms.data.synthetic import LatentClasses, class_counts, sample_dataset

    world = LatentClasses.create(num_classes, latent_dim, ambient_dim, sigma, seed=seed)
    counts = class_counts(samples, class_weights, num_classes)
    if 0 in counts:  # a class without samples has no mean norm and no neighbours
        raise ValueError(f"{samples} samples leave class {counts.index(0)} empty (class sizes {counts}): use more samples")
    x, labels, latents = sample_dataset(world, counts, seed=seed + 1)
    if mapping_std > 0:
        x = x * (mapping_std * latent_dim**0.5)
    return world, counts, x, labels, latents


# --------------------------------------------------------------------------------------------
# Fig. 2b
# --------------------------------------------------------------------------------------------


def fig2b(
    *,
    num_classes: Count = 4,
    samples_per_class: Several = 1000,
    latent_dim: Dimension = 11,
    ambient_dim: Count = 64,
    sigma: NonNegative = 0.1,
    hidden: Count = 128,
    epochs: Count = 10,
    batch_size: Several = 128,
    lr: Positive = 1e-3,
    temperature: Positive = 0.2,
    optimizer: str = "adam",
    momentum: Momentum = 0.9,
    k: Count = 10,
    seed: Seed = 0,
    positives: str = "all",
    drop_last: bool = True,
    mapping_std: NonNegative = 0.0,
) -> SimulationOutput:
    """Fig 2b: embedding norm vs distance to the 10th nearest neighbour (supervised-InfoNCE MLP).

    The k-NN distance (``k``) is the cosine distance 1 - cos to the k-th nearest *other* embedding
    of the same trained model on its training data (a density proxy: small = dense region). As a
    model-free check the same quantity is also computed on the latent points themselves.

    ``positives``, ``drop_last``, ``mapping_std`` (see :func:`train_supcon`, :func:`_world_and_data`)
    switch to the released notebook's loss, batching and input scale (FIDELITY.md has the full command).

    Finding (seeds 0-5, Adam 1e-3 or SGD 0.1-1.0, T 0.1-0.5): the within-class Spearman
    correlation between norm and k-NN distance is negative in every run (about -0.2 to -0.6);
    the pooled correlation is negative for the Adam default in every seed, but with SGD it can
    flip sign because between-class norm offsets (set by the random class geometry) dominate.
    """
    params = dict(locals())  # the keyword arguments, recorded with the numbers: before any import
    import torch
    import torch.nn.functional as F
    from scipy.stats import pearsonr, spearmanr

    t0 = time.perf_counter()
    with _seeded(seed), one_cpu_thread():
        world, counts, x, labels, latents = _world_and_data(
            num_classes, latent_dim, ambient_dim, sigma, num_classes * samples_per_class, None, seed, mapping_std
        )
        model, losses = _train(x, labels, params)
        with torch.no_grad():
            z = model(x)
    norms = z.norm(dim=-1).double()
    knn = knn_cosine_distance(z, k)
    knn_latent = knn_cosine_distance(latents, k)
    centre_cos = (latents * world.centres[labels]).sum(-1)  # how typical a sample is
    zc = F.normalize(z, dim=-1)
    # per-class embedding centroid direction -> cosine to own class centroid
    cls_mean = torch.stack([zc[labels == c].mean(0) for c in range(num_classes)])
    emb_centre_cos = (zc * F.normalize(cls_mean, dim=-1)[labels]).sum(-1)

    n_np, k_np, kl_np = norms.numpy(), knn.numpy(), knn_latent.numpy()
    within = [spearmanr(n_np[labels.numpy() == c], k_np[labels.numpy() == c]).statistic for c in range(num_classes)]
    numbers = {
        "params": params,
        "spearman_norm_vs_knn": spearmanr(n_np, k_np).statistic,
        "pearson_norm_vs_knn": pearsonr(n_np, k_np).statistic,
        "spearman_norm_vs_knn_within_class": within,
        "spearman_norm_vs_latent_knn": spearmanr(n_np, kl_np).statistic,
        "spearman_norm_vs_latent_centre_cos": spearmanr(n_np, centre_cos.numpy()).statistic,
        "spearman_norm_vs_embedding_centroid_cos": spearmanr(n_np, emb_centre_cos.numpy()).statistic,
        "norm_mean": float(norms.mean()),
        "norm_std": float(norms.std()),
        "knn_mean": float(knn.mean()),
        "final_loss": float(np.mean(losses[-10:])),
        "initial_loss": losses[0],
        "steps": len(losses),
        "runtime_s": time.perf_counter() - t0,
    }
    rows = [
        {"index": i, "label": int(labels[i]), "norm": float(n_np[i]), "knn_cos_distance": float(k_np[i]),
         "latent_knn_cos_distance": float(kl_np[i]), "latent_centre_cos": float(centre_cos[i])}
        for i in range(len(n_np))
    ]
    fig = _plot_fig2b(n_np, k_np, labels.numpy(), numbers, losses)
    summary = [f"Spearman(norm, {k}-NN distance) {numbers['spearman_norm_vs_knn']:+.3f}, Pearson {numbers['pearson_norm_vs_knn']:+.3f}, "
               f"within class {_fmt(within)}"]
    return SimulationOutput(numbers=numbers, figure=fig, tables={"": rows}, summary=summary)


def _opt_label(p: dict) -> str:
    if p["optimizer"] == "sgd":
        return f"SGD(momentum {p['momentum']:g}) lr {p['lr']:g}"
    return f"Adam lr {p['lr']:g}"


def _plot_fig2b(norms, knn, labels, numbers, losses):
    fig, (ax, ax_l) = new_figure(1, 2, width=5.4, height=4.4, gridspec_kw={"width_ratios": [1.6, 1]})
    for c in np.unique(labels):
        m = labels == c
        ax.scatter(knn[m], norms[m], s=5, alpha=0.5, label=f"class {c}")
    p = numbers["params"]
    ax.set_xscale("log")
    ax.set_xlabel(f"cosine distance to {p['k']}-th nearest neighbour in embedding space (log)")
    ax.set_ylabel("embedding norm ||f(x)||")
    ax.set_title(
        f"Norm vs {p['k']}-NN distance: Spearman {numbers['spearman_norm_vs_knn']:+.2f}, "
        f"Pearson {numbers['pearson_norm_vs_knn']:+.2f}\n"
        f"within-class Spearman {np.mean(numbers['spearman_norm_vs_knn_within_class']):+.2f} (mean over classes)",
        fontsize=10,
    )
    ax.legend(markerscale=3, fontsize=8)
    ax.grid(True, alpha=0.3)
    ax_l.plot(losses, lw=0.8)
    ax_l.set_xlabel("training step")
    ax_l.set_ylabel("supervised InfoNCE loss")
    ax_l.set_title("Training loss")
    ax_l.grid(True, alpha=0.3)
    fig.suptitle(
        f"Fig. 2b: {p['num_classes']} latent classes on S^{p['latent_dim'] - 1} -> R^{p['ambient_dim']}, "
        f"MLP {p['ambient_dim']}-{p['hidden']}-{p['latent_dim']}, T={p['temperature']}, {_opt_label(p)}, "
        f"{p['epochs']} epochs (same model, same data)",
        fontsize=10,
    )
    return fig


# --------------------------------------------------------------------------------------------
# Fig. 2c
# --------------------------------------------------------------------------------------------


def fig2c(
    *,
    class_weights: Sequence[NonNegative] = (1 / 2, 1 / 4, 1 / 8, 1 / 16),
    num_samples: Several = 4000,
    latent_dim: Dimension = 11,
    ambient_dim: Count = 64,
    sigma: NonNegative = 0.1,
    hidden: Count = 128,
    epochs: Count = 10,
    batch_size: Several = 128,
    lr: Positive = 1.0,
    temperature: Positive = 0.2,
    optimizer: str = "sgd",
    momentum: Momentum = 0.9,
    track_every: Count = 5,
    seed: Seed = 0,
    positives: str = "all",
    drop_last: bool = True,
    mapping_std: NonNegative = 0.0,
) -> SimulationOutput:
    """Fig 2c: mean norm per class over training, class probabilities 1/2, 1/4, 1/8, 1/16.

    Classes are sampled with ``class_weights``, which are normalised; the dataset has
    ``num_samples`` points split accordingly (:func:`ssl_norms.data.synthetic.class_counts`). Every
    ``track_every`` optimisation steps the whole dataset is embedded and the mean norm per class
    recorded.

    ``positives``, ``drop_last``, ``mapping_std``: the released notebook's loss, batching and input
    scale (see :func:`fig2b`).

    Defaults use SGD with momentum: with Adam (1e-3 to 1e-2) the final per-class norms show no
    consistent frequency ordering. With the defaults, over seeds 0-19 the most frequent class
    ends with the largest mean norm in 14/20 runs, above the mean of the other classes in 18/20,
    above the rarest class in 19/20, and Spearman(frequency, norm) averages +0.81. Most of the norm
    growth happens in the first ~50 steps, before the classes collapse and the loss saturates.
    """
    params = dict(locals())  # the keyword arguments, recorded with the numbers: before any import
    import torch
    from scipy.stats import spearmanr

    t0 = time.perf_counter()
    weights = [float(w) for w in class_weights]
    params["class_weights"] = weights
    num_classes = len(weights)
    track: list[dict] = []
    with _seeded(seed), one_cpu_thread():
        _, counts, x, labels, _ = _world_and_data(
            num_classes, latent_dim, ambient_dim, sigma, num_samples, weights, seed, mapping_std
        )

        def record(step: int, model: nn.Module) -> None:
            with torch.no_grad():
                nrm = model(x).norm(dim=-1)
            row = {"step": step}
            for c in range(num_classes):
                row[f"class_{c}"] = float(nrm[labels == c].mean())
            track.append(row)

        _, losses = _train(x, labels, params, callback=record, callback_every=track_every)
    final = [track[-1][f"class_{c}"] for c in range(num_classes)]
    initial = [track[0][f"class_{c}"] for c in range(num_classes)]
    total = sum(weights)
    numbers = {
        "params": params,
        "class_probabilities": [w / total for w in weights],
        "class_counts": counts,
        "initial_mean_norm_per_class": initial,
        "final_mean_norm_per_class": final,
        "final_norm_rank_order": [int(i) for i in np.argsort(final)[::-1]],  # classes by decreasing norm
        "most_frequent_class": int(np.argmax(weights)),
        "largest_norm_class": int(np.argmax(final)),
        "spearman_frequency_vs_final_norm": spearmanr(np.array(weights), np.array(final)).statistic,
        "final_loss": float(np.mean(losses[-10:])),
        "steps": len(losses),
        "runtime_s": time.perf_counter() - t0,
    }
    fig = _plot_fig2c(track, counts, numbers)
    summary = [f"class probabilities {_fmt(numbers['class_probabilities'])}",
               f"final mean norm per class {_fmt(final)} (initial {_fmt(initial)})",
               f"largest-norm class {numbers['largest_norm_class']}, most frequent {numbers['most_frequent_class']}, "
               f"Spearman(frequency, norm) {numbers['spearman_frequency_vs_final_norm']:+.2f}"]
    return SimulationOutput(numbers=numbers, figure=fig, tables={"": track}, summary=summary)


def _plot_fig2c(track, counts, numbers):
    fig, (ax, ax_b) = new_figure(1, 2, width=5.6, height=4.6, gridspec_kw={"width_ratios": [1.7, 1]})
    steps = [r["step"] for r in track]
    probs = numbers["class_probabilities"]
    colours = []
    for c in range(len(counts)):
        line = ax.plot(steps, [r[f"class_{c}"] for r in track], lw=1.6,
                       label=f"class {c}: p={probs[c]:.3f} ({counts[c]} samples)")[0]
        colours.append(line.get_color())
    p = numbers["params"]
    ax.set_xlabel("training step")
    ax.set_ylabel("mean embedding norm of the class")
    ax.set_title("Mean embedding norm per class during training", fontsize=10)
    ax.legend(title="class (sampling probability)", fontsize=8)
    ax.grid(True, alpha=0.3)

    final = numbers["final_mean_norm_per_class"]
    xs = np.arange(len(counts))
    ax_b.bar(xs, final, color=colours)
    for x_, v in zip(xs, final):
        ax_b.text(x_, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
    ax_b.set_xticks(xs, [f"{c}\np={probs[c]:.3f}" for c in range(len(counts))], fontsize=8)
    ax_b.set_xlabel("class (sampling probability)")
    ax_b.set_ylabel("final mean embedding norm")
    ax_b.set_title(f"Final norms (Spearman with frequency {numbers['spearman_frequency_vs_final_norm']:+.2f})",
                   fontsize=10)
    ax_b.grid(True, axis="y", alpha=0.3)
    fig.suptitle(
        f"Fig. 2c: imbalanced latent classes, MLP {p['ambient_dim']}-{p['hidden']}-{p['latent_dim']}, "
        f"supervised InfoNCE T={p['temperature']}, {_opt_label(p)}, batch {p['batch_size']}, "
        f"{p['epochs']} epochs, seed {p['seed']}",
        fontsize=10,
    )
    return fig
