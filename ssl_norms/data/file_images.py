"""Shared by DataModules over image files of varying size (ImageNet-100, Flowers102).

Two pipelines, one option apart (``pipeline``):

* ``paper`` (default, 128 px): every image is resized once, bicubic, shorter side to ``image_size``
  and the central square kept (the paper's code trains at 128 px after a bicubic resize); training
  views are random resized crops *of that image*, evaluation uses it as is.
* ``standard`` (224 px): the usual ImageNet pipeline; each training view is a random resized crop of
  the full-resolution image (bilinear, antialiased), evaluation resizes the shorter side to
  ``image_size * 256 / 224`` and keeps the central ``image_size`` square.

Memory: 126,689 ImageNet-100 images at 128 px are 6.2 GB as uint8 (19 GB at 224 px), more than a
small machine holds, so by default (``in_memory: null``) a set is decoded once into memory (and cached
on disk) only when it fits in ``memory_limit_gb``; otherwise images are decoded per batch in the
DataLoader workers (raise ``num_workers`` for those). The ``standard`` pipeline always decodes per
batch, since it crops the full-resolution image.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ssl_norms.data.base import ImageDataModule
from ssl_norms.data.datasets import ImageFiles, InMemoryImages
from ssl_norms.data.image_folder import load_images
from ssl_norms.data.transforms import IMAGENET_MEAN, IMAGENET_STD

PIPELINES = {"paper": (128, "bicubic"), "standard": (224, "bilinear")}  # default size, interpolation


class ImageFilesDataModule(ImageDataModule):
    """Base of DataModules whose images are files of varying size (module docstring).

    Subclasses implement ``split_files(split)`` for ``split`` in ``("train", "eval")``, returning
    (files, int labels), and set ``num_classes``.

    Args:
        image_size: side of training views and evaluation images (default 128 for ``paper``, 224 for ``standard``).
        pipeline: ``paper`` or ``standard`` (module docstring).
        in_memory: decode once into memory (True), per batch (False), or by size (None).
        memory_limit_gb: the budget ``in_memory: null`` compares a set's decoded size with.
        jitter_strength: colour-jitter strength s (1.0: the ImageNet SimCLR value).
        **kwargs: see :class:`ImageDataModule` and :class:`SSLDataModule`.
    """

    mean, std = IMAGENET_MEAN, IMAGENET_STD

    def __init__(
        self, image_size: int | None = None, pipeline: str = "paper", in_memory: bool | None = None, memory_limit_gb: float = 2.0,
        jitter_strength: float = 1.0, **kwargs,
    ) -> None:
        super().__init__(jitter_strength=jitter_strength, **kwargs)
        if pipeline not in PIPELINES:
            raise ValueError(f"pipeline must be one of {sorted(PIPELINES)}, got {pipeline!r}")
        if image_size is not None and image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {image_size}")
        if pipeline == "standard" and in_memory:
            raise ValueError("the standard pipeline crops full-resolution images and cannot hold them in memory; use in_memory: null")
        self.pipeline, self.in_memory, self.memory_limit_gb = pipeline, in_memory, memory_limit_gb
        self.image_size, self.interpolation = image_size or PIPELINES[pipeline][0], PIPELINES[pipeline][1]
        self.eval_image_size = self.image_size
        # evaluation resize: the paper's images are used as resized; the standard pipeline's 256/224 rule
        self.eval_resize = self.image_size if pipeline == "paper" else round(self.image_size * 256 / 224)

    def split_files(self, split: str) -> tuple[list[Path], list[int]]:
        raise NotImplementedError

    def fits_in_memory(self, count: int) -> bool:
        if self.pipeline == "standard":
            return False
        if self.in_memory is not None:
            return self.in_memory
        return count * 3 * self.image_size**2 <= self.memory_limit_gb * 2**30

    def _eval_items(self, files: list[Path], labels: list[int], name: str):
        plain = self.plain_transform()
        if self.fits_in_memory(len(files)):
            images, label_t = load_images(files, labels, name, self.image_size, self.interpolation, self.on_corrupt)
            return InMemoryImages(images, label_t, plain), images, label_t
        items = ImageFiles(files, torch.tensor(labels), plain, size=self.image_size, resize=self.eval_resize,
                           interpolation=self.interpolation, on_corrupt=self.on_corrupt)
        return items, items, items.labels

    def build(self) -> None:
        train_files, train_labels = self.split_files("train")
        eval_files, eval_labels = self.split_files("eval")
        tag = f"{type(self).__name__.lower()}-{self.image_size}"
        self.bank_set, source, labels = self._eval_items(train_files, train_labels, f"{tag}-train")
        self.val_set, _, _ = self._eval_items(eval_files, eval_labels, f"{tag}-eval")
        # standard: the bank's files, each view cropped from the full-resolution decode
        self.train_set = self.training_views(source, labels, self.image_size, crop_at_decode=self.pipeline == "standard")

