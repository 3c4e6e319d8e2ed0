"""Linear read-out of the backbone features: OnlineLinearProbe trained beside the SSL method on its
detached features during ``fit``; OfflineLinearProbe fitted on the frozen model's features in ``validate``."""

from __future__ import annotations

import hashlib
import os
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from ssl_norms.cache import cache_root
from ssl_norms.distributed import all_gather_rows, broadcast_buffers, gather_unique
from ssl_norms.eval import linear_probe, topk_accuracy, zero_linear


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


class OfflineLinearProbe(Callback):
    """Offline linear probe in ``ssl-norms validate``: a linear classifier fitted on the frozen model's
    backbone features (:func:`ssl_norms.eval.linear_probe`: standardised features, full-batch L-BFGS)
    of the un-augmented training set (``datamodule.bank_dataloader``, the k-NN bank) and evaluated on
    the validation set's, logged as ``linear/top1``, ``linear/top5`` (fractions in [0, 1]) and
    ``linear/train_top1``. The model is in eval mode (BatchNorm uses its running statistics) and no
    gradient reaches it. Runs in ``validate`` only, never during ``fit``; add it with
    ``--trainer.callbacks+=ssl_norms.callbacks.linear_probe.OfflineLinearProbe``.

    The features of both sets are cached in ``$SSL_NORMS_CACHE/probe-features/<key>.pt`` (the key
    hashes every weight and buffer of the model and the datamodule's settings, so another
    checkpoint or other data never reuses them) and the training set is embedded only when that file
    is missing. Under DDP the training set is sharded and gathered, the validation outputs gathered,
    and every rank fits the same (deterministic) classifier.

    Args:
        weight_decay / max_iter: of :func:`ssl_norms.eval.fit_linear_classifier`.
        cache: keep and reuse the features (False: compute them every time, write nothing).
    """

    def __init__(self, weight_decay: float = 1e-4, max_iter: int = 500, cache: bool = True) -> None:
        if not (weight_decay >= 0 and max_iter >= 1):
            raise ValueError("OfflineLinearProbe needs weight_decay >= 0 and max_iter >= 1")
        self.options, self.cache = {"weight_decay": weight_decay, "max_iter": max_iter}, cache
        self.cache_path: Path | None = None
        self._train: tuple[torch.Tensor, torch.Tensor] | None = None
        self._val: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    @staticmethod
    def _key(pl_module: L.LightningModule, datamodule: Any) -> str:
        digest = hashlib.sha256()
        for name, tensor in pl_module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        settings = {key: value for key, value in vars(datamodule).items() if not key.startswith("_")
                    and (isinstance(value, (int, float, str, bool, Path, list, tuple, type(None))) or is_dataclass(value))}
        digest.update(f"{type(datamodule).__module__}.{type(datamodule).__qualname__} {sorted(settings.items())!r}".encode())
        return digest.hexdigest()[:32]

    @torch.no_grad()
    def _embed_training_set(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[torch.Tensor, torch.Tensor]:
        loader = trainer.datamodule.bank_dataloader(rank=trainer.global_rank, world_size=trainer.world_size)
        feats, labels, index = [], [], []
        with trainer.precision_plugin.forward_context():
            for batch in loader:
                feats.append(pl_module.embed(batch["image"].to(pl_module.device))[0].float())
                labels.append(batch["label"].to(pl_module.device))
                index.append(batch["index"].to(pl_module.device))
        _, feats_t, labels_t = gather_unique(pl_module, torch.cat(index), torch.cat(feats), torch.cat(labels))
        return feats_t.cpu(), labels_t.cpu()

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val, self._train = [], None
        if trainer.state.fn != "validate":
            return
        if not hasattr(trainer.datamodule, "bank_dataloader"):
            raise ValueError("OfflineLinearProbe needs an ssl_norms DataModule (bank_dataloader: the un-augmented training set)")
        self.cache_path = cache_root() / "probe-features" / f"{self._key(pl_module, trainer.datamodule)}.pt" if self.cache else None
        if self.cache_path is not None and self.cache_path.is_file():
            self._train = torch.load(self.cache_path, weights_only=True)["train"]
        else:
            self._train = self._embed_training_set(trainer, pl_module)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._train is not None and dataloader_idx == 0:
            self._val.append((outputs.index, outputs.features.float(), outputs.label))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._train is None or not self._val:
            return
        _, feats, labels = (t.cpu() for t in gather_unique(pl_module, *(torch.cat(t) for t in zip(*self._val))))
        train_feats, train_labels = self._train
        num_classes = getattr(trainer.datamodule, "num_classes", None) or int(max(train_labels.max(), labels.max())) + 1
        if self.cache_path is not None and trainer.is_global_zero and not self.cache_path.is_file():
            self._save({"train": (train_feats, train_labels), "val": (feats, labels)})
        for name, value in linear_probe(train_feats, train_labels, feats, labels, num_classes, **self.options).items():
            pl_module.log(f"linear/{name}", value, prog_bar=name == "top1")
        self._train, self._val = None, []

    def _save(self, features: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        temp = self.cache_path.with_name(f".{self.cache_path.name}.{os.getpid()}.tmp")
        torch.save(features, temp)
        temp.replace(self.cache_path)  # readers see a complete file or none
