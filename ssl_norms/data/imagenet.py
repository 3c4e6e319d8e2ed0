"""ImageNet-100 DataModule: an image folder ``train/<wnid>/*``, ``val/<wnid>/*``, optionally taken out
of a full ImageNet folder by a class list, or materialised once from the Hugging Face Hub."""

from __future__ import annotations

import shutil
from pathlib import Path

from ssl_norms.data.file_images import ImageFilesDataModule
from ssl_norms.data.image_folder import IMAGE_SUFFIXES
from ssl_norms.data.paths import IMAGENET_FOLDER_NAMES, find_imagenet_folder, first_line
from ssl_norms.data.readers import IMAGENET_MAX_PER_CLASS, imagenet100_files

HF_SPLITS = {"train": ("train",), "val": ("validation", "val")}  # ours -> names on the Hub
COMPLETE_MARK = ".complete"


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
        try:  # the optional `hf` extra, heavy to import: only when a Hub copy is asked for
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
                errors.append(first_line(err))
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
        self, class_list: str | None = None, max_per_class: int | None = IMAGENET_MAX_PER_CLASS, folder: str | None = None,
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
                materialise_hf_imagenet(self.huggingface, self.root / IMAGENET_FOLDER_NAMES[0])
        files, labels = imagenet100_files(self.root, "train" if split == "train" else "val", self.class_list, self.max_per_class, self.folder)
        self.num_classes = max(labels) + 1
        if split == "train":
            self.class_names = sorted({f.parent.name for f in files})
        return files, labels
