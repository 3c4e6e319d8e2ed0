"""RepresentationMetrics: effective rank, alignment and uniformity of the representations."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from ssl_norms.contract import EmbeddedBatch, SSLStep
from ssl_norms.distributed import gather_unique
from ssl_norms.eval import alignment, rankme, uniformity


class RepresentationMetrics(Callback):
    """Logs, next to the norm statistics, how the representations fill their space.

    * ``repr/rankme_features``, ``repr/rankme_embeddings``: RankMe effective rank
      (:func:`ssl_norms.eval.rankme`) of the backbone features and loss-space embeddings of the
      first validation set, at the end of every validation epoch;
    * ``repr/uniformity``: uniformity (:func:`ssl_norms.eval.uniformity`) of the same loss-space
      embeddings;
    * ``repr/alignment``: alignment (:func:`ssl_norms.eval.alignment`) of the positive pairs the
      loss sees, i.e. the augmented training views (validation images come as one un-augmented
      view, which has no positive pair), averaged over the training epoch.

    It reads only what the method returns (``outputs["ssl"]`` in training, ``validation_step``'s
    outputs in validation): no extra forward pass. The validation rows are gathered from all
    ranks and de-duplicated by sample index. Off by default: an SVD of the validation features
    and an O(N^2) uniformity per validation epoch (seconds for 10k images on a CPU).
    """

    def __init__(self) -> None:
        self._val: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    @torch.no_grad()
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = outputs.get("ssl") if isinstance(outputs, dict) else None
        if not isinstance(step, SSLStep) or len(step.embeddings) < 2:
            return
        z = step.embeddings
        pairs = [alignment(z[a], z[b]) for a in range(len(z)) for b in range(a + 1, len(z))]
        pl_module.log("repr/alignment", torch.stack(pairs).mean(), on_step=False, on_epoch=True, sync_dist=True,
                      batch_size=len(z[0]))

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val = []

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not trainer.sanity_checking and dataloader_idx == 0 and isinstance(outputs, EmbeddedBatch):
            self._val.append((outputs.features.float(), outputs.embeddings.float(), torch.as_tensor(outputs.index, device=outputs.features.device)))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._val:
            return
        features, embeddings, index = (torch.cat(t) for t in zip(*self._val))
        _, features, embeddings = gather_unique(pl_module, index, features, embeddings)
        metrics = {"repr/rankme_features": rankme(features), "repr/rankme_embeddings": rankme(embeddings)}
        if len(embeddings) > 1:
            metrics["repr/uniformity"] = uniformity(embeddings)
        pl_module.log_dict(metrics)
        self._val = []
