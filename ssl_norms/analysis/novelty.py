"""Fig 3 / S5: embedding norms of several evaluation sets relative to the training set, and the
AUROC of the norm as an out-of-distribution score (beyond the paper)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from ssl_norms.analysis.loading import TrainedRun, embed_dataset, limit_samples
from ssl_norms.analysis.output import AnalysisResult, AnalysisUnavailable
from ssl_norms.figures import new_figure, save_figure, write_csv, write_json, write_samples

TRAINING_SET = "training set"


def norm_auroc(reference_norms: Tensor, other_norms: Tensor) -> float:
    """AUROC of "low norm = novel" for telling ``other`` images (positives) from ``reference``
    ones: 0.5 when the norms are alike, 1 when every other norm is below every reference norm."""
    from torchmetrics.functional.classification import binary_auroc

    scores = -torch.cat([reference_norms, other_norms]).double()
    target = torch.cat([torch.zeros(len(reference_norms)), torch.ones(len(other_norms))]).long()
    return binary_auroc(scores, target).item()


def plot_novelty(relative: dict[str, Tensor], aurocs: dict[str, float], out_png: Path, skipped: dict[str, str], space: str) -> Path:
    """Violins of norm / training mean per set, and a bar chart of the means labelled with their
    values and the AUROC of "low norm = not the training set"."""
    from ssl_norms.analysis.confidence import SPACE_NAMES

    names = list(relative)
    fig, (ax_violin, ax_bar) = new_figure(1, 2, width=max(4.5, 1.3 * len(names) + 1.5), height=4.4)
    positions = list(range(1, len(names) + 1))
    parts = ax_violin.violinplot([relative[n].numpy() for n in names], positions, showmeans=True, showextrema=False)
    colors = [f"C{i}" for i in range(len(names))]
    for body, color in zip(parts["bodies"], colors):
        body.set_facecolor(color)
        body.set_alpha(0.5)
    ax_violin.axhline(1.0, color="gray", linestyle="--", linewidth=1)
    ax_violin.set_xticks(positions, names, rotation=20)
    ax_violin.set(ylabel=f"{SPACE_NAMES[space]} norm / training-set mean" + (" (loss space)" if space == "embeddings" else ""), title="distribution of norms")
    means = [relative[n].mean().item() for n in names]
    bars = ax_bar.bar(positions, means, color=colors, alpha=0.8)
    ax_bar.bar_label(bars, labels=[f"{m:.3f}" + (f"\nAUROC {aurocs[n]:.3f}" if n in aurocs else "") for m, n in zip(means, names)])
    ax_bar.axhline(1.0, color="gray", linestyle="--", linewidth=1)
    ax_bar.set_xticks(positions, names, rotation=20)
    ax_bar.set(ylabel="mean norm / training-set mean", title="mean norm (AUROC: low norm as out-of-training score)",
               ylim=(0, 1.25 * max(max(means), 1.0)),
               xlabel="AUROC 0.5: norms alike; 1: set's norms all lower; 0: all higher")
    title = "Fig 3: embedding norms per evaluation set, relative to the training-set mean"
    if skipped:
        title += "\nnot available here: " + ", ".join(skipped)
    fig.suptitle(title)
    return save_figure(fig, out_png)


def novelty(
    run: TrainedRun,
    out_dir: Path,
    *,
    sets: str | list[str] | None = None,
    space: Literal["embeddings", "features"] = "embeddings",
) -> AnalysisResult:
    """Fig 3 / S5: norms of evaluation sets / training mean, violin + bar, AUROC.

    Norms of the training set (the run's own training images, un-augmented unless the run says
    ``augmented``) and of each evaluation set in ``sets`` (names of
    :func:`ssl_norms.data.eval_sets.load_eval_set`), each normalised by the training-set mean.

    Every set is loaded by the run's own DataModule (``load_extra_eval_set``): at its evaluation
    size and resize rule and with its mean/std, so the model sees each set exactly as it saw its
    own evaluation images (MNIST digits, CIFAR-100 images are not normalised with their own
    statistics). Sets whose data is missing are skipped and named.

    Args:
        sets: evaluation sets, comma-separated (default cifar10_test,cifar100_test,mnist_test)
        space: norm of the loss-space ``embeddings`` or of the backbone ``features``
    """
    if space not in ("embeddings", "features"):
        raise ValueError(f"space must be 'embeddings' or 'features', got {space!r}")
    if getattr(run.datamodule, "eval_image_size", None) is None:
        raise AnalysisUnavailable(f"novelty compares image sets; {type(run.datamodule).__name__} has no images")
    names = list(DEFAULT_EVAL_SETS) if sets is None else ([s.strip() for s in sets.split(",") if s.strip()] if isinstance(sets, str) else list(sets))
    norms: dict[str, Tensor] = {TRAINING_SET: run.embeddings("train")[space].norm(dim=1)}
    indices: dict[str, Tensor] = {TRAINING_SET: run.embeddings("train")["index"]}
    skipped: dict[str, str] = {}
    for name in names:
        try:
            dataset = run.datamodule.load_extra_eval_set(name)  # the run's size, resize, mean and std
        except FileNotFoundError as err:
            skipped[name] = str(err)
            continue
        embedded = embed_dataset(run.model, limit_samples(dataset, run.max_samples, run.seed), run.batch_size)
        norms[name], indices[name] = embedded[space].norm(dim=1), embedded["index"]
    train_mean = norms[TRAINING_SET].mean()
    relative = {name: n / train_mean for name, n in norms.items()}
    rows: list[dict[str, Any]] = []
    for name, values in relative.items():
        rows.append({
            "set": name, "num_images": len(values), "mean_norm": norms[name].mean().item(),
            "relative_mean": values.mean().item(), "relative_median": values.median().item(), "relative_std": values.std().item(),
            "auroc_vs_training": None if name == TRAINING_SET else norm_auroc(norms[TRAINING_SET], norms[name]),
        })
    out_dir = Path(out_dir)
    numbers = {"norm_space": space, "augmented_training_set": run.augmented, "training_mean_norm": train_mean.item(),
               "sets": rows, "skipped": skipped}
    paths = [
        plot_novelty(relative, {r["set"]: r["auroc_vs_training"] for r in rows if r["auroc_vs_training"] is not None},
                     out_dir / "novelty.png", skipped, space),
        write_csv(rows, out_dir / "novelty.csv"),
        write_json(numbers, out_dir / "novelty.json"),
        write_samples(out_dir / "novelty_samples.npz", **{f"{_key(k)}_norm": v for k, v in norms.items()},
                      **{f"{_key(k)}_index": v for k, v in indices.items()}),
    ]
    notes = [f"skipped {name}: {reason}" for name, reason in skipped.items()]
    headline = {f"auroc/{r['set']}": r["auroc_vs_training"] for r in rows if r["auroc_vs_training"] is not None}
    return AnalysisResult("novelty", {**headline, **{f"relative_mean/{r['set']}": r["relative_mean"] for r in rows}}, paths, notes)


DEFAULT_EVAL_SETS = ("cifar10_test", "cifar100_test", "mnist_test")  # the paper's Fig 3 for a CIFAR-10 model


def _key(name: str) -> str:
    return name.replace(" ", "_")
