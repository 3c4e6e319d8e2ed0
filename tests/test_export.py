"""Getting representations out of a run: ``ssl-norms predict`` (EmbeddingWriter) and ``ssl-norms export``
(the backbone's state_dict and its architecture recipe). Neither changes a file of the run."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torchvision

from conftest import TINY_DEMO, as_launched_rank, leave_process_group, spawn_ranks
from ssl_norms.analysis.loading import load_datamodule, load_model, read_run_config
from ssl_norms.callbacks.prediction_writer import EmbeddingWriter
from ssl_norms.cli import main
from ssl_norms.data import SyntheticLatentClasses
from ssl_norms.methods import SimCLR
from ssl_norms.models import build_backbone
from test_run_records import assert_untouched, file_hashes


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished two-epoch run of the tiny demo."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    main(["fit", *TINY_DEMO, "--run_dir", str(run_dir), "--trainer.enable_progress_bar", "false",
          "--trainer.precision", "32-true"])  # compared with an fp32 forward below; predict keeps the run's precision
    return run_dir


def _reference(run: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features, embeddings, labels) of the run's validation set, by the checkpoint's model."""
    model = load_model(run / "checkpoints" / "last.ckpt")
    data = load_datamodule(read_run_config(run / "config.yaml"))
    with torch.no_grad():
        features, embeddings = model.embed(data.val_set.inputs)
    return features, embeddings, data.val_set.labels


# ---- predict ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra, suffix", [([], "npz"), (["--trainer.callbacks+=ssl_norms.callbacks.prediction_writer.EmbeddingWriter",
                                                           "--trainer.callbacks.format", "pt"], "pt")])
def test_predict_writes_every_sample_once_and_prints_the_path(finished, extra, suffix, capsys):
    before = file_hashes(finished)
    main(["predict", *TINY_DEMO, "--ckpt_path", str(finished / "checkpoints" / "last.ckpt"), "--trainer.enable_progress_bar", "false", *extra])
    (out,) = [p for p in finished.iterdir() if p.name.startswith("predict-")]
    try:
        assert_untouched(finished, before, new_folder=out.name)
        path = out / f"predictions.{suffix}"
        assert f"predictions: {path} (256 samples" in capsys.readouterr().out
        saved = dict(np.load(path)) if suffix == "npz" else torch.load(path, weights_only=True)
        saved = {key: torch.as_tensor(value) for key, value in saved.items()}
        features, embeddings, labels = _reference(finished)
        assert torch.equal(saved["indices"], torch.arange(256))
        assert torch.allclose(saved["embeddings"], embeddings, atol=1e-5)
        assert torch.allclose(saved["features"], features, atol=1e-5)
        assert torch.allclose(saved["norms"], embeddings.norm(dim=1), atol=1e-5)
        assert torch.equal(saved["labels"], labels)
    finally:
        for path in out.iterdir():
            path.unlink()
        out.rmdir()


def _ddp_predict(rank: int, port: int, out_dir: str) -> None:
    as_launched_rank(rank, port)
    L.seed_everything(0, verbose=False)
    model = SimCLR(backbone="mlp", input_dim=64, mlp_hidden_dims=[32], projector_dims=[16], warmup_epochs=0)
    trainer = L.Trainer(strategy="ddp", accelerator="cpu", devices=2, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[EmbeddingWriter(output_dir=out_dir)])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.predict(model, SyntheticLatentClasses(num_classes=4, train_samples=64, val_samples=21, eval_batch_size=4),
                        return_predictions=False)
    if rank == 0:
        torch.save(model.state_dict(), Path(out_dir) / "model.pt")
    leave_process_group()


def test_predict_under_two_process_ddp_writes_one_file_with_every_sample_once(tmp_path):
    spawn_ranks(_ddp_predict, str(tmp_path), world_size=2, timeout_s=180)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "predictions.npz"]
    saved = np.load(tmp_path / "predictions.npz")
    assert saved["indices"].tolist() == list(range(21))  # 21 rows on 2 ranks: the sampler's padding is dropped
    model = SimCLR(backbone="mlp", input_dim=64, mlp_hidden_dims=[32], projector_dims=[16], warmup_epochs=0)
    model.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    data = SyntheticLatentClasses(num_classes=4, train_samples=64, val_samples=21)
    data.setup("predict")
    with torch.no_grad():
        _, embeddings = model.eval().embed(data.val_set.inputs)
    assert np.allclose(saved["embeddings"], embeddings.numpy(), atol=1e-5)
    assert saved["labels"].tolist() == data.val_set.labels.tolist()


# ---- export ----------------------------------------------------------------------------------------

def _checkpoint(path: Path, **hparams) -> SimCLR:
    """A Lightning-format checkpoint of a SimCLR model (randomised BatchNorm statistics, so eval-mode
    outputs depend on every buffer)."""
    torch.manual_seed(0)
    model = SimCLR(projector_dims=[16], **hparams)
    for module in model.backbone.modules():
        if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "global_step": 3, "pytorch-lightning_version": L.__version__,
                "hyper_parameters": {**model.hparams, "_class_path": "ssl_norms.methods.SimCLR",
                                     "_instantiator": "lightning.pytorch.cli.instantiate_module"}}, path)
    return model.eval()


def test_export_reloads_into_torchvision_resnet18_with_the_cifar_stem(tmp_path, capsys):
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    model = _checkpoint(ckpt, backbone="resnet18", cifar_stem=True)
    before = file_hashes(tmp_path / "run")
    main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "backbone.pt")])
    assert_untouched(tmp_path / "run", before)
    assert capsys.readouterr().out.splitlines()[-2:] == [f"backbone: {tmp_path / 'backbone.pt'}", f"architecture: {tmp_path / 'backbone.json'}"]
    recipe = json.loads((tmp_path / "backbone.json").read_text())
    assert recipe["feature_dim"] == 512 and "conv1 = torch.nn.Conv2d(3, 64, kernel_size=3" in recipe["torchvision"]
    fresh = torchvision.models.resnet18()  # the recipe, spelled out
    fresh.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    fresh.maxpool = torch.nn.Identity()
    fresh.fc = torch.nn.Identity()
    fresh.load_state_dict(torch.load(tmp_path / "backbone.pt", weights_only=True))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), model.backbone(x))


def test_export_of_a_narrow_resnet_reloads_through_the_recorded_build(tmp_path):
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    model = _checkpoint(ckpt, backbone="resnet18", cifar_stem=True, backbone_width=8)
    main(["export", "--ckpt", str(tmp_path / "run"), "--out", str(tmp_path / "out" / "backbone.pt")])
    recipe = json.loads((tmp_path / "out" / "backbone.json").read_text())
    assert recipe["torchvision"] is None and recipe["build"]["function"] == "ssl_norms.models.build_backbone"
    fresh, dim = build_backbone(**recipe["build"]["kwargs"])
    fresh.load_state_dict(torch.load(tmp_path / "out" / "backbone.pt", weights_only=True))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert dim == recipe["feature_dim"] == 64 and torch.equal(fresh.eval()(x), model.backbone(x))


def test_export_never_overwrites_without_force(tmp_path, capsys):
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    _checkpoint(ckpt, backbone="mlp", input_dim=8, mlp_hidden_dims=[8])
    out = tmp_path / "backbone.pt"
    out.write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--ckpt", str(ckpt), "--out", str(out)])
    assert exit_info.value.code == 2 and out.read_text() == "mine"
    assert capsys.readouterr().err.strip().endswith(f"{out} exist; pass --force to replace them")
    with pytest.raises(SystemExit):
        main(["export", "--ckpt", str(ckpt), "--out", str(ckpt), "--force"])
    assert "would replace the checkpoint it exports" in capsys.readouterr().err
    main(["export", "--ckpt", str(ckpt), "--out", str(out), "--force"])
    assert set(torch.load(out, weights_only=True)) == {"1.weight", "1.bias", "2.weight", "2.bias", "2.running_mean", "2.running_var", "2.num_batches_tracked"}
