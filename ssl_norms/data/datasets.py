"""Datasets that yield the batch dicts every ssl-norms method reads.

Training items: ``{"views": [view, ...], "label", "index"}``; evaluation items:
``{"image", "label", "index"}``. The index is the sample's position in the full dataset, so
evaluation results can be joined to per-sample metadata and de-duplicated across ranks.

Every dataset here works with a plain ``DataLoader`` and its default collate function. The
training sets augment a whole batch at once in ``__getitems__`` (which the DataLoader calls instead
of one ``__getitem__`` per sample) and hand the batch back as per-sample items (``StackedItems``),
which the default collate stacks again, so any code that builds its own loader can use them; the
DataModules' loaders pass ``collate_fn`` (``collate_stacked``), which takes the batch as built.

Labelled datasets expose ``targets`` (the label of every item, in item order) and
``subset(positions)`` (the same kind of dataset restricted to those items), which the base
DataModule uses for imbalanced splits and ``max_*_samples`` subsets.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset, default_collate, get_worker_info
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2.functional import resized_crop

from ssl_norms.data.augment import BatchedSimCLRAugmentation, batch_generator, random_crop_boxes
from ssl_norms.data.image_folder import read_image, resize_image
from ssl_norms.threads import one_cpu_thread


class StackedItems(Sequence):
    """A batch dict built whole, seen as its per-sample items (each made when it is read): a default
    collate stacks them back, :func:`collate_stacked` hands the batch on without that copy."""

    def __init__(self, batch: dict) -> None:
        self.batch = batch

    def __len__(self) -> int:
        return len(self.batch["label"])

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        batch = self.batch
        if "views" in batch:
            return {"views": [v[i] for v in batch["views"]], "label": batch["label"][i], "index": batch["index"][i]}
        key = "image" if "image" in batch else "images"
        return {key: batch[key][i], "label": batch["label"][i], "index": batch["index"][i]}


def collate_stacked(items):
    """Collate function of datasets returning :class:`StackedItems`: the batch as built; other items stacked."""
    return items.batch if isinstance(items, StackedItems) else default_collate(items)


class LabelledItems(Dataset):
    """Shared bookkeeping: labels of the full dataset and the positions this dataset exposes."""

    def __init__(self, labels: Tensor, indices: Tensor | None) -> None:
        self.labels = torch.as_tensor(labels).long()
        self.indices = torch.arange(len(self.labels)) if indices is None else torch.as_tensor(indices).long()

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def targets(self) -> Tensor:
        return self.labels[self.indices]

    def _positions(self, items) -> Tensor:
        return self.indices[torch.as_tensor(items, dtype=torch.long)]

    def subset(self, positions: Tensor) -> "LabelledItems":
        """The same dataset restricted to items ``positions`` (shares the image storage)."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.indices = self.indices[torch.as_tensor(positions, dtype=torch.long)]
        return clone


class InMemoryImages(LabelledItems):
    """Decoded uint8 images (N, C, H, W) held in memory, with labels, one item at a time.

    ``num_views=None`` gives evaluation items (one transformed image); an int gives that many
    independently augmented views per item (torchvision's per-sample pipeline; training sets use
    the faster :class:`AugmentedViews`). ``indices`` restricts the dataset to those positions
    (a split or subset) without copying the images.
    """

    def __init__(self, images: Tensor, labels: Tensor, transform: Callable[[Tensor], Tensor], num_views: int | None = None, indices: Tensor | None = None) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"InMemoryImages needs uint8 (N, C, H, W) images, got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        super().__init__(labels, indices)
        self.images, self.transform, self.num_views = images, transform, num_views

    def __getitem__(self, i: int) -> dict:
        j = int(self.indices[i])
        image, label = self.images[j], self.labels[j]
        if self.num_views is None:
            return {"image": self.transform(image), "label": label, "index": j}
        return {"views": [self.transform(image) for _ in range(self.num_views)], "label": label, "index": j}


class ImageFiles(LabelledItems):
    """Evaluation items decoded from image files on the fly (sets too large to hold in memory).

    Each file is decoded, resized (shorter side to ``resize``, then a central ``size`` square) and
    passed through ``transform`` (scaling and normalisation). An unreadable file raises an error
    naming it; with ``on_corrupt="skip"`` the next readable item stands in and the file is counted
    in ``skipped`` (and warned about once).
    """

    def __init__(
        self, files: list[Path], labels: Tensor, transform: Callable[[Tensor], Tensor], size: int, resize: int | None = None,
        interpolation: str = "bilinear", on_corrupt: str = "error", indices: Tensor | None = None,
    ) -> None:
        if len(files) != len(labels):
            raise ValueError(f"{len(files)} files but {len(labels)} labels")
        if on_corrupt not in ("error", "skip"):
            raise ValueError(f"on_corrupt must be 'error' or 'skip', got {on_corrupt!r}")
        super().__init__(labels, indices)
        self.decodes_files = True  # loaders give such sets workers
        self.files, self.transform, self.size = list(files), transform, size
        self.resize, self.interpolation, self.on_corrupt = resize or size, interpolation, on_corrupt
        self.skipped: set[Path] = set()

    def read(self, j: int, full: bool = False) -> tuple[Tensor, int]:
        """uint8 image of position ``j`` (resized and centre-cropped unless ``full``) and the position
        actually read (another one when ``j`` is unreadable and corrupt files are skipped)."""
        for attempt in range(len(self.files)):
            k = (j + attempt) % len(self.files)
            image = read_image(self.files[k], skip=self.on_corrupt == "skip")
            if image is not None:
                return (image if full else resize_image(image, self.resize, self.size, self.interpolation)), k
            if self.files[k] not in self.skipped:
                self.skipped.add(self.files[k])
                warnings.warn(f"skipped unreadable image file {self.files[k]} ({len(self.skipped)} skipped so far in this process)")
        raise ValueError(f"no readable image among the {len(self.files)} files starting at {self.files[0]}")

    def __getitem__(self, i: int) -> dict:
        j = int(self.indices[i])
        image, k = self.read(j)
        return {"image": self.transform(image), "label": self.labels[k], "index": k}


class AugmentedViews(LabelledItems):
    """Training items: ``num_views`` SimCLR views per image, augmented a whole batch at a time.

    ``source`` is a uint8 (N, C, H, W) tensor in memory or an :class:`ImageFiles` decoded on the fly.
    ``augment`` draws its random parameters per sample from a generator made for each batch by
    :func:`batch_generator` (distinct per DataLoader worker and per ``rank``, reproducible for a fixed
    seed). With ``crop_at_decode`` (file sources only) each view's random resized crop is taken from the
    full-resolution decoded image, the usual ImageNet pipeline; ``augment`` then skips its own crop.
    With ``raw=True`` the items are the un-augmented uint8 images (``{"images", "label", "index"}``)
    and the DataModule augments them on the device after the transfer.
    """

    def __init__(
        self, source: Tensor | ImageFiles, labels: Tensor, augment: BatchedSimCLRAugmentation, num_views: int = 2,
        indices: Tensor | None = None, crop_at_decode: bool = False, raw: bool = False,
    ) -> None:
        if num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {num_views}")
        if isinstance(source, Tensor) and (source.dtype != torch.uint8 or source.ndim != 4):
            raise ValueError(f"AugmentedViews needs uint8 (N, C, H, W) images, got {source.dtype} {tuple(source.shape)}")
        if crop_at_decode and (not isinstance(source, ImageFiles) or augment.crop or raw):
            raise ValueError("crop_at_decode needs an ImageFiles source, an augmentation without its own crop and raw=False")
        if len(source) != len(labels):
            raise ValueError(f"{len(source)} images but {len(labels)} labels")
        super().__init__(labels, indices)
        self.source, self.augment, self.num_views = source, augment, num_views
        self.crop_at_decode, self.raw = crop_at_decode, raw
        self.rank = 0  # set by the DataModule so every rank draws different augmentations

    @property
    def images(self) -> Tensor:
        if not isinstance(self.source, Tensor):
            raise AttributeError("images are decoded on the fly; this dataset holds files, not a tensor")
        return self.source

    def load(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """uint8 batch of ``positions`` and the positions actually read (skipped files are replaced)."""
        if isinstance(self.source, Tensor):
            return self.source[positions], positions
        read = [self.source.read(int(j)) for j in positions]
        return torch.stack([image for image, _ in read]), torch.tensor([k for _, k in read])

    def _cropped_views(self, positions: Tensor, generator: torch.Generator) -> tuple[list[Tensor], Tensor]:
        size, views, read_positions = self.augment.size, [[] for _ in range(self.num_views)], []
        for j in positions:
            image, k = self.source.read(int(j), full=True)
            read_positions.append(k)
            boxes = random_crop_boxes(self.num_views, image.shape[-2], image.shape[-1], self.augment.scale, self.augment.ratio, generator)
            for v, (top, left, h, w) in enumerate(boxes.tolist()):
                views[v].append(resized_crop(image, top, left, h, w, [size, size], interpolation=InterpolationMode(self.source.interpolation), antialias=True))
        return [torch.stack(v) for v in views], torch.tensor(read_positions)

    def batch(self, items: list[int]) -> dict:
        """The training batch of dataset items ``items`` as one dict of stacked tensors."""
        positions = self._positions(items)
        if self.raw:
            images, positions = self.load(positions)
            return {"images": images, "label": self.labels[positions], "index": positions}
        generator = batch_generator(self.rank)
        if self.crop_at_decode:
            crops, positions = self._cropped_views(positions, generator)
            views = [self.augment(c, generator) for c in crops]
        else:
            images, positions = self.load(positions)
            views = [self.augment(images, generator) for _ in range(self.num_views)]
        return {"views": views, "label": self.labels[positions], "index": positions}

    collate_fn = staticmethod(collate_stacked)  # the DataModules' loaders skip the restack

    def __getitems__(self, items: list[int]) -> StackedItems:
        if get_worker_info() is not None:
            return StackedItems(self.batch(items))
        with one_cpu_thread():  # in the training process (num_workers=0)
            return StackedItems(self.batch(items))

    def __getitem__(self, i: int) -> dict:
        return self.__getitems__([i])[0]

