"""ImageNet-100 DataModule: an image folder ``train/<wnid>/*``, ``val/<wnid>/*``, optionally taken out
of a full ImageNet folder by a class list, or materialised once from the Hugging Face Hub."""

from __future__ import annotations

import shutil
from pathlib import Path

from ssl_norms.data.base import DATA_ENV
from ssl_norms.data.file_images import ImageFilesDataModule
from ssl_norms.data.image_folder import IMAGE_SUFFIXES

FOLDER_NAMES = ("imagenet100", "imagenet-100", "")  # searched under the root, in order
HF_SPLITS = {"train": ("train",), "val": ("validation", "val")}  # ours -> names on the Hub
COMPLETE_MARK = ".complete"
MAX_PER_CLASS = 1300  # the paper keeps at most 1300 training images per class


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


def find_imagenet_folder(root: Path, folder: str | None = None) -> Path:
    """The folder holding ``train/`` and ``val/`` (``folder`` under ``root``, else searched)."""
    candidates = [folder] if folder is not None else list(FOLDER_NAMES)
    for name in candidates:
        path = Path(root) / name
        if (path / "train").is_dir() and (path / "val").is_dir():
            return path
    searched = ",".join(n or "." for n in candidates)
    raise FileNotFoundError(
        f"no ImageNet-100 under {root} (searched {{{searched}}}/{{train,val}}/<wnid>/*); set the root with "
        f"--data.init_args.root or ${DATA_ENV}, or pass --data.init_args.huggingface clane9/imagenet-100 to download it once"
    )


def imagenet100_files(
    root: Path, split: str, class_list: str | Path | None = None, max_per_class: int | None = MAX_PER_CLASS, folder: str | None = None
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


def _write_image(image, path: Path) -> None:
    """A Hub image as a file: the original encoded bytes when the dataset gives them, else a JPEG."""
    if isinstance(image, dict) and image.get("bytes") is not None:
        suffix = Path(image.get("path") or "x.jpg").suffix.lower()
        path.with_suffix(suffix if suffix in IMAGE_SUFFIXES else ".jpg").write_bytes(image["bytes"])
    else:
        image.convert("RGB").save(path.with_suffix(".jpg"), format="JPEG", quality=95)


def materialise_hf_imagenet(dataset_id: str, target: Path, load_dataset=None) -> Path:
    """Write the Hugging Face dataset ``dataset_id`` (image + label columns, splits train and
    validation) as ``target/{train,val}/<class>/NNNNNNN.<ext>``, once: a finished copy has a
    ``.complete`` mark and is never written again; an interrupted one is started over.

    ``load_dataset`` defaults to ``datasets.load_dataset`` (the optional ``hf`` extra)."""
    target = Path(target)
    if (target / COMPLETE_MARK).exists():
        return target
    if load_dataset is None:
        try:
            from datasets import Image, load_dataset as hf_load
        except ImportError:
            raise ValueError("loading ImageNet-100 from the Hugging Face Hub needs the `datasets` package: pip install 'ssl-norms[hf]'") from None

        def load_dataset(name, split):  # keep the original encoded bytes instead of re-encoding
            return hf_load(name, split=split).cast_column("image", Image(decode=False))

    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for ours, hub_names in HF_SPLITS.items():
        dataset, errors = None, []
        for hub_name in hub_names:
            try:
                dataset = load_dataset(dataset_id, split=hub_name)
                break
            except (ValueError, KeyError) as err:
                errors.append(str(err).splitlines()[0] if str(err) else type(err).__name__)
        if dataset is None:
            raise ValueError(f"{dataset_id} has no split {' or '.join(hub_names)} ({'; '.join(errors)})")
        names = list(dataset.features["label"].names)
        for number, row in enumerate(dataset):
            class_dir = partial / ours / names[int(row["label"])].replace("/", "_")
            class_dir.mkdir(parents=True, exist_ok=True)
            _write_image(row["image"], class_dir / f"{number:07d}")
    (partial / COMPLETE_MARK).write_text(f"{dataset_id}\n")
    if target.exists():
        raise FileExistsError(f"{target} exists but is not a finished copy (no {COMPLETE_MARK}); remove it and retry")
    partial.rename(target)
    return target


class ImageNet100DataModule(ImageFilesDataModule):
    """ImageNet-100 from an image folder ``<root>/{imagenet100,imagenet-100,.}/{train,val}/<wnid>/*``.

    At most ``max_per_class`` (1300, as the paper) training images per class, the first by file name.
    ``class_list`` (a file of wnids) takes the 100 classes out of a full ImageNet folder (``folder``
    names it under the root, e.g. ``imagenet``). ``huggingface: clane9/imagenet-100`` materialises
    that Hub dataset once under ``<root>/imagenet100`` when no folder is found (needs the ``hf`` extra).
    Image size and pipeline (``paper`` 128 px or ``standard`` 224 px) and the in-memory versus
    decode-per-batch choice: :mod:`ssl_norms.data.file_images`.

    Args:
        class_list: file of class folder names to keep (all folders of ``train/`` when None).
        max_per_class: cap on training images per class (None keeps all).
        folder: the dataset folder under the root (searched when None).
        huggingface: Hub dataset id to materialise when the folder is missing.
        **kwargs: see :class:`~ssl_norms.data.file_images.ImageFilesDataModule`.
    """

    num_classes = 100
    eval_set_name = "imagenet100_val"

    def __init__(
        self, class_list: str | None = None, max_per_class: int | None = MAX_PER_CLASS, folder: str | None = None,
        huggingface: str | None = None, **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if max_per_class is not None and max_per_class < 1:
            raise ValueError(f"max_per_class must be >= 1, got {max_per_class}")
        self.class_list, self.max_per_class, self.folder, self.huggingface = class_list, max_per_class, folder, huggingface
        self.class_names: list[str] = []

    def split_files(self, split: str) -> tuple[list[Path], list[int]]:
        if self.huggingface is not None and self.folder is None:
            try:
                find_imagenet_folder(self.root)
            except FileNotFoundError:
                materialise_hf_imagenet(self.huggingface, self.root / FOLDER_NAMES[0])
        files, labels = imagenet100_files(self.root, "train" if split == "train" else "val", self.class_list, self.max_per_class, self.folder)
        self.num_classes = max(labels) + 1
        if split == "train":
            self.class_names = sorted({f.parent.name for f in files})
        return files, labels
