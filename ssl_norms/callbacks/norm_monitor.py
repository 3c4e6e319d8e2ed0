"""EmbeddingNormMonitor: the embedding-norm statistics the paper reasons with, logged during training."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback


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
    """

    def __init__(self, quantiles: Sequence[float] = (0.05, 0.25, 0.5, 0.75, 0.95)) -> None:
        if any(not 0 <= q <= 1 for q in quantiles):
            raise ValueError(f"quantiles must lie in [0, 1], got {list(quantiles)}")
        self.quantiles = tuple(quantiles)

    @staticmethod
    def _is_logging_step(trainer: L.Trainer) -> bool:
        return trainer._logger_connector.should_update_logs

    @torch.no_grad()
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self._is_logging_step(trainer) or not isinstance(outputs, dict) or "ssl" not in outputs:
            return
        step = outputs["ssl"]
        metrics = self.statistics(step.embeddings, step.features, gather=pl_module.all_gather)
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        metrics["lr/effective"] = lr / metrics["norm/mean"].clamp_min(1e-12) ** 2
        pl_module.log_dict(metrics, on_step=True, on_epoch=False)

    def statistics(self, embeddings: list[torch.Tensor], features: list[torch.Tensor], gather=None) -> dict[str, torch.Tensor]:
        """Norm statistics of one step's loss-space embeddings and features (global when ``gather``)."""
        z = [e.float() for e in embeddings]
        norms = torch.cat([e.norm(dim=-1) for e in z])
        # cosine of every positive pair: row i of view a with row i of view b
        cosines = torch.cat([F.cosine_similarity(z[a], z[b], dim=-1) for a in range(len(z)) for b in range(a + 1, len(z))])
        feature_norms = torch.cat([f.float().norm(dim=-1) for f in features])
        if gather is not None:
            norms, cosines, feature_norms = (gather(t).flatten() for t in (norms, cosines, feature_norms))
        metrics = {
            "norm/mean": norms.mean(),
            "norm/std": norms.std() if len(norms) > 1 else torch.zeros((), device=norms.device),
            "norm/min": norms.min(),
            "norm/max": norms.max(),
            "features/norm_mean": feature_norms.mean(),
            "pairs/opposite_rate": (cosines < 0).float().mean(),
        }
        if self.quantiles:
            values = torch.quantile(norms, torch.tensor(self.quantiles, device=norms.device))
            for q, v in zip(self.quantiles, values):
                metrics[f"norm/q{round(q * 100):02d}"] = v
        return metrics
