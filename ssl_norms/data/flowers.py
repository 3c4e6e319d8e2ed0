"""Flowers102 DataModule (torchvision's on-disk layout), trained on the long-tailed ``test`` split."""

from __future__ import annotations

from pathlib import Path

from torchvision.datasets import Flowers102

from ssl_norms.data.file_images import ImageFilesDataModule
from ssl_norms.data.paths import DATA_ENV, FLOWERS_FOLDER, FLOWERS_LAYOUT, first_line
from ssl_norms.data.readers import flowers102_files

SPLIT_SCHEMES = {"paper": ("test", "val"), "conventional": ("train", "test")}  # (train on, evaluate on)


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
        try:
            Flowers102(str(self.root), split="train", download=True)
        except Exception as err:  # no network here: report it on one line with the layout
            raise FileNotFoundError(
                f"no Flowers102 under {self.root} (expected {FLOWERS_LAYOUT}) and the download failed "
                f"({type(err).__name__}: {first_line(err)}); place the files there or set ${DATA_ENV}"
            ) from None

    def split_files(self, split: str) -> tuple[list[Path], list[int]]:
        if self.download and not (self.root / FLOWERS_FOLDER / "setid.mat").exists():
            self._download()
        train_split, eval_split = SPLIT_SCHEMES[self.splits]
        return flowers102_files(self.root, train_split if split == "train" else eval_split)
