"""Scale-invariant layers (those feeding a normalisation layer) and WeightNormMonitor."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from conftest import metric_values
from ssl_norms.callbacks import CutInit, WeightNormMonitor
from ssl_norms.data import SyntheticLatentClasses
from ssl_norms.methods import SimCLR, SimSiam
from ssl_norms.models.scale_invariance import layer_group, normalised_layers


def test_resnet_convs_feed_batchnorm_and_the_heads_last_layers_do_not():
    simclr = SimCLR(backbone_width=4, projector_dims=[16, 16, 8])
    fed = normalised_layers(simclr)
    convs = [n for n, m in simclr.backbone.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 20 and all(fed[f"backbone.{n}"] for n in convs)  # 17 convs + 3 downsample convs
    assert [n for n, v in fed.items() if not v] == ["projector.6"]
    simsiam = SimSiam(backbone_width=4, projector_dims=[16, 16, 16], predictor_hidden_dims=[4])
    assert [n for n, v in normalised_layers(simsiam).items() if not v] == ["predictor.3"]  # projector ends in BN
    assert simsiam.training  # mode restored


def test_scale_invariance_is_real_dividing_a_bn_fed_layer_leaves_the_output_unchanged():
    model = SimCLR(backbone_width=4, projector_dims=[16, 16, 8])
    x = torch.randn(4, 3, 32, 32)
    before = model.embed(x)[1]
    with torch.no_grad():
        model.backbone.layer2[0].conv1.weight.div_(7.0)  # feeds bn1: same output in train-mode BN
    assert torch.allclose(model.embed(x)[1], before, atol=1e-3)  # up to BatchNorm's eps


@pytest.mark.parametrize("name, group", [
    ("backbone.conv1.weight", "backbone.stem"), ("backbone.conv1", "backbone.stem"), ("backbone.1.weight", "backbone"),
    ("backbone.layer3.1.conv2.weight", "backbone.layer3"),
    ("projector.6.weight", "projector"), ("predictor.0.bias", "predictor"),
])
def test_layer_group(name, group):
    assert layer_group(name) == group


def fit_with_monitor(tmp_path, callbacks):
    torch.manual_seed(0)
    model = SimCLR(backbone="mlp", input_dim=16, mlp_hidden_dims=[32], projector_dims=[32, 8], warmup_epochs=0, lr=0.1, min_lr=0.1)  # a constant lr
    data = SyntheticLatentClasses(num_classes=4, latent_dim=8, ambient_dim=16, train_samples=128, val_samples=32,
                                  batch_size=32, view_mode="noise", seed=0)
    trainer = L.Trainer(accelerator="cpu", max_steps=4, log_every_n_steps=1, logger=CSVLogger(tmp_path, name="", version=""),
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[*callbacks, WeightNormMonitor()])
    trainer.fit(model, data)
    return tmp_path / "metrics.csv", model


def test_weight_norm_monitor_logs_norms_and_effective_lr_per_group(tmp_path):
    csv, model = fit_with_monitor(tmp_path / "default", [])
    norms = metric_values(csv, "weights/backbone/norm")
    assert len(norms) == 4
    layer = model.backbone[1]
    final = (layer.weight.pow(2).sum() + layer.bias.pow(2).sum()).item()
    assert norms[-1] == pytest.approx(final ** 0.5, rel=1e-5)
    assert metric_values(csv, "weights/backbone/eff_lr")[-1] == pytest.approx(0.1 / final, rel=1e-4)
    assert len(metric_values(csv, "weights/projector/free_norm")) == 4  # the last Linear and the BN affine
    # cut-init divides the scale-invariant weights by c: their effective lr grows by about c^2
    cut_csv, _ = fit_with_monitor(tmp_path / "cut", [CutInit(3.0)])
    ratio = metric_values(cut_csv, "weights/backbone/eff_lr")[0] / metric_values(csv, "weights/backbone/eff_lr")[0]
    assert 6 < ratio < 12
