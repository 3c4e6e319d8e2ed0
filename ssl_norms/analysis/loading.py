"""A trained run back in memory: its model, its DataModule, and the embeddings of a dataset."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from ssl_norms.data.base import SSLDataModule, seeded_subset
from ssl_norms.methods import SSLMethod
from ssl_norms.runs import CHECKPOINT_DIR, RunError, newest_checkpoint, note, read_checkpoint, run_dir_of


def read_run_config(path: str | Path) -> dict[str, Any]:
    """The ``config.yaml`` LightningCLI wrote into a run directory, as a plain dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no run config at {path}; pass --config <run_dir>/config.yaml")
    with open(path) as handle:
        config = yaml.safe_load(handle)
    if not isinstance(config, dict):
        raise ValueError(f"{path} is not a LightningCLI run config (expected a YAML mapping)")
    return config


def _import(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ValueError(f"cannot import {class_path!r}; is the package that defines it installed?") from None


def checkpoint_path(ckpt: str | Path) -> Path:
    """``ckpt`` itself, or for a run directory (or its ``checkpoints/`` folder) the checkpoint that
    continues the run: the one with the highest saved step, as ``fit --ckpt_path last`` picks it."""
    ckpt = Path(ckpt)
    if not ckpt.is_dir():
        return ckpt
    run_dir = ckpt.parent if ckpt.name == CHECKPOINT_DIR else ckpt
    newest = newest_checkpoint(run_dir)
    if newest is None:
        raise RunError(f"no readable checkpoint in {run_dir} (looked for {CHECKPOINT_DIR}/*.ckpt and hpc_ckpt_*.ckpt): "
                       "pass --ckpt FILE.ckpt or a run directory that holds one")
    note(f"analyzing {newest.path} (global step {newest.global_step})")
    return newest.path


def load_model(ckpt: str | Path, config: dict[str, Any] | None = None) -> SSLMethod:
    """The method of a checkpoint, on the CPU, in eval mode.

    The class is the ``_class_path`` LightningCLI stores in the checkpoint's hyperparameters, else
    the run config's ``model.class_path``; its saved hyperparameters rebuild the network."""
    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise FileNotFoundError(f"no checkpoint at {ckpt}; pass --ckpt <run_dir>/checkpoints/last.ckpt")
    hparams = read_checkpoint(ckpt).hparams  # plain data only: a checkpoint cannot run code
    class_path = hparams.get("_class_path") or ((config or {}).get("model") or {}).get("class_path")
    if not class_path:
        raise ValueError(f"{ckpt} does not name its model class; pass --config <run_dir>/config.yaml")
    cls = _import(class_path)
    if not (isinstance(cls, type) and issubclass(cls, SSLMethod)):
        raise ValueError(f"{class_path} is not an ssl_norms SSLMethod")
    model = cls.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    return model.eval()


def load_datamodule(config: dict[str, Any], root: str | Path | None = None, **overrides: Any) -> SSLDataModule:
    """The run's DataModule rebuilt from its config (``data.class_path`` / ``init_args``), set up.

    ``root`` replaces the data root of the run (else the run's root, else ``$SSL_NORMS_DATA``);
    ``overrides`` replace other init args (e.g. ``num_workers=0``)."""
    data = config.get("data") or {}
    if not data.get("class_path"):
        raise ValueError("the run config has no data.class_path; pass --config <run_dir>/config.yaml of a training run")
    cls = _import(data["class_path"])
    if not (isinstance(cls, type) and issubclass(cls, SSLDataModule)):
        raise ValueError(f"{data['class_path']} is not an ssl_norms SSLDataModule")
    init_args = dict(data.get("init_args") or {})
    if "augment_on" in init_args:
        init_args["augment_on"] = "workers"  # analyses read augmented views from the dataset itself
    if init_args.get("extra_eval_sets"):
        init_args["extra_eval_sets"] = []  # validation-time extras; the analyses load their own sets
    if root is not None:
        init_args["root"] = str(root)
    init_args.update(overrides)
    datamodule = cls(**init_args)
    datamodule.setup("validate")
    return datamodule


class FirstView(Dataset):
    """Training items ``{"views", "label", "index"}`` as evaluation items holding the first view.

    The paper's code took training-set embeddings from augmented views; ``--augmented`` uses this."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    @staticmethod
    def _first_view(item: dict) -> dict:
        return {"image": item["views"][0], "label": item["label"], "index": item["index"]}

    def __getitem__(self, i: int) -> dict:
        return self._first_view(self.dataset[i])

    def __getitems__(self, items: list[int]) -> list[dict]:
        # training sets may augment a whole batch at once; the DataLoader calls this when it exists
        getitems = getattr(self.dataset, "__getitems__", None)
        return [self._first_view(item) for item in (getitems(items) if getitems else [self.dataset[i] for i in items])]


def split_dataset(datamodule: SSLDataModule, split: str, augmented: bool = False) -> Dataset:
    """Evaluation items of ``split``: ``train`` (un-augmented training images, or the first augmented
    view with ``augmented``) or ``test`` (the validation images, never augmented)."""
    if split == "train":
        return FirstView(datamodule.train_set) if augmented else datamodule.bank_set
    if split == "test":
        if augmented:
            raise ValueError("--augmented applies to the training split only (test images are never augmented)")
        return datamodule.val_set
    raise ValueError(f"unknown split {split!r}; use 'train' or 'test'")


def limit_samples(dataset: Dataset, max_samples: int | None, seed: int = 0) -> Dataset:
    """A seeded random subset of at most ``max_samples`` items (the whole dataset when None)."""
    if max_samples is None or max_samples >= len(dataset):
        return dataset
    return Subset(dataset, seeded_subset(len(dataset), max_samples, seed).tolist())


@torch.no_grad()
def embed_dataset(model: SSLMethod, dataset: Dataset, batch_size: int = 256, num_workers: int = 0) -> dict[str, Tensor]:
    """``{"features", "embeddings", "labels", "index"}`` of every evaluation item, in dataset order,
    plus ``"projector"`` (the projector output, the space the paper's released figures use) for
    methods with a ``projector``.

    Uses ``model.embed`` (backbone features and loss-space embeddings) in eval mode without
    gradients; the model's previous train/eval mode is restored afterwards."""
    if len(dataset) == 0:
        raise ValueError("cannot embed an empty dataset")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    parts: dict[str, list[Tensor]] = {"features": [], "embeddings": [], "labels": [], "index": []}
    projector = getattr(model, "projector", None)
    if projector is not None:
        parts["projector"] = []
    try:
        for batch in loader:
            if "image" not in batch:
                raise ValueError("embed_dataset needs evaluation items {'image', 'label', 'index'}; wrap training sets in FirstView")
            features, embeddings = model.embed(batch["image"].to(device))
            parts["features"].append(features.float().cpu())
            parts["embeddings"].append(embeddings.float().cpu())
            if projector is not None:
                parts["projector"].append(projector(features).float().cpu())
            parts["labels"].append(torch.as_tensor(batch["label"]).long())
            parts["index"].append(torch.as_tensor(batch["index"]).long())
    finally:
        model.train(was_training)
    return {key: torch.cat(values) for key, values in parts.items()}


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def class_names(datamodule: SSLDataModule) -> list[str]:
    """Readable class names: the DataModule's own ``class_names`` when it has them, CIFAR-10's for
    a 10-class CIFAR DataModule, else the class numbers."""
    from ssl_norms.data import CIFAR10DataModule

    names = getattr(datamodule, "class_names", None)
    if names:
        return list(names)
    if type(datamodule) is CIFAR10DataModule:
        return list(CIFAR10_CLASSES)
    return [str(c) for c in range(datamodule.num_classes)]


class TrainedRun:
    """A trained model with its DataModule and the embeddings the analyses share (computed once).

    Args:
        model / datamodule: the method and its (set-up) DataModule.
        run_dir / config: where the run lives and its ``config.yaml`` (for W&B and labels).
        batch_size: embedding batch.
        max_samples: seeded subset of each split (None = all).
        seed: seed of that subset and of the augmentations with ``augmented``.
        augmented: training-split embeddings from the first augmented view instead of the plain image.
    """

    def __init__(
        self,
        model: SSLMethod,
        datamodule: SSLDataModule,
        run_dir: Path | None = None,
        config: dict[str, Any] | None = None,
        batch_size: int = 256,
        max_samples: int | None = None,
        seed: int = 0,
        augmented: bool = False,
    ) -> None:
        if batch_size < 1 or (max_samples is not None and max_samples < 2):
            raise ValueError(f"need batch_size >= 1 and max_samples >= 2, got {batch_size} and {max_samples}")
        self.model, self.datamodule, self.run_dir, self.config = model.eval(), datamodule, run_dir, config
        self.batch_size, self.max_samples, self.seed, self.augmented = batch_size, max_samples, seed, augmented
        self._embedded: dict[str, dict[str, Tensor]] = {}

    @classmethod
    def load(
        cls, ckpt: str | Path, config_path: str | Path | None = None, data_root: str | Path | None = None,
        device: str | None = None, **kwargs: Any,
    ) -> "TrainedRun":
        """A run from its checkpoint (or run directory: :func:`checkpoint_path`); the DataModule comes
        from ``config_path`` (default ``<run_dir>/config.yaml``) with ``data_root`` replacing the data
        root when given. The model runs on ``device`` (default: CUDA when available, else the CPU)."""
        ckpt = checkpoint_path(ckpt)
        run_dir = run_dir_of(ckpt)
        config = read_run_config(config_path or run_dir / "config.yaml")
        model = load_model(ckpt, config).to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        datamodule = load_datamodule(config, data_root, num_workers=0)
        return cls(model, datamodule, run_dir=run_dir, config=config, **kwargs)

    def dataset(self, split: str) -> Dataset:
        """Evaluation items of ``split`` (``train``/``test``), subset to ``max_samples``."""
        return limit_samples(split_dataset(self.datamodule, split, self.augmented and split == "train"), self.max_samples, self.seed)

    def embeddings(self, split: str) -> dict[str, Tensor]:
        """:func:`embed_dataset` of :meth:`dataset`, computed once per split."""
        if split not in self._embedded:
            dataset = self.dataset(split)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)  # augmented views are reproducible
                self._embedded[split] = embed_dataset(self.model, dataset, self.batch_size)
        return self._embedded[split]

    @property
    def class_names(self) -> list[str]:
        return class_names(self.datamodule)
