"""EmbeddingNormMonitor: the embedding-norm statistics the paper reasons with, logged during training."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from ssl_norms.contract import EmbeddedBatch, SSLStep
from ssl_norms.distributed import all_gather_rows, unique_by_index
from ssl_norms.lightning_compat import is_logging_step


class EmbeddingNormMonitor(Callback):
    """Logs, at every logging step, statistics of the loss-space embeddings of the training batch.

    * ``norm/mean``, ``norm/std``, ``norm/min``, ``norm/max``, ``norm/q<percent>``: ||z|| of every
      view's loss-space embedding, over the global batch (gathered from all ranks);
    * ``features/norm_mean``: mean norm of the backbone features;
    * ``lr/effective`` = lr / mean(||z||)^2: by Thm 3.4 the step a cosine loss takes shrinks with
      the squared norm, so this is the learning rate the embeddings actually feel;
    * ``pairs/opposite_rate``: share of positive pairs at an angle above pi/2 (Table S1).

    It reads only ``outputs["ssl"]`` (the method contract) and runs no extra forward pass. Work is
    done on logging steps only, so other steps cost nothing.

    In validation (``fit``'s validation epochs and ``validate``) it also logs, per validation
    dataloader, the same statistics of the un-augmented images' loss-space embeddings and features,
    from the outputs ``validation_step`` returns (again no extra forward pass):
    ``val/<set>/norm_mean``, ``norm_std``, ``norm_min``, ``norm_max``, ``norm_q<percent>`` and
    ``features_norm_mean``, where ``<set>`` is the DataModule's ``eval_set_names`` entry (e.g.
    ``cifar10_test``, ``mnist_test`` for extra evaluation sets). Only per-sample norms are kept,
    gathered from all ranks and de-duplicated by sample index.

    Args:
        quantiles: norm quantiles to log.
        validation: log the validation statistics.
    """

    def __init__(self, quantiles: Sequence[float] = (0.05, 0.25, 0.5, 0.75, 0.95), validation: bool = True) -> None:
        if any(not 0 <= q <= 1 for q in quantiles):
            raise ValueError(f"quantiles must lie in [0, 1], got {list(quantiles)}")
        self.quantiles = tuple(quantiles)
        self.validation = validation
        self._val: dict[int, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}

    @torch.no_grad()
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not is_logging_step(trainer) or not isinstance(outputs, dict) or not isinstance(outputs.get("ssl"), SSLStep):
            return
        step = outputs["ssl"]
        metrics = self.statistics(step.embeddings, step.features, gather=pl_module.all_gather)
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        metrics["lr/effective"] = lr / metrics["norm/mean"].clamp_min(1e-12) ** 2
        pl_module.log_dict(metrics, on_step=True, on_epoch=False)

    def statistics(self, embeddings: list[torch.Tensor], features: list[torch.Tensor], gather=None) -> dict[str, torch.Tensor]:
        """Norm statistics of one step's loss-space embeddings and features (global when ``gather``).
        With two or more views it adds ``pairs/opposite_rate`` over the positive pairs."""
        z = [e.float() for e in embeddings]
        norms = torch.cat([e.norm(dim=-1) for e in z])
        # cosine of every positive pair: row i of view a with row i of view b
        pairs = [F.cosine_similarity(z[a], z[b], dim=-1) for a in range(len(z)) for b in range(a + 1, len(z))]
        cosines = torch.cat(pairs) if pairs else None
        feature_norms = torch.cat([f.float().norm(dim=-1) for f in features])
        if gather is not None:
            norms, feature_norms = (gather(t).flatten() for t in (norms, feature_norms))
            cosines = gather(cosines).flatten() if cosines is not None else None
        return self.summarise(norms, feature_norms, cosines)

    def summarise(self, norms: torch.Tensor, feature_norms: torch.Tensor, cosines: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The logged statistics of embedding norms, feature norms and (optionally) positive-pair cosines."""
        metrics = {
            "norm/mean": norms.mean(),
            "norm/std": norms.std() if len(norms) > 1 else torch.zeros((), device=norms.device),
            "norm/min": norms.min(),
            "norm/max": norms.max(),
            "features/norm_mean": feature_norms.mean(),
        }
        if cosines is not None:
            metrics["pairs/opposite_rate"] = (cosines < 0).float().mean()
        if self.quantiles:
            values = torch.quantile(norms, torch.tensor(self.quantiles, device=norms.device))
            for q, v in zip(self.quantiles, values):
                metrics[f"norm/q{round(q * 100):02d}"] = v
        return metrics

    # ---- validation: norms per evaluation set -------------------------------------------------
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val = {}

    @torch.no_grad()
    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not self.validation or trainer.sanity_checking or not isinstance(outputs, EmbeddedBatch):
            return
        norms = outputs.embeddings.float().norm(dim=-1)
        feature_norms = outputs.features.float().norm(dim=-1)
        self._val.setdefault(dataloader_idx, []).append((norms, feature_norms, torch.as_tensor(outputs.index, device=norms.device)))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._val:
            return
        names = list(getattr(trainer.datamodule, "eval_set_names", None) or [])
        metrics = {}
        for idx, parts in sorted(self._val.items()):
            norms, feature_norms, index = (all_gather_rows(pl_module, torch.cat(t)) for t in zip(*parts))
            _, norms, feature_norms = unique_by_index(index, norms, feature_norms)
            name = names[idx] if idx < len(names) else f"dataloader_{idx}"
            for key, value in self.summarise(norms, feature_norms).items():
                metrics[f"val/{name}/{key.replace('/', '_')}"] = value
        pl_module.log_dict(metrics, add_dataloader_idx=False)
        self._val = {}
