"""Human labels of CIFAR (CIFAR-10N / CIFAR-100N for training images, CIFAR-10H for test images)
and their join to the images a DataModule loaded.

Both label sets are indexed by the *original* CIFAR order. The torchvision format stores that order,
so a sample's ``index`` is its original position. The class-per-folder copy loses it, except that the
``cifar10-jpg`` training folder keeps the original order inside each class: its k-th image of class c
is the k-th original index i with ``clean_label[i] == c``. No such fact holds for the test folder, so
CIFAR-10H cannot be joined to it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ssl_norms.analysis.output import AnalysisUnavailable
from ssl_norms.runs import load_error

if TYPE_CHECKING:  # torch is imported by the functions that compute, so `analyze --help` does without it
    from torch import Tensor

    from ssl_norms.data.base import SSLDataModule

# num_classes -> (CIFAR-N file, the human label compared with clean_label)
NOISY_LABEL_FILES = {10: ("CIFAR-10_human.pt", "aggre_label"), 100: ("CIFAR-100_human.pt", "noisy_label")}
NOISY_LABEL_FOLDERS = ("cifar10n", "cifar-10-100n", "")
CIFAR10H_FOLDERS = ("cifar10h", "cifar-10h", "")
CIFAR10H_PROBS = "cifar10h-probs.npy"
# what unpickling numpy arrays needs (the CIFAR-N files hold int64 arrays; numpy 1 pickles name numpy.core)
NUMPY_ARRAY_GLOBALS = [np.ndarray, np.dtype, type(np.dtype(np.int64)), np._core.multiarray._reconstruct,
                       (np._core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct")]


def storage_format(datamodule: SSLDataModule) -> str:
    """``torchvision`` when the DataModule reads torchvision's pickled batches (original order
    known), else ``image_folder``."""
    folder = getattr(datamodule, "torchvision_folder", None)
    return "torchvision" if folder and (Path(datamodule.root) / folder).is_dir() else "image_folder"


def find_file(root: Path, folders: tuple[str, ...], name: str, what: str, option: str) -> Path:
    for folder in folders:
        path = root / folder / name
        if path.is_file():
            return path
    searched = ", ".join(str(root / f / name) for f in folders)
    raise AnalysisUnavailable(f"no {what} file found (searched {searched}); pass its path with {option}")


def load_noisy_labels(path: Path, key: str) -> tuple[Tensor, Tensor]:
    """(clean_label, ``key`` label) of a CIFAR-N ``*_human.pt`` file, both of length 50,000."""
    import torch

    try:  # plain data only: numpy arrays are allowed, nothing that could run code
        with torch.serialization.safe_globals(NUMPY_ARRAY_GLOBALS):
            table = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged file or a refused global: one line naming the file
        raise ValueError(load_error(Path(path), err)) from None
    if not isinstance(table, dict) or "clean_label" not in table:
        raise ValueError(f"{path} is not a CIFAR-N label file (a dict with 'clean_label')")
    if key not in table:
        raise ValueError(f"{path} has no {key!r}; available: {', '.join(k for k in table if k.endswith('label'))}")
    return torch.as_tensor(np.asarray(table["clean_label"])).long(), torch.as_tensor(np.asarray(table[key])).long()


def original_train_indices(index: Tensor, labels: Tensor, clean_labels: Tensor, storage: str, num_classes: int) -> Tensor:
    """Original CIFAR training positions of samples at dataset positions ``index`` (labels ``labels``).

    Raises when the join is impossible or inconsistent (a sample's label differs from the clean label
    at its original position)."""
    import torch

    if storage == "torchvision":
        original = index.long()
    elif num_classes == 10:
        if int(index.max()) >= len(clean_labels):
            raise ValueError(f"sample index {int(index.max())} is beyond the {len(clean_labels)} CIFAR-N labels")
        # dataset position p is the (p - first position of its class)-th image of its class
        original = torch.argsort(clean_labels, stable=True)[index.long()]
    else:
        raise AnalysisUnavailable(
            "the original training order of this image folder is unknown (only the cifar10-jpg copy keeps it); "
            "use the torchvision format (cifar-100-python) for CIFAR-100N"
        )
    mismatched = int((clean_labels[original] != labels).sum())
    if mismatched:
        raise ValueError(
            f"joining human labels failed: {mismatched} of {len(labels)} images have a class different from CIFAR-N's "
            "clean_label at their original position (is the data a complete, unmodified CIFAR training set?)"
        )
    return original


def load_cifar10h(path: Path) -> Tensor:
    """CIFAR-10H label distributions (10,000 x 10, rows sum to 1) in the original test order."""
    import torch

    probs = torch.as_tensor(np.load(path)).double()
    if probs.ndim != 2 or probs.shape[1] != 10:
        raise ValueError(f"{path}: expected an (N, 10) array of label distributions, got {tuple(probs.shape)}")
    if not torch.allclose(probs.sum(1), torch.ones(len(probs), dtype=probs.dtype), atol=1e-4):
        raise ValueError(f"{path}: rows must sum to 1 (use cifar10h-probs.npy, not the counts)")
    return probs


def entropy_bits(probs: Tensor) -> Tensor:
    """Shannon entropy (base 2) of each row; 0 log 0 = 0."""
    import torch

    return torch.special.entr(probs).sum(dim=1) / math.log(2)


def cifar10h_join_unavailable_reason() -> str:
    return (
        "CIFAR-10H rows follow the original CIFAR-10 test order, which the image-folder copy does not record "
        "(only its class order is known), so the join is not possible; use the torchvision format "
        "(cifar-10-batches-py) for Fig 4 right"
    )
