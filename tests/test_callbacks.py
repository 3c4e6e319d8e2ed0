"""Callbacks read only the method contract: statistics, k-NN and the non-finite guard."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from ssl_norms.callbacks import EmbeddingNormMonitor, NonFiniteGuard, NonFiniteLossError, OnlineKNN, RepresentationMetrics
from ssl_norms.data import SyntheticLatentClasses
from ssl_norms.eval import knn_predict, knn_scores, rankme, uniformity
from ssl_norms.methods import SimCLR


def test_norm_statistics_match_direct_computation():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(50, 8, generator=g) * 3, torch.randn(50, 8, generator=g)
    z2[:10] = -z1[:10]  # ten pairs at angle pi
    z2[10:20] = z1[10:20] * 2  # ten pairs at angle 0
    feats = [torch.randn(50, 4, generator=g), torch.randn(50, 4, generator=g)]
    stats = EmbeddingNormMonitor(quantiles=(0.5,)).statistics([z1, z2], feats)
    norms = torch.cat([z1.norm(dim=1), z2.norm(dim=1)])
    assert stats["norm/mean"] == pytest.approx(norms.mean().item())
    assert stats["norm/std"] == pytest.approx(norms.std().item())
    assert stats["norm/max"] == pytest.approx(norms.max().item())
    assert stats["norm/q50"] == pytest.approx(norms.median().item(), rel=0.05)
    assert stats["features/norm_mean"] == pytest.approx(torch.cat(feats).norm(dim=1).mean().item())
    cos = F.cosine_similarity(z1, z2)
    assert stats["pairs/opposite_rate"] == pytest.approx((cos < 0).float().mean().item())
    assert (cos[:10] < 0).all() and (cos[10:20] > 0).all()


def _tiny_trainer(callbacks, **kwargs):
    return L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, callbacks=callbacks, **kwargs,
    )


def _tiny_model(**kwargs):
    return SimCLR(backbone="mlp", input_dim=64, mlp_hidden_dims=[64], projector_dims=[32], warmup_epochs=0, **kwargs)


def test_online_knn_equals_offline_knn_on_bank_and_val():
    data = SyntheticLatentClasses(num_classes=4, train_samples=512, val_samples=128, batch_size=64)
    model = _tiny_model()
    knn = OnlineKNN(k=10, temperature=0.1)
    trainer = _tiny_trainer([knn], max_epochs=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, data)
    assert not [w for w in caught if "single class" in str(w.message)]
    online = trainer.callback_metrics["knn/top1"].item()
    model.eval()
    with torch.no_grad():
        bank = model.backbone(data.bank_set.inputs)
        val = model.backbone(data.val_set.inputs)
    offline = (knn_predict(bank, data.bank_set.labels, val, 4, k=10) == data.val_set.labels).float().mean().item()
    assert online == pytest.approx(offline, abs=1e-6)
    assert online > 0.5  # 4 classes


def test_online_knn_logs_top5_and_both_spaces_equal_to_offline_knn():
    data = SyntheticLatentClasses(num_classes=8, train_samples=512, val_samples=128, batch_size=64)
    model = _tiny_model()
    trainer = _tiny_trainer([OnlineKNN(k=10, space=["features", "embeddings"])], max_epochs=1)
    trainer.fit(model, data)
    model.eval()
    with torch.no_grad():
        (bank_f, bank_z), (val_f, val_z) = model.embed(data.bank_set.inputs), model.embed(data.val_set.inputs)
    for prefix, bank, val in (("knn", bank_f, val_f), ("knn/embeddings", bank_z, val_z)):
        scores = knn_scores(bank, data.bank_set.labels, val, 8, k=10, search=torch.float32)
        top5 = (scores.topk(5).indices == data.val_set.labels[:, None]).any(1).float().mean().item()
        assert trainer.callback_metrics[f"{prefix}/top1"].item() == pytest.approx((scores.argmax(1) == data.val_set.labels).float().mean().item(), abs=1e-6)
        assert trainer.callback_metrics[f"{prefix}/top5"].item() == pytest.approx(top5, abs=1e-6)
    assert trainer.callback_metrics["knn/top5"] >= trainer.callback_metrics["knn/top1"]
    with pytest.raises(ValueError, match="distinct"):
        OnlineKNN(space=["features", "features"])


def test_representation_metrics_read_the_validation_outputs_and_training_pairs():
    data = SyntheticLatentClasses(num_classes=4, train_samples=256, val_samples=96, batch_size=64)
    model = _tiny_model()
    trainer = _tiny_trainer([RepresentationMetrics()], max_epochs=1)
    trainer.fit(model, data)
    model.eval()
    with torch.no_grad():
        features, embeddings = model.embed(data.val_set.inputs)
    metrics = trainer.callback_metrics
    assert metrics["repr/rankme_features"].item() == pytest.approx(rankme(features).item(), rel=1e-4)
    assert metrics["repr/rankme_embeddings"].item() == pytest.approx(rankme(embeddings).item(), rel=1e-4)
    assert metrics["repr/uniformity"].item() == pytest.approx(uniformity(embeddings).item(), abs=1e-4)
    assert 0 < metrics["repr/alignment"].item() < 4  # squared distance of unit vectors
    assert 1 <= metrics["repr/rankme_embeddings"].item() <= embeddings.shape[1]


def test_online_knn_warns_once_when_a_single_class_makes_it_trivial():
    data = SyntheticLatentClasses(num_classes=1, train_samples=128, val_samples=64, batch_size=64)
    trainer = _tiny_trainer([OnlineKNN(k=10)], max_epochs=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # a repeated warning must come from the callback, not be hidden by the filter
        trainer.fit(_tiny_model(), data)
    notes = [str(w.message) for w in caught if "single class" in str(w.message)]
    assert notes == ["OnlineKNN (knn/top1): the k-NN bank holds a single class (0): every prediction is that class, so the "
                     "k-NN accuracy is trivially 1.0 (the share of that class among the evaluated samples) and says nothing "
                     "about the embedding"]
    assert trainer.callback_metrics["knn/top1"].item() == 1.0


def test_bank_is_never_augmented():
    data = SyntheticLatentClasses(num_classes=3, train_samples=96, val_samples=30, batch_size=32)
    data.setup()
    first = next(iter(data.bank_dataloader()))
    again = next(iter(data.bank_dataloader()))
    assert torch.equal(first["image"], again["image"])
    assert torch.equal(first["image"], data.train_set.ambient[: len(first["image"])])


def test_monitor_logs_every_logging_step_only():
    data = SyntheticLatentClasses(num_classes=4, train_samples=256, val_samples=64, batch_size=32)
    seen = []

    class Spy(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append("norm/mean" in trainer.callback_metrics)

    trainer = _tiny_trainer([EmbeddingNormMonitor(), Spy()], max_steps=8, log_every_n_steps=4, limit_val_batches=0)
    trainer.fit(_tiny_model(), data)
    assert "lr/effective" in trainer.callback_metrics and "pairs/opposite_rate" in trainer.callback_metrics


class ExplodingSimCLR(SimCLR):
    def ssl_step(self, views):
        step = super().ssl_step(views)
        if self.global_step >= 3:
            return step._replace(loss=step.loss * float("nan"))
        return step


def test_non_finite_guard_names_step_and_checkpoint(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    data = SyntheticLatentClasses(num_classes=4, train_samples=128, val_samples=32, batch_size=32)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=2)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, max_epochs=5,
                        limit_val_batches=0, callbacks=[checkpoint, NonFiniteGuard()])
    model = ExplodingSimCLR(backbone="mlp", input_dim=64, mlp_hidden_dims=[16], projector_dims=[8])
    with pytest.raises(NonFiniteLossError, match=r"global step 3 .*last good checkpoint: .*last\.ckpt"):
        trainer.fit(model, data)
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())
