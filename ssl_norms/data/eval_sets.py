"""Named, un-augmented evaluation sets (the paper's Fig 3: embedding norms per set).

``load_eval_set("mnist_test", root, size=32)`` returns a Dataset of evaluation items
``{"image", "label", "index"}`` that works with a plain DataLoader. DataModules attach such sets as
further validation dataloaders (``extra_eval_sets``) at their own evaluation size and normalisation.

Names (``-`` and ``_`` are interchangeable; ``mnist`` means ``mnist_test`` and ``flowers102`` means
``flowers102_test``):

=====================  ============================================================  ===========
name                   data under ``root`` (the DataModules' layouts)                native size
=====================  ============================================================  ===========
cifar10_train/_test    ``cifar-10-batches-py/`` or ``cifar10-jpg/{train,test}/<c>/``   32
cifar100_train/_test   ``cifar-100-python/`` or ``cifar100/{train,test}/<c>/``         32
mnist_train/_test      ``MNIST/raw/*-ubyte`` (torchvision's MNIST layout); grey       32 (from 28)
                       digits repeated to 3 channels
flowers102_train/      ``flowers-102/{jpg/,imagelabels.mat,setid.mat}`` (official      128
  _val/_test           ``trnid`` / ``valid`` / ``tstid`` splits)
imagenet100_train/val  ``imagenet100/{train,val}/<wnid>/`` (see ImageNet100DataModule)  128
cifar10_test_noise1-5  the CIFAR-10 test set with Gaussian noise / Gaussian blur of     32
cifar10_test_blur1-5     severity 1-5 (:func:`corrupt`; ``noise``, ``blur``: severity 5)
=====================  ============================================================  ===========

Small sets are decoded into memory, resized once to ``size`` (shorter side, then the central
square); Flowers102 and ImageNet-100 images are decoded per item. Normalisation defaults to the
set's own dataset statistics; pass the ``mean``/``std`` of the DataModule a model was trained on
(``datamodule.mean``, ``datamodule.std``) to show a set to the model as it saw its training data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from ssl_norms.data.datasets import ImageFiles, InMemoryImages
from ssl_norms.data.image_folder import resize_image
from ssl_norms.data.paths import CIFAR10_LAYOUT, CIFAR100_LAYOUT, resolve_root
from ssl_norms.data.readers import flowers102_files, imagenet100_files, read_cifar, read_mnist
from ssl_norms.data.transforms import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, IMAGENET_MEAN, IMAGENET_STD, eval_transform

MNIST_MEAN, MNIST_STD = (0.1307,) * 3, (0.3081,) * 3
ALIASES = {"mnist": "mnist_test", "flowers102": "flowers102_test", "noise": "cifar10_test_noise5", "blur": "cifar10_test_blur5"}
# CIFAR-10-C's parameters for 32 px images (Hendrycks & Dietterich, ICLR 2019), severity 1..5
NOISE_STD = (0.04, 0.06, 0.08, 0.09, 0.10)  # Gaussian noise std on pixels in [0, 1]
BLUR_SIGMA = (0.4, 0.6, 0.7, 0.8, 1.0)  # Gaussian blur sigma in pixels


def corrupt(images: Tensor, kind: str, severity: int, seed: int = 0) -> Tensor:
    """uint8 (N, C, H, W) ``images`` with Gaussian ``noise`` (std ``NOISE_STD``, clipped to [0, 1],
    drawn from ``seed``: the same noise at every call) or Gaussian ``blur`` (sigma ``BLUR_SIGMA``,
    kernel 2 ceil(3 sigma) + 1, reflected borders) of ``severity`` 1-5, back in uint8."""
    if kind not in ("noise", "blur") or severity not in range(1, 6):
        raise ValueError(f"corrupt needs kind 'noise' or 'blur' and severity 1-5, got {kind!r}, {severity!r}")
    pixels = v2.functional.to_dtype(images, torch.float32, scale=True)
    if kind == "noise":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            pixels = v2.functional.gaussian_noise(pixels, sigma=NOISE_STD[severity - 1], clip=True)
    else:
        sigma = BLUR_SIGMA[severity - 1]
        pixels = v2.functional.gaussian_blur(pixels, 2 * math.ceil(3 * sigma) + 1, sigma)
    return v2.functional.to_dtype(pixels, torch.uint8, scale=True)


def _corrupted(loader, kind: str, severity: int):
    def load(root: Path) -> tuple[Tensor, Tensor]:
        images, labels = loader(root)
        return corrupt(images, kind, severity), labels

    return load


def _in_memory(loader, native: int, mean, std, rgb: bool = False):
    def build(root: Path, size: int | None, resize: int | None, mean_: Sequence[float] | None, std_: Sequence[float] | None, on_corrupt: str) -> Dataset:
        images, labels = loader(root)
        size = size or native
        if tuple(images.shape[-2:]) != (size, size) or (resize not in (None, size)):
            images = resize_image(images, resize or size, size)  # once, not at every epoch
        return InMemoryImages(images, labels, eval_transform(mean_ or mean, std_ or std, rgb=rgb))

    return build


def _files(loader, native: int, mean, std):
    def build(root: Path, size: int | None, resize: int | None, mean_, std_, on_corrupt: str) -> Dataset:
        files, labels = loader(root)
        size = size or native
        transform = eval_transform(mean_ or mean, std_ or std)
        return ImageFiles(files, labels, transform, size=size, resize=resize or size, interpolation="bicubic", on_corrupt=on_corrupt)

    return build


EVAL_SETS: dict[str, Callable[..., Dataset]] = {
    "cifar10_train": _in_memory(partial(read_cifar, layout=CIFAR10_LAYOUT, train=True), 32, CIFAR10_MEAN, CIFAR10_STD),
    "cifar10_test": _in_memory(partial(read_cifar, layout=CIFAR10_LAYOUT, train=False), 32, CIFAR10_MEAN, CIFAR10_STD),
    "cifar100_train": _in_memory(partial(read_cifar, layout=CIFAR100_LAYOUT, train=True), 32, CIFAR100_MEAN, CIFAR100_STD),
    "cifar100_test": _in_memory(partial(read_cifar, layout=CIFAR100_LAYOUT, train=False), 32, CIFAR100_MEAN, CIFAR100_STD),
    "mnist_train": _in_memory(partial(read_mnist, train=True), 32, MNIST_MEAN, MNIST_STD, rgb=True),
    "mnist_test": _in_memory(partial(read_mnist, train=False), 32, MNIST_MEAN, MNIST_STD, rgb=True),
    "flowers102_train": _files(partial(flowers102_files, split="train"), 128, IMAGENET_MEAN, IMAGENET_STD),
    "flowers102_val": _files(partial(flowers102_files, split="val"), 128, IMAGENET_MEAN, IMAGENET_STD),
    "flowers102_test": _files(partial(flowers102_files, split="test"), 128, IMAGENET_MEAN, IMAGENET_STD),
    "imagenet100_train": _files(partial(imagenet100_files, split="train"), 128, IMAGENET_MEAN, IMAGENET_STD),
    "imagenet100_val": _files(partial(imagenet100_files, split="val"), 128, IMAGENET_MEAN, IMAGENET_STD),
    **{f"cifar10_test_{kind}{severity}": _in_memory(_corrupted(partial(read_cifar, layout=CIFAR10_LAYOUT, train=False), kind, severity),
                                                    32, CIFAR10_MEAN, CIFAR10_STD)
       for kind in ("noise", "blur") for severity in range(1, 6)},
}


def canonical_eval_set_name(name: str) -> str:
    """``CIFAR10-test`` -> ``cifar10_test``; aliases resolved; unknown names are a one-line error."""
    key = str(name).strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in EVAL_SETS:
        raise ValueError(f"unknown evaluation set {name!r}; choose from {', '.join(sorted(EVAL_SETS))} (or {', '.join(ALIASES)})")
    return key


def load_eval_set(
    name: str, root: str | Path | None = None, size: int | None = None, mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None, resize: int | None = None, on_corrupt: str = "error",
) -> Dataset:
    """The evaluation set ``name`` (see the module docstring) as evaluation items.

    Args:
        name: e.g. ``cifar10_test``, ``cifar100_train``, ``mnist`` (= ``mnist_test``), ``flowers102_val``.
        root: data root (default ``$SSL_NORMS_DATA``, then ``./data``).
        size: image side (default the set's native size: 32 for CIFAR and MNIST, 128 otherwise).
        mean / std: normalisation (default the set's own dataset statistics).
        resize: shorter side before the central ``size`` crop (default ``size``).
        on_corrupt: ``error`` or ``skip`` for unreadable image files.
    Missing data raises FileNotFoundError naming the root searched and the layout expected.
    """
    if size is not None and size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    key = canonical_eval_set_name(name)
    return EVAL_SETS[key](resolve_root(None if root is None else str(root)), size, resize, mean, std, on_corrupt)
