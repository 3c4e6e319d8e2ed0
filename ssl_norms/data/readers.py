"""Plain readers of each on-disk dataset format: images (or image files) and labels, nothing else.

CIFAR (torchvision's pickled batches, or a class-per-folder copy), MNIST (IDX files), Flowers102
(``.mat`` split and label files beside ``jpg/``) and ImageNet-100 (``train/`` and ``val/`` class
folders). DataModules and the named evaluation sets both build on these; a missing or unreadable
file is a one-line error naming it."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from scipy.io import loadmat
from torch import Tensor
from torchvision.datasets.mnist import read_image_file, read_label_file

from ssl_norms.data.image_folder import IMAGE_SUFFIXES, load_image_folder
from ssl_norms.data.paths import FLOWERS_FOLDER, FLOWERS_LAYOUT, MNIST_RAW, ROOT_HINT, CifarLayout, find_imagenet_folder, first_line

FLOWERS_SPLIT_KEYS = {"train": "trnid", "val": "valid", "test": "tstid"}  # names in setid.mat
IMAGENET_MAX_PER_CLASS = 1300  # the paper keeps at most 1300 training images per class


# ---- CIFAR -------------------------------------------------------------------------------------
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
        if len(labels) != sum(map(len, images)):
            raise ValueError(f"CIFAR batch file {path} holds {len(images[-1])} images but {len(entry[label_key])} labels; re-download it with --data.init_args.download true")
    return torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.long)


def cifar_missing(layout: CifarLayout, root: Path, detail: str = "") -> FileNotFoundError:
    return FileNotFoundError(
        f"no {layout.name} under {root} (searched {layout.searched()}){detail}; {ROOT_HINT}, "
        "or pass --data.init_args.download true"
    )


def read_cifar(root: Path, layout: CifarLayout, train: bool, on_corrupt: str = "error") -> tuple[Tensor, Tensor]:
    """uint8 (N, 3, 32, 32) images and labels of the train or test split: torchvision's pickles when
    they are under ``root``, else the first class-per-folder copy found (decoded once, cached)."""
    root = Path(root)
    if (root / layout.torchvision_folder).is_dir():
        return read_cifar_pickles(root / layout.torchvision_folder, layout.train_files if train else layout.test_files, layout.label_key)
    split = "train" if train else "test"
    for name in layout.image_folder_names:
        split_dir = root / name / split
        if split_dir.is_dir():
            images, labels, _ = load_image_folder(split_dir, on_corrupt=on_corrupt)
            if images.shape[-2:] != (32, 32):
                raise ValueError(f"{split_dir} holds {tuple(images.shape[-2:])} images; {layout.name} expects 32x32")
            return images, labels
    raise cifar_missing(layout, root)


# ---- MNIST -------------------------------------------------------------------------------------
def read_mnist(root: Path, train: bool) -> tuple[Tensor, Tensor]:
    """uint8 (N, 1, 28, 28) digits and labels from torchvision's ``MNIST/raw`` IDX files."""
    raw = Path(root) / MNIST_RAW
    stem = "train" if train else "t10k"
    images_path, labels_path = raw / f"{stem}-images-idx3-ubyte", raw / f"{stem}-labels-idx1-ubyte"
    if not images_path.exists() or not labels_path.exists():
        raise FileNotFoundError(
            f"no MNIST under {root} (expected {images_path} and {labels_path.name}, torchvision's layout); "
            f"{ROOT_HINT}, or download it once with torchvision.datasets.MNIST(root, download=True)"
        )
    try:
        images, labels = read_image_file(str(images_path)), read_label_file(str(labels_path))
    except (AssertionError, KeyError, RuntimeError, ValueError, OSError) as err:
        raise ValueError(f"cannot read the MNIST files {images_path} / {labels_path.name} ({type(err).__name__}); re-download them") from None
    if len(images) != len(labels):
        raise ValueError(f"{images_path} holds {len(images)} images but {labels_path.name} {len(labels)} labels; re-download them")
    return images.unsqueeze(1).contiguous(), labels.long()


# ---- Flowers102 --------------------------------------------------------------------------------
def _loadmat(path: Path, what: str) -> dict:
    try:
        return loadmat(str(path))
    except Exception as err:  # scipy raises many kinds on an empty, truncated or foreign file
        raise ValueError(f"cannot read the Flowers102 {what} file {path} ({type(err).__name__}: {first_line(err)}); re-download it") from None


def read_flowers_splits(setid_path: Path) -> dict[str, np.ndarray]:
    """Image ids (1-based) of the official ``train``/``val``/``test`` splits in ``setid.mat``."""
    setid = _loadmat(setid_path, "split")
    missing = [key for key in FLOWERS_SPLIT_KEYS.values() if key not in setid]
    if missing:
        raise ValueError(f"the Flowers102 split file {setid_path} has no {', '.join(missing)}; re-download it")
    return {split: np.asarray(setid[key]).astype(np.int64).ravel() for split, key in FLOWERS_SPLIT_KEYS.items()}


def read_flowers_labels(labels_path: Path) -> np.ndarray:
    """0-based class of every image (``imagelabels.mat`` stores classes 1..102 by image id)."""
    labels = _loadmat(labels_path, "label")
    if "labels" not in labels:
        raise ValueError(f"the Flowers102 label file {labels_path} has no labels; re-download it")
    return np.asarray(labels["labels"]).astype(np.int64).ravel() - 1


def flowers102_files(root: Path, split: str) -> tuple[list[Path], list[int]]:
    """Image files and 0-based labels of an official split (``train``, ``val`` or ``test``)."""
    if split not in FLOWERS_SPLIT_KEYS:
        raise ValueError(f"Flowers102 split must be one of {sorted(FLOWERS_SPLIT_KEYS)}, got {split!r}")
    folder = Path(root) / FLOWERS_FOLDER
    needed = [folder / "imagelabels.mat", folder / "setid.mat", folder / "jpg"]
    if not all(p.exists() for p in needed):
        raise FileNotFoundError(
            f"no Flowers102 under {root} (expected {FLOWERS_LAYOUT}, torchvision's layout); {ROOT_HINT}, "
            "or pass --data.init_args.download true"
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


# ---- ImageNet-100 ------------------------------------------------------------------------------
def read_class_list(path: Path) -> list[str]:
    """Class folder names (wnids), one a line; blank lines and ``#`` comments ignored."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class_list file {path} does not exist")
    names = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    names = [n for n in names if n]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"class_list {path} must name at least one class, each once")
    return names


def imagenet100_files(
    root: Path, split: str, class_list: str | Path | None = None, max_per_class: int | None = IMAGENET_MAX_PER_CLASS, folder: str | None = None
) -> tuple[list[Path], list[int]]:
    """Files and labels of ``split`` (``train`` or ``val``): classes are the folder names of ``train/``
    (or the ``class_list`` subset) in sorted order; files sorted by name, at most ``max_per_class`` per
    class in the training split (the first ones, so the choice is deterministic)."""
    if split not in ("train", "val"):
        raise ValueError(f"ImageNet-100 split must be 'train' or 'val', got {split!r}")
    base = find_imagenet_folder(Path(root), folder)
    available = sorted(d.name for d in (base / "train").iterdir() if d.is_dir())
    if class_list is not None:
        wanted = read_class_list(Path(class_list))
        unknown = [c for c in wanted if c not in set(available)]
        if unknown:
            raise ValueError(f"class_list {class_list}: {len(unknown)} classes not found under {base / 'train'} (first: {unknown[0]})")
        classes = sorted(wanted)
    else:
        classes = available
    if not classes:
        raise FileNotFoundError(f"no class folders under {base / 'train'}; expected train/<wnid>/*")
    files, labels = [], []
    for label, name in enumerate(classes):
        class_dir = base / split / name
        if not class_dir.is_dir():
            raise FileNotFoundError(f"class {name} has no folder {class_dir}; {split}/ must hold the same classes as train/")
        members = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if split == "train" and max_per_class is not None:
            members = members[:max_per_class]
        files += members
        labels += [label] * len(members)
    return files, labels
