"""CIFAR-10 DataModule: torchvision's pickled format or a class-per-folder copy."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ssl_norms.data.base import DATA_ENV, SSLDataModule, seeded_subset
from ssl_norms.data.datasets import InMemoryImages
from ssl_norms.data.image_folder import load_image_folder
from ssl_norms.data.transforms import CIFAR10_MEAN, CIFAR10_STD, eval_transform, simclr_augmentation


def read_cifar_pickles(folder: Path, names: tuple[str, ...], label_key: str) -> tuple[Tensor, Tensor]:
    """Images and labels from torchvision's CIFAR batches (pickled dicts of uint8 rows).

    Read directly rather than through torchvision's dataset class, whose md5 check would reject
    anything but the official archive (such as the generated fixtures the tests use)."""
    images, labels = [], []
    for name in names:
        path = folder / name
        if not path.exists():
            raise FileNotFoundError(f"missing CIFAR batch file {path}; re-download with --data.init_args.download true")
        with open(path, "rb") as handle:
            entry = pickle.load(handle, encoding="latin1")
        images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(entry[label_key])
    return torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.long)


class CIFAR10DataModule(SSLDataModule):
    """CIFAR-10 (32 px, 10 classes), decoded once into memory.

    Looks under ``root`` for, in order: torchvision's ``cifar-10-batches-py/``; an image folder
    ``cifar10-jpg/{train,test}/<class>/*``; an image folder ``{train,test}/<class>/*``. With
    ``download=True`` and none of them present, torchvision downloads the official copy.

    Args:
        download: fetch the official archive when no copy is found.
        jitter_strength: colour-jitter strength s of the SimCLR augmentation (0.5 on CIFAR).
        min_scale: smallest RandomResizedCrop area.
        num_views: augmented views per training image.
        **kwargs: see :class:`SSLDataModule`.
    """

    num_classes = 10
    torchvision_folder = "cifar-10-batches-py"
    image_folder_names = ("cifar10-jpg", "cifar10", "")
    mean, std = CIFAR10_MEAN, CIFAR10_STD

    def __init__(self, download: bool = False, jitter_strength: float = 0.5, min_scale: float = 0.2, num_views: int = 2, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_views < 2:
            raise ValueError(f"num_views must be >= 2, got {num_views}")
        self.download, self.jitter_strength, self.min_scale, self.num_views = download, jitter_strength, min_scale, num_views

    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    label_key = "labels"

    def _download(self) -> None:
        from torchvision.datasets import CIFAR10

        CIFAR10(str(self.root), train=True, download=True)

    def load_split(self, train: bool) -> tuple[Tensor, Tensor]:
        """uint8 (N, 3, 32, 32) images and labels of the train or test split."""
        if self.download and not (self.root / self.torchvision_folder).is_dir():
            self._download()
        if (self.root / self.torchvision_folder).is_dir():
            return read_cifar_pickles(self.root / self.torchvision_folder, self.train_files if train else self.test_files, self.label_key)
        split = "train" if train else "test"
        for name in self.image_folder_names:
            split_dir = self.root / name / split
            if split_dir.is_dir():
                images, labels, _ = load_image_folder(split_dir)
                return images, labels
        raise FileNotFoundError(
            f"{type(self).__name__}: no data under {self.root} (searched {self.torchvision_folder}/ and "
            f"{{{','.join(n or '.' for n in self.image_folder_names)}}}/{{train,test}}/<class>/); set the root with "
            f"--data.init_args.root or ${DATA_ENV}, or pass --data.init_args.download true"
        )

    def build(self) -> None:
        train_images, train_labels = self.load_split(train=True)
        val_images, val_labels = self.load_split(train=False)
        train_idx = seeded_subset(len(train_images), self.max_train_samples, self.seed)
        val_idx = seeded_subset(len(val_images), self.max_val_samples, self.seed)
        size = train_images.shape[-1]
        augment = simclr_augmentation(size, self.mean, self.std, self.jitter_strength, self.min_scale)
        plain = eval_transform(self.mean, self.std)
        self.train_set = InMemoryImages(train_images, train_labels, augment, self.num_views, train_idx)
        self.bank_set = InMemoryImages(train_images, train_labels, plain, None, train_idx)
        self.val_set = InMemoryImages(val_images, val_labels, plain, None, val_idx)
