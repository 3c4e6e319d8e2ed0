"""CIFAR-10 and CIFAR-100 DataModules: torchvision's pickled format or a class-per-folder copy."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ssl_norms.data.base import DATA_ENV, ImageDataModule
from ssl_norms.data.datasets import InMemoryImages
from ssl_norms.data.image_folder import load_image_folder
from ssl_norms.data.transforms import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD


def read_cifar_pickles(folder: Path, names: tuple[str, ...], label_key: str) -> tuple[Tensor, Tensor]:
    """Images and labels from torchvision's CIFAR batches (pickled dicts of uint8 rows).

    Read directly rather than through torchvision's dataset class, whose md5 check would reject
    anything but the official archive (such as the generated fixtures the tests use)."""
    images, labels = [], []
    for name in names:
        path = folder / name
        if not path.exists():
            raise FileNotFoundError(f"missing CIFAR batch file {path}; re-download with --data.init_args.download true")
        try:
            with open(path, "rb") as handle:
                entry = pickle.load(handle, encoding="latin1")
            images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(entry[label_key])
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as err:
            raise ValueError(f"cannot read CIFAR batch file {path} ({type(err).__name__}: {err}); re-download it with --data.init_args.download true") from None
    return torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.long)


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10 (32 px, 10 classes), decoded once into memory.

    Looks under ``root`` for, in order: torchvision's ``cifar-10-batches-py/``; an image folder
    ``cifar10-jpg/{train,test}/<class>/*``; an image folder ``{train,test}/<class>/*``. With
    ``download=True`` and none of them present, torchvision downloads the official copy.

    Args:
        download: fetch the official archive when no copy is found.
        jitter_strength: colour-jitter strength s of the SimCLR augmentation (0.5 on CIFAR).
        min_scale: smallest RandomResizedCrop area.
        num_views: augmented views per training image.
        **kwargs: see :class:`ImageDataModule` and :class:`SSLDataModule` (``imbalance``,
            ``extra_eval_sets``, ``augment_on``, subsets, loaders).
    """

    num_classes = 10
    torchvision_folder = "cifar-10-batches-py"
    image_folder_names = ("cifar10-jpg", "cifar10", "")
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    label_key = "labels"
    mean, std = CIFAR10_MEAN, CIFAR10_STD
    eval_set_name = "cifar10_test"
    eval_image_size = 32

    def __init__(self, download: bool = False, jitter_strength: float = 0.5, min_scale: float = 0.2, num_views: int = 2, **kwargs) -> None:
        super().__init__(jitter_strength=jitter_strength, min_scale=min_scale, num_views=num_views, **kwargs)
        self.download = download

    def _download(self) -> None:
        from torchvision.datasets import CIFAR10

        CIFAR10(str(self.root), train=True, download=True)

    def _missing(self, detail: str = "") -> FileNotFoundError:
        return FileNotFoundError(
            f"{type(self).__name__}: no data under {self.root} (searched {self.torchvision_folder}/ and "
            f"{{{','.join(n or '.' for n in self.image_folder_names)}}}/{{train,test}}/<class>/){detail}; set the root with "
            f"--data.init_args.root or ${DATA_ENV}, or pass --data.init_args.download true"
        )

    def load_split(self, train: bool) -> tuple[Tensor, Tensor]:
        """uint8 (N, 3, 32, 32) images and labels of the train or test split."""
        if self.download and not (self.root / self.torchvision_folder).is_dir():
            try:
                self._download()
            except Exception as err:  # no network, a proxy, a full disk: say so on one line
                raise self._missing(f"; the download failed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
        if (self.root / self.torchvision_folder).is_dir():
            return read_cifar_pickles(self.root / self.torchvision_folder, self.train_files if train else self.test_files, self.label_key)
        split = "train" if train else "test"
        for name in self.image_folder_names:
            split_dir = self.root / name / split
            if split_dir.is_dir():
                images, labels, _ = load_image_folder(split_dir, on_corrupt=self.on_corrupt)
                if images.shape[-2:] != (32, 32):
                    raise ValueError(f"{split_dir} holds {tuple(images.shape[-2:])} images; {type(self).__name__} expects 32x32")
                return images, labels
        raise self._missing()

    def build(self) -> None:
        train_images, train_labels = self.load_split(train=True)
        val_images, val_labels = self.load_split(train=False)
        plain = self.plain_transform()
        self.train_set = self.training_views(train_images, train_labels, size=self.eval_image_size)
        self.bank_set = InMemoryImages(train_images, train_labels, plain)
        self.val_set = InMemoryImages(val_images, val_labels, plain)


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 (32 px, 100 fine classes), decoded once into memory; colour jitter s=0.5 as on CIFAR-10.

    Looks under ``root`` for torchvision's ``cifar-100-python/{train,test}`` (pickles with
    ``fine_labels``), then an image folder ``cifar100/{train,test}/<class>/*``. ``download=True``
    fetches the official archive through torchvision. Arguments as :class:`CIFAR10DataModule`.
    """

    num_classes = 100
    torchvision_folder = "cifar-100-python"
    image_folder_names = ("cifar100",)
    train_files = ("train",)
    test_files = ("test",)
    label_key = "fine_labels"
    mean, std = CIFAR100_MEAN, CIFAR100_STD
    eval_set_name = "cifar100_test"

    def _download(self) -> None:
        from torchvision.datasets import CIFAR100

        CIFAR100(str(self.root), train=True, download=True)
