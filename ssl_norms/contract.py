"""The exposure contract: the only thing callbacks may know about an SSL method.

Methods (``ssl_norms.methods``, on the base class ``SSLMethod``) produce these outputs and
callbacks (``ssl_norms.callbacks``) read them; neither imports the other.

* Views: a method declares how many views per image its loss accepts (``accepted_views``);
  ``training_step`` refuses any other count with one line naming the fix, before any computation.
* Training: ``training_step`` returns ``{"loss": loss, "ssl": SSLStep(...)}``. Lightning hands that
  dict to every callback's ``on_train_batch_end`` as ``outputs`` (tensors detached).
  ``SSLStep.embeddings`` are the loss-space embeddings (one tensor per view, the embeddings the
  loss is computed from) and ``SSLStep.features`` the backbone features; row i of every view is
  the same image, so rows with equal index across views are the positive pairs.
* Interventions: every method passes the tensor its loss takes through ``loss_space`` right before
  the loss. A callback registers ``hook(z, norm_source=...) -> z`` in the method's
  ``loss_space_hooks``; ``norm_source`` is the loss-space embedding, which is ``z`` itself for
  every method but IsoLoss (its loss takes the projector output z, whose gradient is the gradient
  w.r.t. its embedding ``p = z W_p``). Hooks must keep the forward value of ``z``.
* Evaluation: ``validation_step``, ``test_step`` and ``predict_step`` return an ``EmbeddedBatch``
  of un-augmented images (the same tensors as ``method.embed(images)``).
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class SSLStep(NamedTuple):
    """One training step as callbacks see it (``outputs["ssl"]``)."""

    loss: Tensor
    features: list[Tensor]  # backbone features, one (N, F) tensor per view
    embeddings: list[Tensor]  # loss-space embeddings, one (N, D) tensor per view


class EmbeddedBatch(NamedTuple):
    """One evaluation batch (validation, test, predict) of un-augmented images as callbacks see it."""

    features: Tensor  # backbone features (N, F)
    embeddings: Tensor  # loss-space embeddings (N, D)
    label: Tensor  # (N,)
    index: Tensor  # (N,) position in the full dataset
