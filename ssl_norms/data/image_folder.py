"""Decode a class-per-folder image tree (``<split>/<class>/<file>``) once into a uint8 tensor."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image, read_file

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
CACHE_ENV = "SSL_NORMS_CACHE"


def list_image_folder(split_dir: Path) -> tuple[list[Path], list[int], list[str]]:
    """Files and labels of ``split_dir/<class>/*`` with classes and files in sorted order (the order
    torchvision's ImageFolder uses; for the CIFAR-10 copy it is the original order inside a class)."""
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    files, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((split_dir / name).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                files.append(path)
                labels.append(label)
    return files, labels, classes


def _cache_path(split_dir: Path, files: list[Path]) -> Path:
    cache_root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ssl-norms")
    newest = max(f.stat().st_mtime_ns for f in files)
    key = hashlib.sha1(f"{split_dir.resolve()}|{len(files)}|{newest}".encode()).hexdigest()[:16]
    return cache_root / f"{split_dir.name}-{key}.pt"


def decode_files(files: list[Path], size: int | None = None) -> Tensor:
    """Decode images to one uint8 (N, 3, H, W) tensor (resized to ``size`` when the sizes differ)."""
    from torchvision.transforms.v2.functional import resize

    images = []
    for path in files:
        try:
            image = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
        except (RuntimeError, ValueError) as err:
            raise ValueError(f"cannot decode image file {path}: {err}") from None
        if size is not None and image.shape[-2:] != (size, size):
            image = resize(image, [size, size], antialias=True)
        images.append(image)
    if len({tuple(im.shape) for im in images}) > 1:
        raise ValueError("images differ in size; pass an image size to decode them into one tensor")
    return torch.stack(images)


def load_image_folder(split_dir: Path, size: int | None = None, cache: bool = True) -> tuple[Tensor, Tensor, list[str]]:
    """(uint8 images, labels, class names) of ``split_dir``, decoded once and cached on disk
    (``$SSL_NORMS_CACHE``, default ``~/.cache/ssl-norms``) so later runs start in a second."""
    files, labels, classes = list_image_folder(split_dir)
    if not files:
        raise FileNotFoundError(f"no images found under {split_dir}/<class>/")
    path = _cache_path(split_dir, files) if cache else None
    if path is not None and path.exists():
        saved = torch.load(path, weights_only=True)
        if saved["images"].shape[0] == len(files) and (size is None or saved["images"].shape[-1] == size):
            return saved["images"], saved["labels"], classes
    images = decode_files(files, size)
    label_t = torch.tensor(labels, dtype=torch.long)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save({"images": images, "labels": label_t}, tmp)
            tmp.replace(path)  # atomic: concurrent ranks never read a half-written cache
        except OSError:
            pass  # a read-only cache location only costs decoding time
    return images, label_t, classes
