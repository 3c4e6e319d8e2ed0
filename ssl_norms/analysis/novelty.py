"""Fig 3 / S5: embedding norms of several evaluation sets relative to the training set, and the
norm as an out-of-distribution score against a maximum-softmax-probability baseline (beyond the
paper; scores and metrics: :mod:`ssl_norms.confidence`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ssl_norms.analysis.output import AnalysisResult, AnalysisUnavailable
from ssl_norms.figures import new_figure, save_figure, write_csv, write_json, write_samples

if TYPE_CHECKING:  # torch is imported by the functions that compute, so `analyze --help` does without it
    from torch import Tensor

    from ssl_norms.analysis.loading import TrainedRun

TRAINING_SET = "training set"


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


def detection_table(
    train: dict[str, Tensor], test: dict[str, Tensor], others: dict[str, dict[str, Tensor]], space: str, num_classes: int, k: int = 200,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """AUROC and FPR@95 of telling each set of ``others`` (OOD) from the ``test`` images (ID): per
    novelty score of a :class:`NormConfidence` fitted on the ``train`` norms in ``space`` (classes by
    ``k``-NN in that space), and for the maximum softmax probability (``msp``) of a linear probe on the
    training ``features``. Also the ID accuracy of both classifiers (``knn_top1``, ``probe_top1``)."""
    import torch

    from ssl_norms.confidence import NormConfidence, detection_metrics, max_softmax_novelty
    from ssl_norms.eval import fit_linear_classifier, topk_accuracy

    confidence = NormConfidence.fit(train[space], train["labels"], num_classes)
    probe = fit_linear_classifier(train["features"], train["labels"], num_classes)

    def scores(embedded: dict[str, Tensor]) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        predicted = confidence.predict(embedded[space], k)
        with torch.no_grad():
            logits = probe(embedded["features"])
        return {**confidence.score(embedded[space], predicted), "msp": max_softmax_novelty(logits)}, predicted, logits

    id_scores, id_predicted, id_logits = scores(test)
    accuracy = {"knn_top1": (id_predicted == test["labels"]).double().mean().item(),
                "probe_top1": topk_accuracy(id_logits, test["labels"], num_classes)["top1"]}
    rows = []
    for name, embedded in others.items():
        ood_scores = scores(embedded)[0]
        rows += [{"ood_set": name, "scorer": scorer, **detection_metrics(id_scores[scorer], ood_scores[scorer]),
                  "num_id": len(id_scores[scorer]), "num_ood": len(ood_scores[scorer])} for scorer in id_scores]
    return rows, accuracy


def novelty(
    run: TrainedRun,
    out_dir: Path,
    *,
    sets: str | list[str] | None = None,
    ood: str | list[str] | None = None,
    space: Literal["embeddings", "features"] = "embeddings",
    k: int = 200,
) -> AnalysisResult:
    """Fig 3 / S5: norms of evaluation sets / training mean, violin + bar, AUROC; OOD detection table.

    Norms of the training set (the run's own training images, un-augmented unless the run says
    ``augmented``) and of each evaluation set in ``sets`` and ``ood`` (names of
    :func:`ssl_norms.data.eval_sets.load_eval_set`), each normalised by the training-set mean; the
    figure's AUROC tells each set from the training set by low norm.

    The detection table (``novelty_detection.csv``) tells each ``ood`` set from the run's own test
    images (in-distribution) by every novelty score of :mod:`ssl_norms.confidence` (fitted on the
    training set) and by the maximum softmax probability of a linear probe on the backbone features
    (``msp``): AUROC and FPR@95, OOD as the positive class, low norm / low probability = novel.

    Every set is loaded by the run's own DataModule (``load_extra_eval_set``): at its evaluation
    size and resize rule and with its mean/std, so the model sees each set exactly as it saw its
    own evaluation images (MNIST digits, CIFAR-100 images are not normalised with their own
    statistics). Sets whose data is missing are skipped and named.

    Args:
        sets: evaluation sets of the figure, comma-separated (default cifar10_test,cifar100_test,mnist_test)
        ood: out-of-distribution sets of the detection table, also in the figure (default mnist,noise,blur:
            MNIST and the CIFAR-10 test set with Gaussian noise / blur of severity 5)
        space: norm of the loss-space ``embeddings`` or of the backbone ``features``
        k: neighbours of the k-NN that predicts the class of the class-relative score
    """
    from ssl_norms.analysis.loading import embed_dataset, limit_samples
    from ssl_norms.confidence import norm_auroc

    if space not in ("embeddings", "features"):
        raise ValueError(f"space must be 'embeddings' or 'features', got {space!r}")
    if getattr(run.datamodule, "eval_image_size", None) is None:
        raise AnalysisUnavailable(f"novelty compares image sets; {type(run.datamodule).__name__} has no images")
    names, ood_names = _names(sets, DEFAULT_EVAL_SETS), _names(ood, DEFAULT_OOD_SETS)
    train = run.embeddings("train")
    embedded: dict[str, dict[str, Tensor]] = {TRAINING_SET: train}
    skipped: dict[str, str] = {}
    for name in dict.fromkeys(names + ood_names):
        try:
            dataset = run.datamodule.load_extra_eval_set(name)  # the run's size, resize, mean and std
        except FileNotFoundError as err:
            skipped[name] = str(err)
            continue
        embedded[name] = embed_dataset(run.model, limit_samples(dataset, run.max_samples, run.seed), run.batch_size)
    norms = {name: e[space].norm(dim=1) for name, e in embedded.items()}
    train_mean = norms[TRAINING_SET].mean()
    relative = {name: n / train_mean for name, n in norms.items()}
    rows: list[dict[str, Any]] = []
    for name, values in relative.items():
        rows.append({
            "set": name, "num_images": len(values), "mean_norm": norms[name].mean().item(),
            "relative_mean": values.mean().item(), "relative_median": values.median().item(), "relative_std": values.std().item(),
            "auroc_vs_training": None if name == TRAINING_SET else norm_auroc(norms[TRAINING_SET], norms[name]),
        })
    detection, accuracy = detection_table(train, run.embeddings("test"), {n: embedded[n] for n in ood_names if n in embedded},
                                          space, run.datamodule.num_classes, k)
    out_dir = Path(out_dir)
    numbers = {"norm_space": space, "augmented_training_set": run.augmented, "training_mean_norm": train_mean.item(),
               "sets": rows, "skipped": skipped, "in_distribution": "the run's test images", "in_distribution_accuracy": accuracy,
               "detection": detection}
    paths = [
        plot_novelty(relative, {r["set"]: r["auroc_vs_training"] for r in rows if r["auroc_vs_training"] is not None},
                     out_dir / "novelty.png", skipped, space),
        write_csv(rows, out_dir / "novelty.csv"),
        write_csv(detection, out_dir / "novelty_detection.csv"),
        write_json(numbers, out_dir / "novelty.json"),
        write_samples(out_dir / "novelty_samples.npz", **{f"{_key(name)}_norm": n for name, n in norms.items()},
                      **{f"{_key(name)}_index": e["index"] for name, e in embedded.items()}),
    ]
    notes = [f"skipped {name}: {reason}" for name, reason in skipped.items()]
    notes += [f"test images vs {name}: " + ", ".join(f"{r['scorer']} AUROC {r['auroc']:.3f} FPR@95 {r['fpr95']:.3f}"
                                                     for r in detection if r["ood_set"] == name)
              for name in dict.fromkeys(r["ood_set"] for r in detection)]
    headline = {f"auroc/{r['set']}": r["auroc_vs_training"] for r in rows if r["auroc_vs_training"] is not None}
    headline |= {f"{metric}/{r['ood_set']}/{r['scorer']}": r[metric] for r in detection for metric in ("auroc", "fpr95")}
    return AnalysisResult("novelty", {**headline, **{f"relative_mean/{r['set']}": r["relative_mean"] for r in rows}, **accuracy}, paths, notes)


def _names(sets: str | list[str] | None, default: tuple[str, ...]) -> list[str]:
    """Canonical set names from a comma-separated string or a list (``default`` when None)."""
    from ssl_norms.data.eval_sets import canonical_eval_set_name

    names = list(default) if sets is None else ([s.strip() for s in sets.split(",") if s.strip()] if isinstance(sets, str) else list(sets))
    return [canonical_eval_set_name(name) for name in names]


DEFAULT_EVAL_SETS = ("cifar10_test", "cifar100_test", "mnist_test")  # the paper's Fig 3 for a CIFAR-10 model
DEFAULT_OOD_SETS = ("mnist_test", "noise", "blur")


def _key(name: str) -> str:
    return name.replace(" ", "_")
