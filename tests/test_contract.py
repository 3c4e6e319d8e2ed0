"""The exposure contract (``ssl_norms.contract``) on every method ``ssl_norms.methods`` exports, found
by enumeration so a new method is covered without editing this file: view counts accepted or
refused in one line, one loss-space embedding per view with positives aligned by row, and the
typed training and evaluation outputs."""

from __future__ import annotations

import inspect
import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

import ssl_norms.methods as methods
from ssl_norms.contract import EmbeddedBatch, SSLStep
from ssl_norms.methods import SSLMethod
from test_interventions import AMBIENT_DIM, tiny_method

METHODS = sorted(
    {obj for obj in vars(methods).values() if isinstance(obj, type) and issubclass(obj, SSLMethod) and obj is not SSLMethod},
    key=lambda cls: cls.__name__,
)
BATCH = 8


def accepts(cls: type[SSLMethod], count: int) -> bool:
    fewest, most = cls.accepted_views
    return fewest <= count and (most is None or count <= most)


def permuted_views(count: int) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """One batch of images and ``count`` views of it, view k with its rows permuted by ``perms[k]``
    (view 0 unpermuted), so each view's embeddings must follow its own rows."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(BATCH, AMBIENT_DIM, generator=g)
    perms = [torch.arange(BATCH)] + [torch.randperm(BATCH, generator=g) for _ in range(count - 1)]
    return images, [images[p] for p in perms], perms


class Outputs(Callback):
    def __init__(self) -> None:
        self.train, self.validation = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.train.append(outputs)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.validation.append(outputs)


def loader(batch: dict) -> DataLoader:
    return DataLoader([batch], batch_size=None)  # the ready batch, unchanged


def trainer(callbacks) -> L.Trainer:
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, max_steps=1, callbacks=callbacks)


@pytest.mark.parametrize("count", [1, 2, 3, 4])
@pytest.mark.parametrize("method", METHODS, ids=lambda cls: cls.__name__)
def test_view_counts_train_one_step_or_are_refused_in_one_line(method, count):
    L.seed_everything(0)
    model = tiny_method(method)
    images, views, perms = permuted_views(count)
    batch = {"views": views, "label": torch.zeros(BATCH, dtype=torch.long), "index": torch.arange(BATCH)}
    if not accepts(method, count):
        forwards = []
        model.backbone.register_forward_pre_hook(lambda module, args: forwards.append(1))
        with pytest.raises(ValueError, match=rf"^{method.__name__} .* views, got {count}: set --data.init_args.num_views \S") as err:
            model.training_step(batch, 0)
        assert "\n" not in str(err.value) and not forwards  # one line, before any computation
        return

    outputs = Outputs()
    trainer([outputs]).fit(model, train_dataloaders=loader(batch))
    (out,) = outputs.train
    step = out["ssl"]
    assert isinstance(step, SSLStep) and math.isfinite(out["loss"].item())
    assert len(step.features) == len(step.embeddings) == count
    assert all(f.shape == step.features[0].shape and f.shape[0] == BATCH for f in step.features)
    first = step.embeddings[0]
    assert first.ndim == 2 and first.shape[0] == BATCH and not torch.allclose(first[0], first[1])
    for embedding, perm in zip(step.embeddings, perms):  # row i of view k is image perms[k][i]
        torch.testing.assert_close(embedding, first[perm], rtol=1e-4, atol=1e-5)


def test_every_method_refuses_a_single_view_and_simclr_three():
    """No loss here has a positive pair with one view; SimCLR's InfoNCE pairs exactly two (no mixing of 3)."""
    assert not any(accepts(cls, 1) for cls in METHODS)
    assert not accepts(methods.SimCLR, 3)


@pytest.mark.parametrize("method", METHODS, ids=lambda cls: cls.__name__)
def test_evaluation_outputs_are_embedded_batches(method):
    L.seed_everything(0)
    model = tiny_method(method)
    images, _, _ = permuted_views(1)
    batch = {"image": images, "label": torch.arange(BATCH) % 3, "index": torch.arange(BATCH) + 100}
    outputs = Outputs()
    trainer([outputs]).validate(model, dataloaders=loader(batch), verbose=False)
    (predicted,) = trainer([]).predict(model, dataloaders=loader(batch))
    features, embeddings = model.eval().embed(images)
    for out in (outputs.validation[0], predicted):
        assert isinstance(out, EmbeddedBatch)
        torch.testing.assert_close(out.features, features)
        torch.testing.assert_close(out.embeddings, embeddings)
        assert torch.equal(out.label, batch["label"]) and torch.equal(out.index, batch["index"])


def layer_dims_options(cls: type[SSLMethod]) -> list[str]:
    return [name for name in inspect.signature(cls.__init__).parameters if name.endswith("_dims") and name != "mlp_hidden_dims"]


@pytest.mark.parametrize("method", METHODS, ids=lambda cls: cls.__name__)
def test_zero_negative_or_missing_layer_widths_are_refused_naming_the_option(method):
    options = layer_dims_options(method)
    assert "projector_dims" in options
    for name in options:
        bad_values = [[0], [16, -3]] + ([] if name.endswith("_hidden_dims") else [[]])
        for bad in bad_values:
            with pytest.raises(ValueError, match=rf"^{name} must list"):
                tiny_method(method, **{name: bad})
