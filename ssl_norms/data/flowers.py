"""Flowers102 DataModule (torchvision's on-disk layout), trained on the long-tailed ``test`` split."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssl_norms.data.base import DATA_ENV
from ssl_norms.data.file_images import ImageFilesDataModule

FOLDER = "flowers-102"  # torchvision's Flowers102 base folder under the root
SPLIT_KEYS = {"train": "trnid", "val": "valid", "test": "tstid"}  # names in setid.mat
SPLIT_SCHEMES = {"paper": ("test", "val"), "conventional": ("train", "test")}  # (train on, evaluate on)
LAYOUT = f"{FOLDER}/jpg/image_NNNNN.jpg, {FOLDER}/imagelabels.mat, {FOLDER}/setid.mat"


def read_flowers_splits(setid_path: Path) -> dict[str, np.ndarray]:
    """Image ids (1-based) of the official ``train``/``val``/``test`` splits in ``setid.mat``."""
    from scipy.io import loadmat

    try:
        setid = loadmat(str(setid_path))
        return {split: np.asarray(setid[key]).astype(np.int64).ravel() for split, key in SPLIT_KEYS.items()}
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"cannot read the Flowers102 split file {setid_path}: {err}") from None


def read_flowers_labels(labels_path: Path) -> np.ndarray:
    """0-based class of every image (``imagelabels.mat`` stores classes 1..102 by image id)."""
    from scipy.io import loadmat

    try:
        return np.asarray(loadmat(str(labels_path))["labels"]).astype(np.int64).ravel() - 1
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"cannot read the Flowers102 label file {labels_path}: {err}") from None


def flowers102_files(root: Path, split: str) -> tuple[list[Path], list[int]]:
    """Image files and 0-based labels of an official split (``train``, ``val`` or ``test``)."""
    if split not in SPLIT_KEYS:
        raise ValueError(f"Flowers102 split must be one of {sorted(SPLIT_KEYS)}, got {split!r}")
    folder = Path(root) / FOLDER
    needed = [folder / "imagelabels.mat", folder / "setid.mat", folder / "jpg"]
    if not all(p.exists() for p in needed):
        raise FileNotFoundError(
            f"no Flowers102 under {root} (expected {LAYOUT}, torchvision's layout); set the root with "
            f"--data.init_args.root or ${DATA_ENV}, or pass --data.init_args.download true"
        )
    ids = read_flowers_splits(folder / "setid.mat")[split]
    labels = read_flowers_labels(folder / "imagelabels.mat")
    if ids.max() > len(labels):
        raise ValueError(f"{folder / 'setid.mat'} names image {ids.max()} but imagelabels.mat labels only {len(labels)} images")
    files = [folder / "jpg" / f"image_{i:05d}.jpg" for i in ids]
    missing = [f for f in files if not f.exists()]
    if missing:
        raise FileNotFoundError(f"Flowers102 split {split!r} lists {len(missing)} images missing under {folder / 'jpg'} (first: {missing[0].name}); re-download with --data.init_args.download true")
    return files, [int(labels[i - 1]) for i in ids]


class Flowers102DataModule(ImageFilesDataModule):
    """Oxford Flowers102 (102 classes, images of varying size) in torchvision's layout under ``root``:
    ``flowers-102/jpg/image_%05d.jpg``, ``imagelabels.mat``, ``setid.mat``.

    By default (``splits: paper``) it trains on the official ``test`` split (6,149 images, naturally
    long-tailed) and evaluates on ``val`` (1,020), as the paper does; ``splits: conventional`` trains
    on ``train`` (1,020) and evaluates on ``test``. ``download=True`` fetches the official files
    through torchvision when they are missing.

    Args:
        splits: ``paper`` or ``conventional``.
        download: fetch the dataset when it is not under ``root``.
        **kwargs: see :class:`~ssl_norms.data.file_images.ImageFilesDataModule` (image_size, pipeline, ...).
    """

    num_classes = 102

    def __init__(self, splits: str = "paper", download: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        if splits not in SPLIT_SCHEMES:
            raise ValueError(f"splits must be one of {sorted(SPLIT_SCHEMES)}, got {splits!r}")
        self.splits, self.download = splits, download
        self.eval_set_name = f"flowers102_{SPLIT_SCHEMES[splits][1]}"

    def _download(self) -> None:
        from torchvision.datasets import Flowers102

        try:
            Flowers102(str(self.root), split="train", download=True)
        except Exception as err:  # no network here: report it on one line with the layout
            raise FileNotFoundError(
                f"no Flowers102 under {self.root} (expected {LAYOUT}) and the download failed "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); place the files there or set ${DATA_ENV}"
            ) from None

    def split_files(self, split: str) -> tuple[list[Path], list[int]]:
        if self.download and not (self.root / FOLDER / "setid.mat").exists():
            self._download()
        train_split, eval_split = SPLIT_SCHEMES[self.splits]
        return flowers102_files(self.root, train_split if split == "train" else eval_split)
