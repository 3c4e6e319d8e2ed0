"""The DataModule contract every method and callback relies on."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ssl_norms.data.augment import BatchedSimCLRAugmentation, batch_generator
from ssl_norms.data.datasets import AugmentedViews
from ssl_norms.data.eval_sets import canonical_eval_set_name, load_eval_set
from ssl_norms.data.paths import resolve_root
from ssl_norms.data.resumable import ResumableDataLoader
from ssl_norms.data.splits import Imbalance
from ssl_norms.data.transforms import eval_transform
from ssl_norms.hardware import loader_split
from ssl_norms.runs import note
from ssl_norms.threads import one_cpu_thread


def seeded_subset(n: int, size: int | None, seed: int) -> torch.Tensor:
    """Sorted random subset of ``range(n)`` of ``size`` (all of it when size is None)."""
    if size is None or size >= n:
        return torch.arange(n)
    if size < 1:
        raise ValueError(f"subset size must be >= 1, got {size}")
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].sort().values


def dataset_targets(dataset: Dataset) -> torch.Tensor:
    """Labels of every item of ``dataset`` in item order (``targets``, else ``labels``)."""
    if isinstance(dataset, Subset):
        return dataset_targets(dataset.dataset)[torch.as_tensor(dataset.indices, dtype=torch.long)]
    for name in ("targets", "labels"):
        if hasattr(dataset, name):
            return torch.as_tensor(getattr(dataset, name)).long()
    raise ValueError(f"{type(dataset).__name__} has no labels; imbalanced splits need a labelled dataset")


def select(dataset: Dataset, positions: torch.Tensor) -> Dataset:
    """``dataset`` restricted to items ``positions`` (its own ``subset`` when it has one)."""
    if hasattr(dataset, "subset"):
        return dataset.subset(positions)
    return Subset(dataset, positions.tolist())


def _collate_fn(dataset: Dataset):
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return getattr(dataset, "collate_fn", None)  # datasets that build whole batches


class SSLDataModule(L.LightningDataModule):
    """Base of every ssl-norms DataModule.

    Subclasses implement ``build()`` and set ``train_set`` (augmented views), ``val_set``
    (un-augmented evaluation images) and ``bank_set`` (un-augmented *training* images: the k-NN
    bank, item i the same image as item i of ``train_set``) and ``num_classes``, all on the full
    splits. ``setup`` then applies, in this order, the ``imbalance`` block and ``max_train_samples``
    to ``train_set`` and ``bank_set`` together, so the k-NN bank is the (imbalanced) training set the
    model was trained on, and ``max_val_samples`` to ``val_set``. Validation stays balanced.

    Args:
        root: data root; defaults to ``$SSL_NORMS_DATA``, then ``./data``.
        batch_size: training batch per device (the global batch is this x devices x accumulation).
        eval_batch_size: batch for validation and k-NN bank embedding.
        num_workers: DataLoader worker processes; None chooses them and the torch threads from the CPU
            cores (:func:`ssl_norms.hardware.loader_split`, stated in one line).
        max_train_samples / max_val_samples: seeded subsets for quick studies (None = all).
        seed: seed of those subsets.
        imbalance: exponentially imbalanced training set (see :class:`ssl_norms.data.splits.Imbalance`),
            e.g. ``{preset: cifar10}`` or ``{n_max: 5000, base: 1.5, pick: random, seed: 1}``.
        extra_eval_sets: further un-augmented evaluation sets (names of
            :func:`ssl_norms.data.eval_sets.load_eval_set`, e.g. ``[cifar100_test, mnist_test]``),
            given the main evaluation set's size and normalisation and appended as further validation
            dataloaders; ``eval_set_names`` names them all in order (a name equal to the main set's, or
            repeated, is left out).
    """

    num_classes: int
    eval_set_name = "val"  # name of the main evaluation set (validation dataloader 0)
    eval_image_size: int | None = None  # image side of the evaluation sets; None for non-image data
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __init__(
        self,
        root: str | None = None,
        batch_size: int = 256,
        eval_batch_size: int = 512,
        num_workers: int | None = None,
        max_train_samples: int | None = None,
        max_val_samples: int | None = None,
        seed: int = 0,
        imbalance: Imbalance | None = None,
        extra_eval_sets: list[str] | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1 or eval_batch_size < 1 or (num_workers is not None and num_workers < 0):
            raise ValueError("batch_size and eval_batch_size must be >= 1 and num_workers >= 0")
        self.threads = None  # torch intra-op threads set at setup, when the workers were chosen here
        if num_workers is None:
            num_workers, self.threads, why = loader_split()
            note(why)
        self.root = resolve_root(root)
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.max_train_samples, self.max_val_samples, self.seed = max_train_samples, max_val_samples, seed
        self.imbalance = Imbalance(**imbalance) if isinstance(imbalance, dict) else imbalance
        self.extra_eval_sets = [canonical_eval_set_name(name) for name in extra_eval_sets or []]
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.bank_set: Dataset | None = None
        self.extra_sets: list[Dataset] = []

    @property
    def eval_set_names(self) -> list[str]:
        """Names of the validation dataloaders, in order: the main set, then ``extra_eval_sets``
        (without repeats, and without the main set itself, so one config fits several datasets)."""
        names = [self.eval_set_name]
        for name in self.extra_eval_sets:
            if name not in names:
                names.append(name)
        return names

    def build(self) -> None:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        if self.train_set is None:
            self.build()
            self.apply_splits()
            self.extra_sets = [self.load_extra_eval_set(name) for name in self.eval_set_names[1:]]
        rank = self.trainer.global_rank if self.trainer is not None else 0
        if hasattr(self.train_set, "rank"):
            self.train_set.rank = rank  # each rank draws its own augmentations

    def apply_splits(self) -> None:
        """Imbalance and subsets (see the class docstring) on the full sets ``build`` made."""
        positions = torch.arange(len(self.train_set))
        if self.imbalance is not None:
            positions = self.imbalance.indices(dataset_targets(self.train_set))
        if self.max_train_samples is not None:
            positions = positions[seeded_subset(len(positions), self.max_train_samples, self.seed)]
        if len(positions) < len(self.train_set):
            if len(self.bank_set) != len(self.train_set):
                raise ValueError(f"{type(self).__name__}: bank_set and train_set must hold the same images to be split together")
            self.train_set, self.bank_set = select(self.train_set, positions), select(self.bank_set, positions)
        if self.max_val_samples is not None and self.max_val_samples < len(self.val_set):
            self.val_set = select(self.val_set, seeded_subset(len(self.val_set), self.max_val_samples, self.seed))

    def load_extra_eval_set(self, name: str) -> Dataset:
        """An extra evaluation set at this DataModule's evaluation size and normalisation."""
        if self.eval_image_size is None:
            raise ValueError(f"{type(self).__name__} has no image evaluation set; extra_eval_sets needs an image DataModule")
        resize = getattr(self, "eval_resize", None)  # the standard ImageNet pipeline's 256/224 rule
        return load_eval_set(name, self.root, size=self.eval_image_size, mean=self.mean, std=self.std, resize=resize,
                             on_corrupt=getattr(self, "on_corrupt", "error"))

    def _loader(self, dataset: Dataset, train: bool, batch_size: int) -> DataLoader:
        # training: a loader Lightning can resume mid-epoch (see ssl_norms/data/resumable.py)
        return (ResumableDataLoader if train else DataLoader)(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            drop_last=train,  # SSL losses and BatchNorm want full, equal batches on every rank
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            collate_fn=_collate_fn(dataset),
        )

    def train_dataloader(self) -> DataLoader:
        if len(self.train_set) < self.batch_size:
            raise ValueError(
                f"the training set has {len(self.train_set)} samples, fewer than batch_size={self.batch_size}: "
                "lower --data.init_args.batch_size"
            )
        return self._loader(self.train_set, True, self.batch_size)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """The main evaluation set, followed by the extra evaluation sets when there are any."""
        main = self._loader(self.val_set, False, self.eval_batch_size)
        if not self.extra_sets:
            return main
        return [main, *(self._loader(dataset, False, self.eval_batch_size) for dataset in self.extra_sets)]

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader | list[DataLoader]:
        return self.val_dataloader()

    def bank_dataloader(self, rank: int = 0, world_size: int = 1) -> DataLoader:
        """Un-augmented training images for the k-NN bank; ``rank``'s shard of ``world_size``."""
        if self.bank_set is None:
            self.setup("validate")
        dataset = self.bank_set if world_size == 1 else Subset(self.bank_set, range(rank, len(self.bank_set), world_size))
        # in-memory banks need no workers (starting them costs more than they save); files are decoded in workers
        workers = self.num_workers if getattr(self.bank_set, "decodes_files", False) else 0
        return DataLoader(dataset, batch_size=self.eval_batch_size, shuffle=False, num_workers=workers, collate_fn=_collate_fn(dataset))


AUGMENT_PLACES = ("workers", "device")


class ImageDataModule(SSLDataModule):
    """Base of the image DataModules: the SimCLR augmentation, built batch-wise.

    Training views are made by :class:`~ssl_norms.data.augment.BatchedSimCLRAugmentation` on whole
    uint8 batches with per-sample random parameters: in the DataLoader workers
    (``augment_on="workers"``, the default), or on the training device after the batch transfer
    (``augment_on="device"``: the loader ships uint8 images, the GPU augments them; on a CPU-only
    machine this only moves the work into the training process).

    Args:
        jitter_strength: colour-jitter strength s (brightness/contrast/saturation 0.8 s, hue 0.2 s).
        min_scale: smallest RandomResizedCrop area.
        num_views: augmented views per training image.
        augment_on: ``workers`` or ``device`` (see above).
        on_corrupt: ``error`` (name the unreadable image file) or ``skip`` (leave it out, warn, count).
        color_jitter: ``simclr`` or ``independent`` (the paper code's four separate jitters, see
            :class:`~ssl_norms.data.augment.BatchedSimCLRAugmentation`).
        normalize: ``False`` leaves every image (training and evaluation) in [0, 1], as the paper code.
        **kwargs: see :class:`SSLDataModule`.
    """

    def __init__(
        self, jitter_strength: float = 0.5, min_scale: float = 0.2, num_views: int = 2, augment_on: str = "workers",
        on_corrupt: str = "error", color_jitter: Literal["simclr", "independent"] = "simclr", normalize: bool = True, **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.color_jitter = color_jitter
        if not normalize:
            self.mean, self.std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        if num_views < 2:
            raise ValueError(f"num_views must be >= 2, got {num_views}")
        if augment_on not in AUGMENT_PLACES:
            raise ValueError(f"augment_on must be one of {AUGMENT_PLACES}, got {augment_on!r}")
        if on_corrupt not in ("error", "skip"):
            raise ValueError(f"on_corrupt must be 'error' or 'skip', got {on_corrupt!r}")
        if not 0 < min_scale <= 1 or jitter_strength < 0:
            raise ValueError(f"need 0 < min_scale <= 1 and jitter_strength >= 0, got {min_scale}, {jitter_strength}")
        self.jitter_strength, self.min_scale, self.num_views = jitter_strength, min_scale, num_views
        self.augment_on, self.on_corrupt = augment_on, on_corrupt
        self.augment = None

    def augmentation(self, size: int, crop: bool = True) -> BatchedSimCLRAugmentation:
        return BatchedSimCLRAugmentation(
            size, self.mean, self.std, self.jitter_strength, self.min_scale, crop=crop, color_jitter=self.color_jitter
        )

    def plain_transform(self, rgb: bool = False):
        """Evaluation transform of images already at the evaluation size."""
        return eval_transform(self.mean, self.std, rgb=rgb)

    def training_views(self, source, labels: torch.Tensor, size: int, crop_at_decode: bool = False) -> Dataset:
        """The training set over ``source`` (uint8 tensor or ImageFiles), augmented where ``augment_on`` says."""
        self.augment = self.augmentation(size, crop=not crop_at_decode)
        return AugmentedViews(source, labels, self.augment, self.num_views, crop_at_decode=crop_at_decode, raw=self.augment_on == "device")

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if self.augment_on != "device" or not isinstance(batch, dict) or "images" not in batch:
            return batch
        images = batch["images"]
        rank = self.trainer.global_rank if self.trainer is not None else 0
        generator = batch_generator(rank, device=images.device)
        with one_cpu_thread() if images.device.type == "cpu" else nullcontext():
            views = [self.augment(images, generator) for _ in range(self.num_views)]
        return {"views": views, "label": batch["label"], "index": batch["index"]}
