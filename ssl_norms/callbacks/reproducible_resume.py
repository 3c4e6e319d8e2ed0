"""ReproducibleResume: a run resumed from a checkpoint draws the same data, in the same order and
with the same augmentations, as the uninterrupted run would have."""

from __future__ import annotations

import os
import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from ssl_norms.data.resumable import ResumableLoader
from ssl_norms.lightning_compat import epoch_batches_processed, epoch_batches_ready


def epoch_seed(base_seed: int, epoch: int, rank: int) -> int:
    """A 32-bit seed for one (run seed, epoch, rank); different ranks get different augmentations."""
    return int(np.random.SeedSequence([base_seed % 2**32, epoch, rank]).generate_state(1)[0])


def seed_all(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every GPU) without touching ``PL_GLOBAL_SEED``."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _loaders(train_dataloader: Any) -> list[Any]:
    if isinstance(train_dataloader, dict):
        return list(train_dataloader.values())
    if isinstance(train_dataloader, (list, tuple)):
        return list(train_dataloader)
    return [train_dataloader]


class ReproducibleResume(Callback):
    """Two things Lightning does not do, so that resuming is exact on a deterministic device.

    1. **Per-epoch seeds.** Lightning does not checkpoint RNG states, and a saved state would not line
       up anyway: validation, the k-NN bank and every DataLoader iterator draw from the global
       generator between checkpoints. Instead the global RNGs are seeded from ``(seed, epoch, rank)``
       right before each training epoch's data iterator is created, which makes the shuffling
       (``RandomSampler`` draws its permutation from the global generator; ``DistributedSampler``
       uses ``seed + epoch`` anyway), the worker seeds and main-process augmentations a function of
       the epoch. Seeds are applied twice per epoch: before the iterator is created (worker seeds
       are drawn then) and, through the loader's ``epoch_start``, before its first batch (the
       permutation and main-process augmentations; Lightning may draw random numbers in between,
       e.g. when it sets up the validation loader). Lightning creates the iterator of the first epoch of every ``fit`` call before any
       epoch hook, so that epoch is seeded in ``setup`` or, resuming, on checkpoint load (the
       checkpoint stores which epoch a resumed run continues with); later epochs in
       ``on_train_epoch_start``. (Strategies that load checkpoints after model setup, such as
       FSDP/DeepSpeed, create the first iterator before the load: that first epoch is not exact.)
    2. **Data position.** Lightning restores its loop progress but restarts the epoch's data from
       the first batch. Every training loader that is a :class:`~ssl_norms.data.resumable.ResumableLoader`
       calls back (``epoch_start``, see that module for the handshake) before each epoch's first
       batch; this callback seeds that moment and returns the number of batches Lightning counts as
       done in the epoch, which the loader draws and discards.

    Together: resuming from any checkpoint continues with the batches, augmentations and seeds of an
    uninterrupted run. Not covered: randomness drawn outside the loader and the global generators
    (e.g. augmentation on the device), and an epoch's validation that was interrupted after a
    checkpoint written at its last training batch (Lightning does not re-run it; see the README).

    The base seed is ``seed_everything``'s (``PL_GLOBAL_SEED``), else ``base_seed``.
    """

    def __init__(self, base_seed: int = 0) -> None:
        self.base_seed = base_seed
        self._trainer: L.Trainer | None = None
        self._first_epoch_seeded: int | None = None  # epoch whose iterator exists before its first hook
        self._resume_epoch: int | None = None

    def _seed(self, trainer: L.Trainer, epoch: int, stream: int = 0) -> None:
        base = int(os.environ.get("PL_GLOBAL_SEED", self.base_seed))
        seed_all(epoch_seed(base + stream, epoch, trainer.global_rank))

    def _epoch_start(self) -> int:
        """The callback's side of the handshake (an ``EpochStart``): seed the epoch whose first batch
        the loader is about to draw and return how many of its batches Lightning already counts as
        done (0, or k after a mid-epoch resume)."""
        trainer = self._trainer
        if trainer is None:
            return 0
        self._seed(trainer, trainer.current_epoch, stream=1)
        return epoch_batches_ready(trainer)

    # ---- checkpoint state -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"next_epoch": self._next_epoch()}

    def _next_epoch(self) -> int:
        """The epoch a run resumed from this moment trains next: the current one unless all its batches ran."""
        trainer = self._trainer
        if trainer is None:
            return 0
        done = epoch_batches_processed(trainer) >= trainer.num_training_batches
        return trainer.current_epoch + int(done)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Runs after ``setup`` and before the first data iterator exists, for every strategy.
        self._resume_epoch = state_dict.get("next_epoch")
        if self._resume_epoch is not None and self._trainer is not None:
            self._first_epoch_seeded = self._resume_epoch
            self._seed(self._trainer, self._resume_epoch)

    # ---- hooks ----------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # ``setup`` runs before the checkpoint is loaded and before ``configure_optimizers`` creates the
        # first iterator (``estimated_stepping_batches``): seed a fresh run's first epoch here; a
        # resumed run re-seeds for its epoch in ``load_state_dict``, still before that iterator.
        if stage == "fit":
            self._trainer = trainer
            self._resume_epoch = None
            self._first_epoch_seeded = trainer.current_epoch
            self._seed(trainer, trainer.current_epoch)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for loader in _loaders(trainer.train_dataloader):
            if isinstance(loader, ResumableLoader):
                loader.epoch_start = self._epoch_start

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        first, self._first_epoch_seeded = self._first_epoch_seeded, None
        if first == trainer.current_epoch:
            return  # this epoch's iterator was created (and seeded) before the epoch began
        # Every other epoch creates its iterator after this hook. (Lightning skips this hook for the
        # epoch a run resumes in mid-way, so the first call may already be for the next epoch.)
        self._seed(trainer, trainer.current_epoch)
