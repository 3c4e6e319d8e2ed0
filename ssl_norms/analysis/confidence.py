"""The embedding norm as confidence (Fig 4 left / middle / right, Fig S6).

Norms are normalised by the largest norm of the dataset and cut into buckets of equal width
(20 buckets of 0.05 by default); a bucket is plotted when it holds more than ``min_count`` embeddings.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ssl_norms.analysis.human_labels import (
    CIFAR10H_FOLDERS,
    CIFAR10H_PROBS,
    NOISY_LABEL_FILES,
    NOISY_LABEL_FOLDERS,
    cifar10h_join_unavailable_reason,
    entropy_bits,
    find_file,
    load_cifar10h,
    load_noisy_labels,
    original_train_indices,
    storage_format,
)
from ssl_norms.analysis.output import AnalysisResult, AnalysisUnavailable
from ssl_norms.figures import new_figure, save_figure, write_csv, write_json, write_samples

if TYPE_CHECKING:  # torch is imported by the functions that compute, so `analyze --help` does without it
    from torch import Tensor

    from ssl_norms.analysis.loading import TrainedRun

Space = Literal["embeddings", "features", "projector"]
# embedding = loss space; projector = the projector output (the released code's Fig 4 space)
SPACE_NAMES = {"embeddings": "embedding", "features": "backbone-feature", "projector": "projector-output"}


def _check_space(space: str) -> None:
    if space not in SPACE_NAMES:
        raise ValueError(f"space must be 'embeddings' (loss space), 'features' (backbone) or 'projector', got {space!r}")


def norm_buckets(norms: Tensor, num_buckets: int = 20) -> Tensor:
    """Bucket of each norm after dividing by the largest: bucket b holds [b, b+1) / num_buckets
    (the largest norm goes to the last bucket)."""
    if num_buckets < 1:
        raise ValueError(f"num_buckets must be >= 1, got {num_buckets}")
    relative = norms.double() / norms.max().clamp_min(1e-30)
    return (relative * num_buckets).floor().long().clamp(0, num_buckets - 1)


def bucket_summary(norms: Tensor, values: Tensor, num_buckets: int = 20, min_count: int = 50) -> list[dict[str, Any]]:
    """One row per bucket: its range of relative norm, count, mean of ``values`` and whether it is
    shown (count > ``min_count``)."""
    buckets = norm_buckets(norms, num_buckets)
    rows = []
    for b in range(num_buckets):
        members = values[buckets == b].double()
        rows.append({
            "bucket": b,
            "relative_norm_low": b / num_buckets,
            "relative_norm_high": (b + 1) / num_buckets,
            "count": len(members),
            "mean": members.mean().item() if len(members) else float("nan"),
            "shown": len(members) > min_count,
        })
    return rows


def plot_by_norm(rows: list[dict[str, Any]], overall: float, ylabel: str, title: str, out_png: Path, scale: float = 1.0):
    """Bucket means against the relative norm; marker area proportional to the bucket count."""
    fig, (ax,) = new_figure(width=7.0, height=4.8)
    shown = [r for r in rows if r["shown"]]
    if shown:
        centres = [(r["relative_norm_low"] + r["relative_norm_high"]) / 2 for r in shown]
        counts = [r["count"] for r in shown]
        biggest = max(counts)
        ax.plot(centres, [scale * r["mean"] for r in shown], color="tab:blue", alpha=0.5, zorder=1)
        sizes = [20 + 280 * c / biggest for c in counts]
        ax.scatter(centres, [scale * r["mean"] for r in shown], s=sizes,
                   color="tab:blue", edgecolor="black", zorder=2, label="bucket of width 1/%d (area ~ images)" % len(rows))
        for x, r, size in zip(centres, shown, sizes):
            ax.annotate(f"n={r['count']}", (x, scale * r["mean"]), xytext=(0, size ** 0.5 / 2 + 2), textcoords="offset points",
                        ha="center", va="bottom", fontsize=7)
        ax.margins(y=0.15)
    else:
        ax.text(0.5, 0.5, "no bucket has enough embeddings", transform=ax.transAxes, ha="center")
    ax.axhline(scale * overall, color="gray", linestyle="--", label=f"all images: {scale * overall:.3g}")
    hidden = sum(r["count"] for r in rows if not r["shown"])
    ax.set(xlabel="norm / largest norm of the set", ylabel=ylabel, xlim=(0, 1),
           title=f"{title}\n({sum(r['count'] for r in rows)} images; {hidden} in small buckets not shown)")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, out_png)


def _write_bucket_study(
    name: str, out_dir: Path, norms: Tensor, values: Tensor, num_buckets: int, min_count: int, numbers: dict[str, Any],
    ylabel: str, title: str, scale: float, samples: dict[str, Tensor],
) -> AnalysisResult:
    """The common end of the Fig 4 studies: ``values`` (one per image) summarised per norm bucket,
    plotted, and written with ``numbers`` (+ ``overall``, the mean of all values) and the samples."""
    rows = bucket_summary(norms, values, num_buckets, min_count)
    overall = values.double().mean().item()
    out_dir = Path(out_dir)
    numbers = {**numbers, "num_images": len(norms), "min_count": min_count, "overall": overall, "buckets": rows}
    paths = [
        plot_by_norm(rows, overall, ylabel, title, out_dir / f"{name}.png", scale),
        write_csv(rows, out_dir / f"{name}.csv"),
        write_json(numbers, out_dir / f"{name}.json"),
        write_samples(out_dir / f"{name}_samples.npz", **samples),
    ]
    return AnalysisResult(name, {k: v for k, v in numbers.items() if k != "buckets"}, paths)


def knn_by_norm(
    run: TrainedRun,
    out_dir: Path,
    *,
    split: Literal["train", "test"] = "train",
    space: Space = "embeddings",
    knn_space: Space = "embeddings",
    k: int = 200,
    temperature: float = 0.1,
    num_buckets: int = 20,
    min_count: int = 50,
    leave_one_out: bool = True,
) -> AnalysisResult:
    """Fig 4 left: leave-one-out cosine k-NN accuracy of the ``split`` images per norm bucket.

    The cosine k-NN classifies every ``split`` image by the others (never by itself). The released
    notebook's variant (``Norm as Accuracy.ipynb``: sklearn ``KNeighborsClassifier(10)`` fitted and
    evaluated on the same projector outputs) is ``k=10, temperature=inf`` (equal votes),
    ``space=knn_space="projector"``, ``leave_one_out=False`` (every image votes for itself).

    Args:
        split: images to study (train or test)
        space: norm of the loss-space ``embeddings``, the backbone ``features`` or the ``projector`` output
        knn_space: space of the k-NN classifier (``embeddings``, ``features`` or ``projector``)
        k: k-NN neighbours
        temperature: k-NN vote temperature (inf: equal votes)
        num_buckets: norm buckets of equal width (20: width 0.05)
        min_count: plot buckets with more than this many images
        leave_one_out: exclude each image from its own neighbours (false: the released notebook)
    """
    from ssl_norms.eval import knn_predict_leave_one_out

    _check_space(space)
    _check_space(knn_space)
    embedded = run.embeddings(split)
    if space not in embedded or knn_space not in embedded:
        raise AnalysisUnavailable(f"{type(run.model).__name__} has no projector output")
    norms = embedded[space].norm(dim=1)
    predicted = knn_predict_leave_one_out(
        embedded[knn_space], embedded["labels"], run.datamodule.num_classes, k, temperature, exclude_self=leave_one_out
    )
    correct = (predicted == embedded["labels"]).double()
    numbers = {"split": split, "augmented": run.augmented and split == "train", "norm_space": space, "knn_space": knn_space,
               "k": min(k, len(norms) - 1), "temperature": temperature, "leave_one_out": leave_one_out}
    return _write_bucket_study(
        "knn_by_norm", out_dir, norms, correct, num_buckets, min_count, numbers, f"leave-one-out cosine {numbers['k']}-NN accuracy (fraction)",
        f"Fig 4 left: k-NN accuracy by {SPACE_NAMES[space]} norm ({split})", 1.0,
        {"index": embedded["index"], "label": embedded["labels"], "norm": norms, "knn_correct": correct.bool()},
    )


def human_agreement_by_norm(
    run: TrainedRun,
    out_dir: Path,
    *,
    space: Space = "embeddings",
    num_buckets: int = 20,
    min_count: int = 50,
    cifar_n_file: Path | None = None,
    label_key: str | None = None,
) -> AnalysisResult:
    """Fig 4 middle: CIFAR-10N/100N label agreement per norm bucket.

    The share of training images whose human label (CIFAR-10N ``aggre_label``, CIFAR-100N
    ``noisy_label``) equals the clean label.

    Args:
        space: norm of the loss-space ``embeddings`` or of the backbone ``features``
        num_buckets: norm buckets of equal width (20: width 0.05)
        min_count: plot buckets with more than this many images
        cifar_n_file: CIFAR-10N/100N ``*_human.pt`` (default: under the data root, e.g. cifar10n/)
        label_key: CIFAR-N label compared with ``clean_label`` (default aggre_label / noisy_label)
    """
    _check_space(space)
    num_classes = run.datamodule.num_classes
    if num_classes not in NOISY_LABEL_FILES:
        raise AnalysisUnavailable(f"human labels exist for CIFAR-10 and CIFAR-100 only, not a {num_classes}-class dataset")
    file_name, default_key = NOISY_LABEL_FILES[num_classes]
    path = Path(cifar_n_file) if cifar_n_file else find_file(Path(run.datamodule.root), NOISY_LABEL_FOLDERS, file_name, "CIFAR-N label", "--cifar_n_file")
    clean, human = load_noisy_labels(path, label_key or default_key)
    embedded = run.embeddings("train")
    storage = storage_format(run.datamodule)
    original = original_train_indices(embedded["index"], embedded["labels"], clean, storage, num_classes)
    agrees = (human[original] == clean[original]).double()
    norms = embedded[space].norm(dim=1)
    numbers = {"labels_file": path, "label_key": label_key or default_key, "storage": storage, "augmented": run.augmented,
               "norm_space": space, "label_agreement_of_all_50000": (human == clean).double().mean().item()}
    return _write_bucket_study(
        "human_agreement_by_norm", out_dir, norms, agrees, num_buckets, min_count, numbers,
        f"human label ({label_key or default_key}) = clean label (%)",
        f"Fig 4 middle: CIFAR-{num_classes}N label agreement by {SPACE_NAMES[space]} norm (train)", 100.0,
        {"index": embedded["index"], "original_index": original, "label": embedded["labels"], "norm": norms, "agrees": agrees.bool()},
    )


def entropy_by_norm(
    run: TrainedRun,
    out_dir: Path,
    *,
    space: Space = "embeddings",
    num_buckets: int = 20,
    min_count: int = 50,
    cifar10h_file: Path | None = None,
) -> AnalysisResult:
    """Fig 4 right: CIFAR-10H label entropy per norm bucket (test).

    The mean entropy (bits) of the CIFAR-10H label distribution of the test images. Needs the
    original test order (torchvision format); the image-folder copy cannot be joined.

    Args:
        space: norm of the loss-space ``embeddings`` or of the backbone ``features``
        num_buckets: norm buckets of equal width (20: width 0.05)
        min_count: plot buckets with more than this many images
        cifar10h_file: CIFAR-10H ``cifar10h-probs.npy`` (default: under the data root, e.g. cifar10h/)
    """
    _check_space(space)
    if run.datamodule.num_classes != 10:
        raise AnalysisUnavailable("CIFAR-10H covers the CIFAR-10 test set only")
    if storage_format(run.datamodule) != "torchvision":
        raise AnalysisUnavailable(cifar10h_join_unavailable_reason())
    path = Path(cifar10h_file) if cifar10h_file else find_file(Path(run.datamodule.root), CIFAR10H_FOLDERS, CIFAR10H_PROBS, "CIFAR-10H", "--cifar10h_file")
    probs = load_cifar10h(path)
    embedded = run.embeddings("test")
    index = embedded["index"]
    if int(index.max()) >= len(probs):
        raise ValueError(f"{path} has {len(probs)} rows but the test set has an image at position {int(index.max())}")
    entropy = entropy_bits(probs[index])
    norms = embedded[space].norm(dim=1)
    numbers = {"labels_file": path, "norm_space": space}
    return _write_bucket_study(
        "entropy_by_norm", out_dir, norms, entropy, num_buckets, min_count, numbers, "CIFAR-10H label entropy (bits)",
        f"Fig 4 right: CIFAR-10H entropy by {SPACE_NAMES[space]} norm (test)", 1.0,
        {"index": index, "label": embedded["labels"], "norm": norms, "entropy_bits": entropy},
    )


def extreme_indices(norms: Tensor, labels: Tensor, num_classes: int, per_class: int = 10) -> dict[str, list[list[int]]]:
    """Row positions of the ``per_class`` highest-norm (descending) and lowest-norm (ascending)
    items of every class."""
    import torch

    highest, lowest = [], []
    for c in range(num_classes):
        members = torch.nonzero(labels == c).flatten()
        order = members[torch.argsort(norms[members], descending=True)]
        highest.append(order[:per_class].tolist())
        lowest.append(order.flip(0)[:per_class].tolist())
    return {"highest": highest, "lowest": lowest}


def _display_image(image: Tensor, mean: Any, std: Any) -> Tensor:
    """A normalised image back in [0, 1] for display."""
    import torch

    image = image.float()
    if mean is not None and std is not None and image.shape[0] == len(mean):
        image = image * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
    else:
        image = (image - image.min()) / (image.max() - image.min()).clamp_min(1e-8)
    return image.clamp(0, 1)


def extremes(
    run: TrainedRun, out_dir: Path, *, split: Literal["train", "test"] = "train", space: Space = "embeddings", per_class: int = 10,
) -> AnalysisResult:
    """Fig S6: highest- and lowest-norm images per class.

    For each class, the ``per_class`` highest- and lowest-norm images as two grids.

    Args:
        split: images to study (train or test)
        space: norm of the loss-space ``embeddings`` or of the backbone ``features``
        per_class: images per class and extreme
    """
    import torch
    from torchvision.utils import make_grid

    _check_space(space)
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    embedded, dataset = run.embeddings(split), run.dataset(split)
    norms, labels = embedded[space].norm(dim=1), embedded["labels"]
    names = run.class_names
    chosen = extreme_indices(norms, labels, run.datamodule.num_classes, per_class)
    mean, std = getattr(run.datamodule, "mean", None), getattr(run.datamodule, "std", None)
    classes = [c for c in range(len(names)) if chosen["highest"][c]]
    fig, axes = new_figure(1, 2, width=0.55 * per_class + 1.2, height=0.55 * len(classes) + 0.9)
    rows = []
    for ax, kind in zip(axes, ("highest", "lowest")):
        tiles = []
        for c in classes:
            positions = chosen[kind][c]
            images = [_display_image(dataset[p]["image"], mean, std) for p in positions]
            blank = torch.ones_like(images[0])
            tiles += images + [blank] * (per_class - len(images))
            rows += [{"class": names[c], "kind": kind, "rank": r + 1, "index": int(embedded["index"][p]), "norm": norms[p].item()}
                     for r, p in enumerate(positions)]
        grid = make_grid(torch.stack(tiles), nrow=per_class, padding=2, pad_value=1.0)
        ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
        tile = tiles[0].shape[-1] + 2
        ax.set_yticks([tile * (i + 0.5) for i in range(len(classes))], [names[c] for c in classes], fontsize=8)
        ax.set_xticks([tile * (i + 0.5) for i in range(per_class)], [str(i + 1) for i in range(per_class)], fontsize=7)
        ax.set(title=f"{per_class} {kind}-norm images per class", xlabel=f"rank ({'largest' if kind == 'highest' else 'smallest'} norm first)")
    fig.suptitle(f"Fig S6: extreme {SPACE_NAMES[space]} norms ({split}{', augmented' if run.augmented and split == 'train' else ''})")
    out_dir = Path(out_dir)
    by_class = {names[c]: {"highest_norm": max(r["norm"] for r in rows if r["class"] == names[c]),
                           "lowest_norm": min(r["norm"] for r in rows if r["class"] == names[c])} for c in classes}
    numbers = {"split": split, "norm_space": space, "per_class": per_class, "num_images": len(norms), "classes": by_class}
    paths = [save_figure(fig, out_dir / "extremes.png"), write_csv(rows, out_dir / "extremes.csv"), write_json(numbers, out_dir / "extremes.json")]
    return AnalysisResult("extremes", {k: v for k, v in numbers.items() if k != "classes"}, paths)
