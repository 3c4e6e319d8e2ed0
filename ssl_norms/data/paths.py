"""Where the data is: the data root and each dataset's place under the root.

Only names and layouts live here (no decoding), so readers, evaluation sets and DataModules agree
on them and every "not found" message names the same places."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DATA_ENV = "SSL_NORMS_DATA"
ROOT_HINT = f"set the root with --data.init_args.root or ${DATA_ENV}"


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type name when empty), for one-line errors."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def resolve_root(root: str | Path | None) -> Path:
    """The data root: the ``root`` option, else ``$SSL_NORMS_DATA``, else ``./data``."""
    return Path(root or os.environ.get(DATA_ENV) or "data").expanduser()


@dataclass(frozen=True)
class CifarLayout:
    """One CIFAR dataset on disk: torchvision's pickled batches, else a class-per-folder copy."""

    name: str  # for messages
    torchvision_folder: str
    image_folder_names: tuple[str, ...]  # searched in order under the root; "" is the root itself
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str

    def searched(self) -> str:
        folders = ",".join(n or "." for n in self.image_folder_names)
        return f"{self.torchvision_folder}/ and {{{folders}}}/{{train,test}}/<class>/"


CIFAR10_LAYOUT = CifarLayout("CIFAR-10", "cifar-10-batches-py", ("cifar10-jpg", "cifar10", ""),
                      tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "labels")
CIFAR100_LAYOUT = CifarLayout("CIFAR-100", "cifar-100-python", ("cifar100",), ("train",), ("test",), "fine_labels")

MNIST_RAW = Path("MNIST") / "raw"  # torchvision's MNIST layout under the root

FLOWERS_FOLDER = "flowers-102"  # torchvision's Flowers102 base folder under the root
FLOWERS_LAYOUT = f"{FLOWERS_FOLDER}/jpg/image_NNNNN.jpg, {FLOWERS_FOLDER}/imagelabels.mat, {FLOWERS_FOLDER}/setid.mat"

IMAGENET_FOLDER_NAMES = ("imagenet100", "imagenet-100", "")  # searched under the root, in order


def find_imagenet_folder(root: Path, folder: str | None = None) -> Path:
    """The folder holding ``train/`` and ``val/`` (``folder`` under ``root``, else searched)."""
    candidates = [folder] if folder is not None else list(IMAGENET_FOLDER_NAMES)
    for name in candidates:
        path = Path(root) / name
        if (path / "train").is_dir() and (path / "val").is_dir():
            return path
    searched = ",".join(n or "." for n in candidates)
    raise FileNotFoundError(
        f"no ImageNet-100 under {root} (searched {{{searched}}}/{{train,val}}/<wnid>/*); {ROOT_HINT}, "
        "or pass --data.init_args.huggingface clane9/imagenet-100 to download it once"
    )
