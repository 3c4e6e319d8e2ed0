"""OnlineLinearProbe: a linear classifier trained beside the SSL method on its detached features."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from ssl_norms.distributed import all_gather_rows, broadcast_buffers, gather_unique
from ssl_norms.eval import topk_accuracy, zero_linear


class OnlineLinearProbe(Callback):
    """Online linear read-out: a linear layer on the backbone features, trained during ``fit``.

    Every training batch, the features of all views (``outputs["ssl"].features``, detached) with the
    batch's labels take one step of the probe's own optimizer; the probe is not part of the model, so
    the method's gradients, optimizer and random stream are untouched (the layer starts at zero and
    draws no random numbers). Under DDP the features and labels are gathered from every rank, so every
    rank takes the same step on the global batch and the probe stays identical across ranks without
    a gradient all-reduce (which would also need equal local batches). At each validation the first
    validation loader's outputs are gathered and de-duplicated as OnlineKNN does, and ``linear/top1``,
    ``linear/top5`` (fractions in [0, 1]) logged; ``linear/loss`` is the probe's training loss.
    The probe and its optimizer state are saved in the checkpoint, so a resumed run continues them.

    Args:
        optimizer / lr / weight_decay: ``adam`` (default) or ``sgd`` (momentum 0.9) for the probe; the
            default lr 1e-2 lets it follow the drifting features of short runs.
        num_classes: default: the datamodule's ``num_classes``.
    """

    def __init__(self, optimizer: Literal["adam", "sgd"] = "adam", lr: float = 1e-2, weight_decay: float = 0.0, num_classes: int | None = None) -> None:
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"OnlineLinearProbe optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        if not (lr > 0 and weight_decay >= 0) or (num_classes is not None and num_classes < 2):
            raise ValueError("OnlineLinearProbe needs lr > 0, weight_decay >= 0 and num_classes >= 2")
        self.optimizer_name, self.lr, self.weight_decay, self.num_classes = optimizer, lr, weight_decay, num_classes
        self.probe: torch.nn.Linear | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._device = torch.device("cpu")
        self._val: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._device = trainer.strategy.root_device  # known before a checkpoint's state is loaded
        self.num_classes = self.num_classes or getattr(trainer.datamodule, "num_classes", None)
        if stage == "fit" and not self.num_classes:
            raise ValueError("OnlineLinearProbe needs num_classes: the datamodule has none, set init_args.num_classes")

    def _build(self, feature_dim: int, num_classes: int) -> None:
        self.probe = zero_linear(feature_dim, num_classes, self._device)
        if self.optimizer_name == "adam":
            self.optimizer = torch.optim.Adam(self.probe.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(self.probe.parameters(), lr=self.lr, momentum=0.9, weight_decay=self.weight_decay)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not isinstance(outputs, dict) or "ssl" not in outputs:
            return  # the step was skipped
        views = outputs["ssl"].features
        if "label" not in batch:
            raise ValueError("OnlineLinearProbe needs labelled training batches (a 'label' entry); this datamodule has none")
        feats = all_gather_rows(pl_module, torch.cat([f.detach().float() for f in views]))
        labels = all_gather_rows(pl_module, batch["label"].long().repeat(len(views)))
        if self.probe is None:
            self._build(feats.shape[1], self.num_classes)
        with torch.enable_grad(), torch.autocast(feats.device.type, enabled=False):
            loss = F.cross_entropy(self.probe(feats), labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        pl_module.log("linear/loss", loss.detach())

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val = []
        if self.probe is not None and not trainer.sanity_checking:
            broadcast_buffers(pl_module)  # every rank's shard embedded by the same model (see OnlineKNN)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.probe is not None and not trainer.sanity_checking and dataloader_idx == 0:
            self._val.append((outputs.index, outputs.features.float(), outputs.label))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._val:
            return
        _, feats, labels = gather_unique(pl_module, *(torch.cat(t) for t in zip(*self._val)))
        with torch.autocast(feats.device.type, enabled=False):
            accuracy = topk_accuracy(self.probe(feats), labels, self.probe.out_features)
        for name, value in accuracy.items():
            pl_module.log(f"linear/{name}", value, prog_bar=name == "top1")
        self._val = []

    def state_dict(self) -> dict[str, Any]:
        if self.probe is None:
            return {}
        return {"probe": self.probe.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            num_classes, feature_dim = state_dict["probe"]["weight"].shape
            self._build(feature_dim, num_classes)
            self.probe.load_state_dict(state_dict["probe"])
            self.optimizer.load_state_dict(state_dict["optimizer"])
