"""EmbeddingWriter: what ``ssl-norms predict`` writes, every sample's representations in one file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from ssl_norms.contract import EmbeddedBatch
from ssl_norms.distributed import gather_unique

FORMATS = ("npz", "pt")


class EmbeddingWriter(BasePredictionWriter):
    """At the end of ``predict``, the outputs of every rank gathered, kept once per sample index and
    sorted by it, written by rank 0 to ``<output_dir>/predictions.<format>`` (replaced in one step):

    * ``embeddings`` (N, D): loss-space embeddings, whose norms the paper studies;
    * ``features`` (N, F): backbone features;
    * ``norms`` (N,): L2 norms of ``embeddings``;
    * ``labels``, ``indices`` (N,): label and position in the dataset of each row.

    With extra evaluation sets (several predict dataloaders) the keys of each further set are
    prefixed with its name, e.g. ``mnist_test/embeddings``. Load with ``numpy.load(path)`` (npz) or
    ``torch.load(path, weights_only=True)`` (pt). ``ssl-norms predict`` adds one writing npz into its
    ``predict-<timestamp>/`` folder unless a prediction writer is configured.

    Args:
        format: ``npz`` (numpy arrays) or ``pt`` (a dict of tensors).
        output_dir: default: the trainer's ``default_root_dir`` (the command's folder).
    """

    def __init__(self, format: Literal["npz", "pt"] = "npz", output_dir: str | None = None) -> None:
        if format not in FORMATS:
            raise ValueError(f"EmbeddingWriter format must be one of {', '.join(FORMATS)}, got {format!r}")
        super().__init__(write_interval="epoch")
        self.format, self.output_dir = format, output_dir
        self.path: Path | None = None  # the file written

    def write_on_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Any, batch_indices: Any) -> None:
        per_set = predictions if predictions and isinstance(predictions[0], list) else [predictions]
        names = getattr(trainer.datamodule, "eval_set_names", None) or [f"set{i}" for i in range(len(per_set))]
        arrays: dict[str, torch.Tensor] = {}
        for position, batches in enumerate(per_set):
            prefix = f"{names[position]}/" if position else ""
            for key, value in self._gather(pl_module, batches).items():
                arrays[prefix + key] = value
        if not trainer.is_global_zero:
            return
        self.path = Path(self.output_dir or trainer.default_root_dir) / f"predictions.{self.format}"
        self._save(arrays)
        print(f"predictions: {self.path} ({len(arrays['indices'])} samples: {', '.join(arrays)})", flush=True)

    @staticmethod
    def _gather(pl_module: L.LightningModule, batches: list[EmbeddedBatch]) -> dict[str, torch.Tensor]:
        # collectives need the tensors on the module's device; Lightning keeps predictions on the CPU
        columns = [torch.cat(column).to(pl_module.device) for column in zip(*((b.index, b.embeddings.float(), b.features.float(), b.label) for b in batches))]
        index, embeddings, features, labels = (t.cpu() for t in gather_unique(pl_module, *columns))
        return {"embeddings": embeddings, "features": features, "norms": embeddings.norm(dim=1), "labels": labels, "indices": index}

    def _save(self, arrays: dict[str, torch.Tensor]) -> None:
        temp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with open(temp, "wb") as handle:
                if self.format == "npz":
                    np.savez(handle, **{key: value.numpy() for key, value in arrays.items()})
                else:
                    torch.save(arrays, handle)
            os.replace(temp, self.path)
        finally:
            temp.unlink(missing_ok=True)
