"""``ssl-norms validate`` of a trained run: the run's own data settings, the offline linear probe on
cached features, and one checkpoint file per run. No file of the run changes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, TINY_DEMO, metric_values
from ssl_norms.analysis.loading import load_datamodule, load_model, read_run_config
from ssl_norms.callbacks.linear_probe import OfflineLinearProbe
from ssl_norms.cli import main
from ssl_norms.eval import linear_probe
from test_run_records import assert_untouched, file_hashes

PROBE = ["--trainer.callbacks+=ssl_norms.callbacks.linear_probe.OfflineLinearProbe", "--trainer.callbacks.max_iter", "100"]


@pytest.fixture(scope="module")
def subset_run(tmp_path_factory) -> Path:
    """A tiny demo run trained on a 256-sample subset of its 512 training samples."""
    run_dir = tmp_path_factory.mktemp("subset") / "run"
    main(["fit", *TINY_DEMO, "--data.init_args.max_train_samples", "256", "--run_dir", str(run_dir),
          "--trainer.enable_progress_bar", "false", "--trainer.precision", "32-true"])  # features compared in fp32
    return run_dir


def _validate(run: Path, *args: str) -> Path:
    """Validate the run's checkpoint with ``args``; returns the new validate folder."""
    before = set(run.iterdir())
    main(["validate", "--config", str(REPO / "configs" / "demo.yaml"), "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
          "--trainer.enable_progress_bar", "false", *args])
    (out,) = set(run.iterdir()) - before
    return out


def test_validate_takes_the_runs_data_settings_unless_the_command_line_sets_them(subset_run, capsys):
    before = file_hashes(subset_run)
    out = _validate(subset_run)  # demo.yaml alone would mean 8192 training samples, no subset
    assert_untouched(subset_run, before, new_folder=out.name)
    note = [line for line in capsys.readouterr().err.splitlines() if "data settings of" in line]
    assert note == [f"ssl-norms: data settings of {subset_run / 'config.yaml'}: train_samples=512, val_samples=256, "
                    "max_train_samples=256 (command-line --data.* settings override them)"]
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["init_args"]["max_train_samples"] == 256
    fit_knn = metric_values(subset_run / "metrics.csv", "knn/top1")[-1]
    assert metric_values(out / "metrics.csv", "knn/top1")[-1] == pytest.approx(fit_knn, abs=1e-6)

    out = _validate(subset_run, "--data.init_args.max_train_samples", "128")
    assert "max_train_samples" not in capsys.readouterr().err
    data = yaml.safe_load((out / "config.yaml").read_text())["data"]["init_args"]
    assert (data["max_train_samples"], data["train_samples"]) == (128, 512)


def test_offline_probe_in_validate_fits_on_cached_frozen_features(subset_run, tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_NORMS_CACHE", str(tmp_path / "cache"))
    before = file_hashes(subset_run)
    out = _validate(subset_run, *PROBE)
    assert_untouched(subset_run, before, new_folder=out.name)
    top1, top5 = (metric_values(out / "metrics.csv", f"linear/{k}")[-1] for k in ("top1", "top5"))

    model = load_model(subset_run / "checkpoints" / "last.ckpt")
    data = load_datamodule(read_run_config(subset_run / "config.yaml"))
    bank = list(data.bank_dataloader())
    with torch.no_grad():
        train_feats = torch.cat([model.backbone(batch["image"]) for batch in bank])
        val_feats = model.backbone(data.val_set.inputs)
    train_labels = torch.cat([batch["label"] for batch in bank])
    expected = linear_probe(train_feats, train_labels, val_feats, data.val_set.labels, 10, max_iter=100)
    assert len(train_feats) == 256  # the run's subset, not the configured full set
    assert (top1, top5) == (pytest.approx(expected["top1"], abs=1e-6), pytest.approx(expected["top5"], abs=1e-6))
    assert 0.3 < top1 <= top5  # 10 classes: well above chance

    (cached,) = (tmp_path / "cache" / "probe-features").iterdir()
    assert torch.allclose(torch.load(cached, weights_only=True)["train"][0], train_feats, atol=1e-5)

    def no_embedding(*args):
        raise AssertionError("the training set was embedded again")

    monkeypatch.setattr(OfflineLinearProbe, "_embed_training_set", no_embedding)
    again = _validate(subset_run, *PROBE)
    assert metric_values(again / "metrics.csv", "linear/top1")[-1] == top1


def test_the_cache_key_changes_with_any_weight_or_buffer_and_with_the_data(subset_run):
    model = load_model(subset_run / "checkpoints" / "last.ckpt")
    config = read_run_config(subset_run / "config.yaml")
    data = load_datamodule(config)
    key = OfflineLinearProbe._key(model, data)
    assert OfflineLinearProbe._key(model, load_datamodule(config)) == key
    assert OfflineLinearProbe._key(model, load_datamodule(config, max_train_samples=128)) != key
    model.backbone[2].running_mean[0] += 1e-3  # a BatchNorm statistic alone changes the features
    assert OfflineLinearProbe._key(model, data) != key


def test_a_configured_checkpoint_with_save_last_leaves_one_file(tmp_path):
    run_dir = tmp_path / "run"
    main(["fit", *TINY_DEMO, "--trainer.max_epochs", "1", "--run_dir", str(run_dir), "--trainer.enable_progress_bar", "false",
          "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint", "--trainer.callbacks.save_last", "true"])
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["last.ckpt"]


def test_command_line_data_keys_names_what_the_command_line_sets():
    from ssl_norms.cli import command_line_data_keys

    words = ["--config", "c.yaml", "--data.init_args.max_train_samples", "5", "--data.seed=3", "--data.init_args.imbalance.preset", "cifar10"]
    assert command_line_data_keys(words) == {"max_train_samples", "seed", "imbalance"}
    assert command_line_data_keys(["--data", "other.yaml"]) is None
    assert command_line_data_keys(["--data.class_path=ssl_norms.data.CIFAR10DataModule"]) is None
