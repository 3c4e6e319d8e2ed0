"""The DataModule contract every method and callback relies on."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Subset

DATA_ENV = "SSL_NORMS_DATA"


def resolve_root(root: str | None) -> Path:
    """The data root: the ``root`` option, else ``$SSL_NORMS_DATA``, else ``./data``."""
    return Path(root or os.environ.get(DATA_ENV) or "data").expanduser()


def seeded_subset(n: int, size: int | None, seed: int) -> torch.Tensor:
    """Sorted random subset of ``range(n)`` of ``size`` (all of it when size is None)."""
    if size is None or size >= n:
        return torch.arange(n)
    if size < 1:
        raise ValueError(f"subset size must be >= 1, got {size}")
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].sort().values


class SSLDataModule(L.LightningDataModule):
    """Base of every ssl-norms DataModule.

    Subclasses implement ``build()`` and set ``train_set`` (augmented views), ``val_set``
    (un-augmented evaluation images) and ``bank_set`` (un-augmented *training* images: the k-NN
    bank) and ``num_classes``.

    Args:
        root: data root; defaults to ``$SSL_NORMS_DATA``, then ``./data``.
        batch_size: training batch per device (the global batch is this x devices x accumulation).
        eval_batch_size: batch for validation and k-NN bank embedding.
        num_workers: DataLoader worker processes.
        max_train_samples / max_val_samples: seeded subsets for quick studies (None = all).
        seed: seed of those subsets.
    """

    num_classes: int

    def __init__(
        self,
        root: str | None = None,
        batch_size: int = 256,
        eval_batch_size: int = 512,
        num_workers: int = 2,
        max_train_samples: int | None = None,
        max_val_samples: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1 or eval_batch_size < 1 or num_workers < 0:
            raise ValueError("batch_size and eval_batch_size must be >= 1 and num_workers >= 0")
        self.root = resolve_root(root)
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.max_train_samples, self.max_val_samples, self.seed = max_train_samples, max_val_samples, seed
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.bank_set: Dataset | None = None

    def build(self) -> None:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.build()

    def _loader(self, dataset: Dataset, train: bool, batch_size: int) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            drop_last=train,  # SSL losses and BatchNorm want full, equal batches on every rank
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            collate_fn=getattr(dataset, "collate_fn", None),  # datasets that build whole batches
        )

    def train_dataloader(self) -> DataLoader:
        if len(self.train_set) < self.batch_size:
            raise ValueError(
                f"the training set has {len(self.train_set)} samples, fewer than batch_size={self.batch_size}: "
                "lower --data.init_args.batch_size"
            )
        return self._loader(self.train_set, True, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def bank_dataloader(self, rank: int = 0, world_size: int = 1) -> DataLoader:
        """Un-augmented training images for the k-NN bank; ``rank``'s shard of ``world_size``."""
        if self.bank_set is None:
            self.setup("validate")
        dataset = self.bank_set if world_size == 1 else Subset(self.bank_set, range(rank, len(self.bank_set), world_size))
        return DataLoader(dataset, batch_size=self.eval_batch_size, shuffle=False, num_workers=0)
