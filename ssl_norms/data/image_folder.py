"""Image files: list a class-per-folder tree (``<split>/<class>/<file>``), decode one file with a
clear error, or decode many once into a uint8 tensor cached on disk."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2.functional import center_crop, resize as resize_fn

from ssl_norms.cache import cache_root
from ssl_norms.data.paths import first_line

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


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


class UnreadableImageError(ValueError):
    """An image file that cannot be decoded. A DataLoader worker's exception reaches the training
    process as ``type(message_with_the_worker_traceback)``; this class keeps only the original
    one-line message then, so the CLI still prints one line naming the file."""

    def __init__(self, message: str) -> None:
        if message.startswith("Caught ") and "\nOriginal Traceback" in message:
            message = message.rstrip().splitlines()[-1].split(": ", 1)[-1]
        super().__init__(message)


def read_image(path: Path, skip: bool = False) -> Tensor | None:
    """uint8 (3, H, W) RGB image of ``path``. An unreadable file raises a ValueError naming it, or
    returns None with ``skip``."""
    try:
        return decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError, OSError) as err:
        if skip:
            return None
        raise UnreadableImageError(f"cannot decode image file {path}: {first_line(err)} (pass --data.init_args.on_corrupt skip to skip such files)") from None


def resize_image(image: Tensor, resize: int | None, size: int | None, interpolation: str = "bilinear") -> Tensor:
    """Shorter side to ``resize`` (aspect kept), then the central ``size`` square; None skips a step."""
    if resize is not None and min(image.shape[-2:]) != resize:
        image = resize_fn(image, resize, interpolation=InterpolationMode(interpolation), antialias=True)
    if size is not None and tuple(image.shape[-2:]) != (size, size):
        image = center_crop(image, [size, size])
    return image


def decode_files(
    files: list[Path], size: int | None = None, interpolation: str = "bilinear", on_corrupt: str = "error"
) -> tuple[Tensor, Tensor]:
    """Decode images into one uint8 (N, 3, H, W) tensor, plus the positions in ``files`` that were
    kept. ``size``: shorter side to ``size`` then the central square (needed when sizes differ).
    ``on_corrupt="skip"`` leaves unreadable files out and warns with their count."""
    if on_corrupt not in ("error", "skip"):
        raise ValueError(f"on_corrupt must be 'error' or 'skip', got {on_corrupt!r}")
    images, kept, skipped = [], [], []
    for position, path in enumerate(files):
        image = read_image(path, skip=on_corrupt == "skip")
        if image is None:
            skipped.append(path)
            continue
        images.append(resize_image(image, size, size, interpolation))
        kept.append(position)
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable image files (first: {skipped[0]})")
    if not images:
        raise ValueError(f"none of the {len(files)} image files could be decoded (first: {files[0]})")
    if len({tuple(im.shape) for im in images}) > 1:
        raise ValueError("images differ in size; pass an image size to decode them into one tensor")
    return torch.stack(images), torch.tensor(kept, dtype=torch.long)


def _cache_path(name: str, files: list[Path], options: str) -> Path:
    newest = max(f.stat().st_mtime_ns for f in files)
    listing = hashlib.sha1("\n".join(str(f.absolute()) for f in files).encode()).hexdigest()
    key = hashlib.sha1(f"{listing}|{len(files)}|{newest}|{options}".encode()).hexdigest()[:16]
    return cache_root() / f"{name}-{key}.pt"


def _read_cache(path: Path, count: int, size: int | None, complete: bool) -> tuple[Tensor, Tensor]:
    """(images, labels) saved in ``path`` for ``count`` files; a ValueError saying what is wrong when
    the file is unreadable or does not hold such a set (truncated, garbage, another shape)."""
    try:
        saved = torch.load(path, weights_only=True)
    except Exception as err:  # truncated zip, garbage, a directory...: whatever it is, it is not our cache
        # torch's first sentence only: its advice to retry with weights_only=False does not apply to a cache
        raise ValueError(f"{type(err).__name__}: {first_line(err).split('. ')[0]}") from None
    images, labels = (saved.get("images"), saved.get("labels")) if isinstance(saved, dict) else (None, None)
    if not isinstance(images, Tensor) or not isinstance(labels, Tensor):
        raise ValueError("not a dict of images and labels")
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3 or labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"images {images.dtype} {tuple(images.shape)} and labels {tuple(labels.shape)} are not a decoded set")
    if len(images) > count or (complete and len(images) != count) or (size is not None and tuple(images.shape[-2:]) != (size, size)):
        raise ValueError(f"{len(images)} images of {tuple(images.shape[-2:])} px, expected {count} of {size} px")
    return images, labels.long()


def _write_cache(path: Path, images: Tensor, labels: Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        torch.save({"images": images, "labels": labels}, tmp)
        tmp.replace(path)  # atomic: concurrent ranks never read a half-written cache
    finally:
        tmp.unlink(missing_ok=True)


def load_images(
    files: list[Path], labels: list[int] | Tensor, name: str, size: int | None = None, interpolation: str = "bilinear",
    on_corrupt: str = "error", cache: bool = True,
) -> tuple[Tensor, Tensor]:
    """(uint8 images, labels) of ``files``, decoded once and cached on disk (``$SSL_NORMS_CACHE``,
    default ``~/.cache/ssl-norms``) so later runs start in a second. Skipped files drop their label.

    An unreadable cache file (truncated, garbage, another shape) is rebuilt from the image files with
    a warning; when it cannot be replaced, a one-line error names it and says to delete it."""
    if not files:
        raise FileNotFoundError("no image files to load")
    label_t = torch.as_tensor(labels, dtype=torch.long)
    path = _cache_path(name, files, f"{size}|{interpolation}|{on_corrupt}") if cache else None
    broken = None  # why the existing cache file could not be used
    if path is not None and path.exists():
        try:
            return _read_cache(path, len(files), size, complete=on_corrupt == "error")
        except ValueError as err:
            broken = str(err)
            warnings.warn(f"the decoded-image cache {path} is unreadable ({broken}); rebuilding it from the {len(files)} image files")
    images, kept = decode_files(files, size, interpolation, on_corrupt)
    label_t = label_t[kept]
    if path is not None:
        try:
            _write_cache(path, images, label_t)
        except (OSError, RuntimeError) as err:  # RuntimeError: torch.save on a full disk
            if broken is not None:  # left in place, it would be decoded around on every run
                raise ValueError(f"the decoded-image cache {path} is unreadable ({broken}) and cannot be replaced ({first_line(err)}); delete it") from None
            # a read-only cache location only costs decoding time
    return images, label_t


def load_image_folder(
    split_dir: Path, size: int | None = None, cache: bool = True, interpolation: str = "bilinear", on_corrupt: str = "error"
) -> tuple[Tensor, Tensor, list[str]]:
    """(uint8 images, labels, class names) of ``split_dir/<class>/*`` (see :func:`load_images`)."""
    files, labels, classes = list_image_folder(split_dir)
    if not files:
        raise FileNotFoundError(f"no images found under {split_dir}/<class>/")
    images, label_t = load_images(files, labels, split_dir.name, size, interpolation, on_corrupt, cache)
    return images, label_t, classes
