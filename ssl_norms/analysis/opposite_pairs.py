"""Table S1: the share of positive pairs at an angle above pi/2, at chosen epochs.

From the ``pairs/opposite_rate`` the EmbeddingNormMonitor logged (mean over the epoch's logging
steps, training-mode network), and optionally recomputed from a checkpoint on freshly augmented
pairs (eval-mode network, so BatchNorm uses its running statistics).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ssl_norms.analysis.curves import log_epoch_axis, metrics_file, read_metrics_by_epoch, run_labels
from ssl_norms.analysis.output import AnalysisResult, AnalysisUnavailable
from ssl_norms.figures import new_figure, save_figure, write_csv, write_json

if TYPE_CHECKING:  # torch is imported by the function that computes, so `analyze --help` does without it
    import torch

    from ssl_norms.analysis.loading import TrainedRun

OPPOSITE_KEY = "pairs/opposite_rate"


def parse_epochs(spec: str | list[int | str]) -> list[int | str]:
    """``"1,10,100,last"`` -> [1, 10, 100, "last"] (1-based epochs)."""
    items = spec.split(",") if isinstance(spec, str) else spec
    epochs: list[int | str] = []
    for item in items:
        item = str(item).strip()
        if item == "last":
            epochs.append("last")
        elif item.isdigit() and int(item) >= 1:
            epochs.append(int(item))
        else:
            raise ValueError(f"epochs must be positive integers or 'last', got {item!r}")
    return epochs


def opposite_rate_at_epochs(metrics_csv: str | Path, epochs: list[int | str]) -> dict[str, float]:
    """{"epoch N": share of positive pairs with cosine < 0 in epoch N (1-based)}; NaN for epochs the
    run did not reach. ``last`` is the run's final logged epoch."""
    by_epoch = read_metrics_by_epoch(metrics_csv).get(OPPOSITE_KEY)
    if not by_epoch:
        raise AnalysisUnavailable(f"{metrics_file(metrics_csv)} has no {OPPOSITE_KEY}; train with the EmbeddingNormMonitor callback")
    last = max(by_epoch) + 1
    wanted = sorted({last if epoch == "last" else epoch for epoch in epochs})
    return {f"epoch {epoch}": by_epoch.get(epoch - 1, math.nan) for epoch in wanted}


def loss_target(model, view: torch.Tensor) -> torch.Tensor:
    """What the loss compares a prediction with: the EMA target's output (BYOL, IsoLoss with a
    target), else the projector output (SimSiam's stop-gradient branch; SimCLR's embedding)."""
    target = getattr(model, "target", None)
    return target([view])[0] if target is not None else model.projector(model.backbone(view))


def recomputed_opposite_rate(run: TrainedRun, num_pairs: int = 2048, pair: str = "views") -> float:
    """Share of positive pairs (two augmented views of a training image) with cosine < 0, in the
    checkpoint's eval mode on a seeded subset and seeded augmentations. ``pair="views"``: the two
    views' loss-space embeddings (p1, p2: what the norm monitor logs); ``pair="loss"``: the pair the
    loss compares, p1 against the other view's target (:func:`loss_target`), the paper's Table S1."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from ssl_norms.analysis.loading import limit_samples

    if pair not in ("views", "loss"):
        raise ValueError(f"pair must be 'views' or 'loss', got {pair!r}")
    model = run.model.eval()
    dataset = limit_samples(run.datamodule.train_set, num_pairs, run.seed)
    cosines = []
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(run.seed)
        for batch in DataLoader(dataset, batch_size=run.batch_size, shuffle=False):
            v1, v2 = (view.to(model.device) for view in batch["views"][:2])
            z1 = model.embed(v1)[1]
            z2 = loss_target(model, v2) if pair == "loss" else model.embed(v2)[1]
            cosines.append(F.cosine_similarity(z1.float(), z2.float(), dim=-1))
    return (torch.cat(cosines) < 0).double().mean().item()


def opposite_pairs(
    runs: list[str | Path],
    out_dir: str | Path,
    checkpoint_run: TrainedRun | None = None,
    *,
    epochs: str | list[int | str] = "1,10,100,last",
    labels: list[str] | None = None,
    num_pairs: int = 2048,
    pair: str = "views",
) -> AnalysisResult:
    """Table S1: positive pairs at angle > pi/2 at given epochs.

    For one or several runs, from their logs, plus the rate recomputed on ``checkpoint_run``; as
    CSV / JSON / Markdown and a PNG of the rate over epochs.

    Args:
        epochs: epochs of the table, 1-based, comma-separated (``last``: the run's last epoch)
        labels: a legend label per run (default: the settings in which their configs differ)
        num_pairs: augmented pairs for the rate recomputed on the checkpoint
        pair: the pair of the recomputed entry (the logged rates are the views' pair p1, p2)
    """
    if not runs:
        raise ValueError("opposite_pairs needs at least one run directory")
    epochs = parse_epochs(epochs)
    labels = list(labels) if labels else run_labels(runs)
    rows: list[dict[str, Any]] = []
    fig, (ax,) = new_figure(width=6.5, height=4.4)
    for run, label in zip(runs, labels):
        row: dict[str, Any] = {"run": label, **{k: v for k, v in opposite_rate_at_epochs(run, epochs).items()}}
        curve = read_metrics_by_epoch(run)[OPPOSITE_KEY]
        (line,) = ax.plot([e + 1 for e in curve], [100 * v for v in curve.values()], label=label)
        marked = [(int(k.split()[1]), v) for k, v in row.items() if k.startswith("epoch") and not math.isnan(v)]
        ax.scatter([e for e, _ in marked], [100 * v for _, v in marked], color=line.get_color(), edgecolor="black", zorder=3)
        if checkpoint_run is not None and checkpoint_run.run_dir is not None and Path(run).resolve() == checkpoint_run.run_dir.resolve():
            column = "checkpoint (recomputed, eval mode)" if pair == "views" else "checkpoint (recomputed, eval mode, loss pair)"
            rate = row[column] = recomputed_opposite_rate(checkpoint_run, num_pairs, pair)
            ax.scatter([max(curve) + 1], [100 * rate], marker="*", s=180, color=line.get_color(), edgecolor="black", zorder=4,
                       label=f"{label}: recomputed from the checkpoint (eval mode)")
        rows.append(row)
    log_epoch_axis(ax)
    ax.set(xlabel="epoch (log scale)", ylabel="positive pairs at angle > π/2 (%)",
           title="Table S1: opposite positive pairs over training\n(markers: the table's epochs)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    out_dir = Path(out_dir)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    markdown = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [row.get(c) for c in columns]
        markdown.append("| " + " | ".join(c if isinstance(c, str) else ("-" if c is None or math.isnan(c) else f"{100 * c:.2f}%") for c in cells) + " |")
    (out_dir / "opposite_pairs.md").parent.mkdir(parents=True, exist_ok=True)
    (out_dir / "opposite_pairs.md").write_text("\n".join(markdown) + "\n")
    paths = [save_figure(fig, out_dir / "opposite_pairs.png"), write_csv(rows, out_dir / "opposite_pairs.csv"),
             write_json({"epochs": epochs, "table": rows}, out_dir / "opposite_pairs.json"), out_dir / "opposite_pairs.md"]
    return AnalysisResult("opposite_pairs", {"num_runs": len(runs)}, paths)
