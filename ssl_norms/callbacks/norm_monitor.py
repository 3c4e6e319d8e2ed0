"""EmbeddingNormMonitor: the embedding-norm statistics the paper reasons with, logged during training."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from ssl_norms.contract import EmbeddedBatch, SSLStep
from ssl_norms.distributed import all_gather_rows, unique_by_index
from ssl_norms.lightning_compat import is_logging_step, set_log_every_n_steps

#: Logged steps an epoch gets at least when the trainer's ``log_every_n_steps`` is longer than an epoch.
MIN_LOGGED_STEPS_PER_EPOCH = 4


def logging_interval(configured: int, steps_per_epoch: int) -> int:
    """``configured`` (0: logging off), or, when it is longer than an epoch of ``steps_per_epoch``
    optimizer steps, an interval that logs ``MIN_LOGGED_STEPS_PER_EPOCH`` steps per epoch (every step
    of shorter epochs)."""
    if configured <= steps_per_epoch:
        return configured
    return max(1, steps_per_epoch // MIN_LOGGED_STEPS_PER_EPOCH)


class EmbeddingNormMonitor(Callback):
    """Logs, at every logging step, statistics of the loss-space embeddings of the training batch.

    * ``norm/mean`` (also in the progress bar), ``norm/std``, ``norm/min``, ``norm/max``,
      ``norm/q<percent>``: ||z|| of every view's loss-space embedding, over the global batch
      (gathered from all ranks);
    * ``features/norm_mean``: mean norm of the backbone features;
    * ``lr/base``: the optimizer's lr in this step (its first parameter group), once per optimizer step;
    * ``lr/effective`` = lr / mean(||z||)^2: by Thm 3.4 the step a cosine loss takes shrinks with
      the squared norm, so this is the learning rate the embeddings actually feel (the lr is read
      after the step's scheduler update, i.e. the next step's);
    * ``pairs/opposite_rate``: share of positive pairs at an angle above pi/2 (Table S1).

    Every statistic but ``lr/base`` also has a per-epoch aggregate ``<name>_epoch`` (e.g.
    ``norm/mean_epoch``): its mean over the epoch's logged steps, logged at the epoch's end (after a
    mid-epoch resume, over the steps since the resume: Lightning does not checkpoint the running means).

    Norms are visible whatever the run length: when the trainer's ``log_every_n_steps`` is longer
    than an epoch (50 in the configs, against a few optimizer steps per epoch at CPU scale or with
    accumulation), the monitor lowers it for the fit to log ``MIN_LOGGED_STEPS_PER_EPOCH`` steps per
    epoch (every step of shorter epochs). This is the trainer's interval, so ``train/loss`` and
    LearningRateMonitor follow it too; ``config.yaml`` keeps the configured value.

    It reads only ``outputs["ssl"]`` (the method contract) and runs no extra forward pass. Work is
    done on the micro-batches whose values Lightning writes (one per logged optimizer step), so
    other steps cost nothing; the statistics stay on the device (the monitor never waits for it),
    and the epoch aggregates accumulate there until the epoch ends.

    In validation (``fit``'s validation epochs and ``validate``) it also logs, per validation
    dataloader, the same statistics of the un-augmented images' loss-space embeddings and features,
    from the outputs ``validation_step`` returns (again no extra forward pass):
    ``val/<set>/norm_mean``, ``norm_std``, ``norm_min``, ``norm_max``, ``norm_q<percent>`` and
    ``features_norm_mean``, where ``<set>`` is the DataModule's ``eval_set_names`` entry (e.g.
    ``cifar10_test``, ``mnist_test`` for extra evaluation sets). Only per-sample norms are kept,
    gathered from all ranks and de-duplicated by sample index; the last validation's stay readable in
    ``val_norms`` (``{<set>: norms}``, e.g. for WandbValidationMedia's histograms).

    Args:
        quantiles: norm quantiles to log.
        validation: log the validation statistics.
        per_class: also log every class's mean validation norm, ``val/<set>/norm_mean/class_<c>``
            (one column per class: the Fig 2c panel of ``training_curves.png``).
    """

    def __init__(self, quantiles: Sequence[float] = (0.05, 0.25, 0.5, 0.75, 0.95), validation: bool = True,
                 per_class: bool = False) -> None:
        if any(not 0 <= q <= 1 for q in quantiles):
            raise ValueError(f"quantiles must lie in [0, 1], got {list(quantiles)}")
        self.quantiles = tuple(quantiles)
        self.validation = validation
        self.per_class = per_class
        self._val: dict[int, list[tuple[torch.Tensor, ...]]] = {}
        self.val_norms: dict[str, torch.Tensor] = {}
        self._configured_interval: int | None = None
        self._lr = math.nan

    # ---- training: cadence, per-step values and per-epoch aggregates ---------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Lightning's advice to lower an interval longer than the epoch: this monitor does it
        warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the logging interval")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        first = self._configured_interval is None
        if first:
            self._configured_interval = trainer.log_every_n_steps
        if not math.isfinite(trainer.num_training_batches):
            return
        steps = math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)  # per epoch; reloads may change it
        interval = logging_interval(self._configured_interval, steps)
        if first and interval != self._configured_interval:
            rank_zero_info(f"log_every_n_steps {self._configured_interval} is longer than an epoch ({steps} optimizer steps): "
                           f"logging every {interval} steps, and norm/*_epoch and train/loss_epoch every epoch")
        set_log_every_n_steps(trainer, interval)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._configured_interval is not None:
            set_log_every_n_steps(trainer, self._configured_interval)
            self._configured_interval = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._lr = trainer.optimizers[0].param_groups[0]["lr"]  # before the step's scheduler update

    @torch.no_grad()
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not is_logging_step(trainer) or not isinstance(outputs, dict) or not isinstance(outputs.get("ssl"), SSLStep):
            return
        step = outputs["ssl"]
        metrics = self.statistics(step.embeddings, step.features, gather=pl_module.all_gather)
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        metrics["lr/effective"] = lr / metrics["norm/mean"].clamp_min(1e-12) ** 2
        step_values = {**metrics, "lr/base": torch.full((), self._lr, device=metrics["norm/mean"].device)}  # no host copy
        pl_module.log("norm/mean", step_values.pop("norm/mean"), prog_bar=True, on_step=True, on_epoch=False)
        pl_module.log_dict(step_values, on_step=True, on_epoch=False)
        # statistics of the global batch, equal on every rank: sync_dist only averages equal values
        pl_module.log_dict({f"{k}_epoch": v for k, v in metrics.items()}, on_step=False, on_epoch=True,
                           batch_size=1, sync_dist=True)

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
        self._val, self.val_norms = {}, {}

    @torch.no_grad()
    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not self.validation or trainer.sanity_checking or not isinstance(outputs, EmbeddedBatch):
            return
        norms = outputs.embeddings.float().norm(dim=-1)
        feature_norms = outputs.features.float().norm(dim=-1)
        index, label = (torch.as_tensor(t, device=norms.device) for t in (outputs.index, outputs.label))
        self._val.setdefault(dataloader_idx, []).append((norms, feature_norms, index, label))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._val:
            return
        names = list(getattr(trainer.datamodule, "eval_set_names", None) or [])
        metrics = {}
        for idx, parts in sorted(self._val.items()):
            norms, feature_norms, index, labels = (all_gather_rows(pl_module, torch.cat(t)) for t in zip(*parts))
            _, norms, feature_norms, labels = unique_by_index(index, norms, feature_norms, labels)
            name = names[idx] if idx < len(names) else f"dataloader_{idx}"
            self.val_norms[name] = norms
            for key, value in self.summarise(norms, feature_norms).items():
                metrics[f"val/{name}/{key.replace('/', '_')}"] = value
            if self.per_class:
                for c in labels.unique().tolist():
                    metrics[f"val/{name}/norm_mean/class_{c}"] = norms[labels == c].mean()
        pl_module.log_dict(metrics, add_dataloader_idx=False)
        self._val = {}
