"""OnlineKNN: cosine k-NN accuracy of the current model, every validation epoch."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from ssl_norms.distributed import broadcast_buffers, gather_unique
from ssl_norms.eval import knn_predict, single_class_note


class OnlineKNN(Callback):
    """Weighted cosine k-NN of the validation set against the un-augmented training set.

    At the start of each validation epoch the bank (``datamodule.bank_dataloader``, never augmented)
    is embedded, sharded over ranks and gathered; the validation outputs of the first validation
    dataloader are collected from the method's ``validation_step`` (no second forward pass),
    gathered and de-duplicated by sample index, so the result equals a single-process run.
    Logs ``knn/top1`` (a fraction in [0, 1]); warns once when the bank or the validation labels hold
    a single class, where it is trivial or one class's recall (:func:`ssl_norms.eval.single_class_note`).

    Args:
        k / temperature: neighbours and vote temperature (votes weighted by exp(sim / temperature)).
        space: ``features`` (backbone, default) or ``embeddings`` (loss space).
        every_n_epochs: run every n-th validation epoch.
    """

    def __init__(self, k: int = 200, temperature: float = 0.1, space: Literal["features", "embeddings"] = "features", every_n_epochs: int = 1) -> None:
        if k < 1 or temperature <= 0 or every_n_epochs < 1:
            raise ValueError("OnlineKNN needs k >= 1, temperature > 0 and every_n_epochs >= 1")
        if space not in ("features", "embeddings"):
            raise ValueError(f"OnlineKNN space must be 'features' or 'embeddings', got {space!r}")
        self.k, self.temperature, self.space, self.every_n_epochs = k, temperature, space, every_n_epochs
        self._bank: tuple[torch.Tensor, torch.Tensor] | None = None
        self._val: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._warned_single_class = False

    def _active(self, trainer: L.Trainer) -> bool:
        return not trainer.sanity_checking and trainer.current_epoch % self.every_n_epochs == 0

    @torch.no_grad()
    def embed_bank(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[torch.Tensor, torch.Tensor]:
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "bank_dataloader"):
            raise RuntimeError("OnlineKNN needs a datamodule with bank_dataloader(); use an ssl_norms DataModule")
        loader = datamodule.bank_dataloader(rank=trainer.global_rank, world_size=trainer.world_size)
        feats, labels, index = [], [], []
        with trainer.precision_plugin.forward_context():
            for batch in loader:
                images = batch["image"].to(pl_module.device, non_blocking=True)
                features, embeddings = pl_module.embed(images)
                feats.append((features if self.space == "features" else embeddings).float())
                labels.append(batch["label"].to(pl_module.device))
                index.append(batch["index"].to(pl_module.device))
        _, feats_t, labels_t = gather_unique(pl_module, torch.cat(index), torch.cat(feats), torch.cat(labels))
        return feats_t, labels_t

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val = []
        if self._active(trainer):
            # without SyncBatchNorm each rank's running statistics drift apart after every step:
            # bank and validation shards must all be embedded by the same (rank 0's) model
            broadcast_buffers(pl_module)
        self._bank = self.embed_bank(trainer, pl_module) if self._active(trainer) else None

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._bank is not None and dataloader_idx == 0:
            self._val.append((getattr(outputs, self.space).float(), outputs.label, outputs.index))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._bank is None or not self._val:
            return
        feats, labels, index = (torch.cat(t) for t in zip(*self._val))
        _, feats, labels = gather_unique(pl_module, index, feats, labels)
        bank_feats, bank_labels = self._bank
        num_classes = getattr(trainer.datamodule, "num_classes", None) or int(max(bank_labels.max(), labels.max())) + 1
        note = single_class_note(bank_labels, labels)
        if note and not self._warned_single_class:
            rank_zero_warn(f"OnlineKNN (knn/top1): {note}")
            self._warned_single_class = True
        predicted = knn_predict(bank_feats, bank_labels, feats, num_classes, k=self.k, temperature=self.temperature)
        pl_module.log("knn/top1", (predicted == labels).float().mean(), prog_bar=True)
        self._bank, self._val = None, []
