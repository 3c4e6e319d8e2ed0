"""OnlineKNN: cosine k-NN accuracy of the current model, every validation epoch."""

from __future__ import annotations

from typing import Any, Literal, Union

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from ssl_norms.distributed import broadcast_buffers, gather_unique
from ssl_norms.eval import knn_scores, single_class_note, topk_accuracy

Space = Literal["features", "embeddings"]


class OnlineKNN(Callback):
    """Weighted cosine k-NN of the validation set against the un-augmented training set.

    At the start of each validation epoch the bank (``datamodule.bank_dataloader``, never augmented)
    is embedded, sharded over ranks and gathered; the validation outputs of the first validation
    dataloader are collected from the method's ``validation_step`` (no second forward pass),
    gathered and de-duplicated by sample index, so the result equals a single-process run.
    Logs ``knn/top1`` and ``knn/top5`` (top-min(5, classes); fractions in [0, 1], through
    torchmetrics) of the first space, and ``knn/<space>/top1``, ``knn/<space>/top5`` of any further
    one; warns once when the bank or the validation labels hold a single class, where it is trivial
    or one class's recall (:func:`ssl_norms.eval.single_class_note`). The votes are those of
    :func:`ssl_norms.eval.knn_scores` (low-precision search, top-1 and top-5 exactly as in fp32).

    Args:
        k / temperature: neighbours and vote temperature (votes weighted by exp(sim / temperature)).
        space: ``features`` (backbone, default), ``embeddings`` (loss space), or a list of both
            (``[features, embeddings]``: one bank pass, both logged).
        every_n_epochs: run every n-th validation epoch.
    """

    def __init__(self, k: int = 200, temperature: float = 0.1, space: Union[Space, list[Space]] = "features", every_n_epochs: int = 1) -> None:
        if k < 1 or temperature <= 0 or every_n_epochs < 1:
            raise ValueError("OnlineKNN needs k >= 1, temperature > 0 and every_n_epochs >= 1")
        spaces = [space] if isinstance(space, str) else list(space)
        if not spaces or len(set(spaces)) < len(spaces) or any(s not in ("features", "embeddings") for s in spaces):
            raise ValueError(f"OnlineKNN space must be 'features', 'embeddings' or a list of distinct ones, got {space!r}")
        self.k, self.temperature, self.space, self.every_n_epochs = k, temperature, space, every_n_epochs
        self.spaces = spaces
        self._bank: tuple[torch.Tensor, ...] | None = None  # the bank's vectors per space, then its labels
        self._val: list[tuple[torch.Tensor, ...]] = []  # per batch: vectors per space, labels, index
        self._warned_single_class = False

    def _active(self, trainer: L.Trainer) -> bool:
        return not trainer.sanity_checking and trainer.current_epoch % self.every_n_epochs == 0

    @torch.no_grad()
    def metric_name(self, space: str, top: str) -> str:
        return f"knn/{top}" if space == self.spaces[0] else f"knn/{space}/{top}"

    def pick(self, features: torch.Tensor, embeddings: torch.Tensor) -> list[torch.Tensor]:
        return [(features if space == "features" else embeddings).float() for space in self.spaces]

    @torch.no_grad()
    def embed_bank(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[torch.Tensor, ...]:
        """The bank's vectors in every space, then its labels (de-duplicated over ranks)."""
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "bank_dataloader"):
            raise RuntimeError("OnlineKNN needs a datamodule with bank_dataloader(); use an ssl_norms DataModule")
        loader = datamodule.bank_dataloader(rank=trainer.global_rank, world_size=trainer.world_size)
        parts = []
        with trainer.precision_plugin.forward_context():
            for batch in loader:
                images = batch["image"].to(pl_module.device, non_blocking=True)
                parts.append((*self.pick(*pl_module.embed(images)), batch["label"].to(pl_module.device),
                              batch["index"].to(pl_module.device)))
        return self.gather(pl_module, parts)

    @staticmethod
    def gather(pl_module: L.LightningModule, parts: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
        """Per-batch (vectors per space..., labels, index) of all ranks as (vectors per space..., labels),
        once per sample index."""
        *rows, index = (torch.cat(t) for t in zip(*parts))
        return gather_unique(pl_module, index, *rows)[1:]

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val = []
        if self._active(trainer):
            # without SyncBatchNorm each rank's running statistics drift apart after every step:
            # bank and validation shards must all be embedded by the same (rank 0's) model
            broadcast_buffers(pl_module)
        self._bank = self.embed_bank(trainer, pl_module) if self._active(trainer) else None

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._bank is not None and dataloader_idx == 0:
            self._val.append((*self.pick(outputs.features, outputs.embeddings), outputs.label, outputs.index))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._bank is None or not self._val:
            return
        *vectors, labels = self.gather(pl_module, self._val)
        *bank_vectors, bank_labels = self._bank
        num_classes = getattr(trainer.datamodule, "num_classes", None) or int(max(bank_labels.max(), labels.max())) + 1
        note = single_class_note(bank_labels, labels)
        if note and not self._warned_single_class:
            rank_zero_warn(f"OnlineKNN ({self.metric_name(self.spaces[0], 'top1')}): {note}")
            self._warned_single_class = True
        num_classes = max(num_classes, 2)  # torchmetrics' accuracy needs two; an empty class changes nothing
        for space, bank, queries in zip(self.spaces, bank_vectors, vectors):
            scores = knn_scores(bank, bank_labels, queries, num_classes, k=self.k, temperature=self.temperature)
            for top, value in topk_accuracy(scores, labels, num_classes).items():
                name = self.metric_name(space, top)
                pl_module.log(name, value, prog_bar=name == "knn/top1")
        self._bank, self._val = None, []
