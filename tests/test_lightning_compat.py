"""The Lightning internals of ssl_norms.lightning_compat, checked on a real Trainer with the meaning
the callbacks and loggers rely on: a Lightning upgrade that moves or changes one fails here."""

from __future__ import annotations

import csv
import inspect
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from torch.utils.data import DataLoader, TensorDataset

from ssl_norms import lightning_compat as compat
from ssl_norms.data.resumable import ResumableDataLoader, ResumableLoader


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        self.log("step_seen", float(self.trainer.global_step), on_step=True, on_epoch=False)
        return self.layer(batch[0]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Recorder(L.Callback):
    """What the fenced internals say at the moments the project reads them."""

    def __init__(self, save_at: tuple[int, int] | None = None, path=None) -> None:
        self.save_at, self.path = save_at, path
        self.first_fetch: list[tuple[int, int]] = []  # (epoch, batches ready) at an epoch's first batch
        self.processed: list[tuple[int, int]] = []  # (batch index, batches processed) at each batch end
        self.logging_steps: list[int] = []

    def setup(self, trainer, pl_module, stage):
        self.trainer = trainer

    def on_train_start(self, trainer, pl_module):
        trainer.train_dataloader.epoch_start = lambda: self.first_fetch.append(
            (trainer.current_epoch, compat.epoch_batches_ready(trainer))) or 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.processed.append((batch_idx, compat.epoch_batches_processed(trainer)))
        if compat.is_logging_step(trainer):
            self.logging_steps.append(trainer.global_step)
        if self.save_at == (trainer.current_epoch, batch_idx):
            trainer.save_checkpoint(self.path)


def _fit(tmp_path, recorder, max_epochs, ckpt_path=None, logger=False):
    loader = ResumableDataLoader(TensorDataset(torch.randn(8, 2)), batch_size=2)  # 4 batches per epoch
    trainer = L.Trainer(max_epochs=max_epochs, log_every_n_steps=3, callbacks=[recorder], logger=logger,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.fit(Tiny(), loader, ckpt_path=ckpt_path)
    return trainer


def test_logging_step_is_where_lightning_logs(tmp_path):
    recorder = Recorder()
    _fit(tmp_path, recorder, max_epochs=2, logger=CSVLogger(tmp_path, name="", version=""))
    with open(tmp_path / "metrics.csv", newline="") as handle:
        logged = [int(float(row["step_seen"])) + 1 for row in csv.DictReader(handle) if row.get("step_seen")]
    assert recorder.logging_steps == logged == [3, 6]


def test_with_accumulation_the_logging_step_is_the_micro_batch_lightning_writes(tmp_path):
    class Accumulating(Tiny):
        def training_step(self, batch, batch_idx):
            self.log("batch_seen", float(batch_idx), on_step=True, on_epoch=False)
            return self.layer(batch[0]).sum()

    logging_batches = []

    class BatchRecorder(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if compat.is_logging_step(trainer):
                logging_batches.append(batch_idx)

    loader = DataLoader(TensorDataset(torch.randn(10, 2)), batch_size=2)  # 5 micro-batches: windows of 2, 2, 1
    trainer = L.Trainer(max_epochs=1, accumulate_grad_batches=2, log_every_n_steps=1, callbacks=[BatchRecorder()],
                        logger=CSVLogger(tmp_path, name="", version=""), enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(Accumulating(), loader)
    with open(tmp_path / "metrics.csv", newline="") as handle:
        written = [int(float(row["batch_seen"])) for row in csv.DictReader(handle) if row.get("batch_seen")]
    assert logging_batches == written == [1, 3, 4]  # each window's last micro-batch, once per optimizer step


def test_a_changed_log_every_n_steps_applies_from_the_next_step(tmp_path):
    class Shorten(Recorder):
        def on_train_start(self, trainer, pl_module):
            compat.set_log_every_n_steps(trainer, 2)

    recorder = Shorten()
    _fit(tmp_path, recorder, max_epochs=2, logger=CSVLogger(tmp_path, name="", version=""))
    with open(tmp_path / "metrics.csv", newline="") as handle:
        logged = [int(float(row["step_seen"])) + 1 for row in csv.DictReader(handle) if row.get("step_seen")]
    assert recorder.logging_steps == logged == [2, 4, 6, 8]  # configured 3 would log 3 and 6
    with pytest.raises(AttributeError):
        compat.set_log_every_n_steps(object(), 2)


def test_batch_progress_counts_the_epoch_and_survives_a_mid_epoch_resume(tmp_path):
    first = Recorder(save_at=(0, 2), path=tmp_path / "mid.ckpt")
    _fit(tmp_path, first, max_epochs=1)
    assert first.first_fetch == [(0, 0)]
    assert first.processed == [(0, 1), (1, 2), (2, 3), (3, 4)]
    resumed = Recorder()
    _fit(tmp_path, resumed, max_epochs=2, ckpt_path=tmp_path / "mid.ckpt")
    assert resumed.first_fetch == [(0, 3), (1, 0)]  # 3 batches of epoch 0 were done when it was saved
    assert resumed.processed == [(3, 4), (0, 1), (1, 2), (2, 3), (3, 4)]


def test_the_csv_writer_hooks_the_project_overrides(tmp_path):
    for name in compat.CSV_WRITER_OVERRIDES:
        assert callable(getattr(ExperimentWriter, name, None)), name
    (tmp_path / "metrics.csv").write_text("step,x\n0,1\n")
    calls = []

    class Writer(ExperimentWriter):
        def _check_log_dir_exists(self) -> None:
            calls.append("check")

    writer = Writer(log_dir=str(tmp_path))
    assert calls == ["check"]  # called when the writer is created: the override keeps an old metrics.csv
    for name in compat.CSV_WRITER_ATTRIBUTES:
        assert hasattr(writer, name), name
    assert writer.metrics_file_path.endswith("metrics.csv") and writer._fs.isfile(writer.metrics_file_path)
    writer.log_metrics({"x": 2.0}, step=1)
    assert writer.metrics == [{"x": 2.0, "step": 1}]
    assert list(inspect.signature(ExperimentWriter.save).parameters) == ["self"]
    logger = CSVLogger(tmp_path, name="", version="")
    for name in compat.CSV_LOGGER_ATTRIBUTES:
        assert hasattr(logger, name), name
    assert Path(logger.log_dir) == Path(logger.root_dir) == tmp_path  # name="" and version="": metrics.csv in the run dir


def test_the_resumable_loader_is_the_protocol_the_callback_looks_for():
    loader = ResumableDataLoader(TensorDataset(torch.arange(10.0)), batch_size=2)
    assert isinstance(loader, ResumableLoader) and not isinstance(DataLoader(TensorDataset(torch.arange(4.0))), ResumableLoader)
    assert [int(b[0][0]) for b in loader] == [0, 2, 4, 6, 8]
    loader.epoch_start = lambda: 3
    assert [int(b[0][0]) for b in loader] == [6, 8]


class TinyValidated(Tiny):
    def validation_step(self, batch, batch_idx):
        self.log("val_seen", float(self.trainer.global_step))


class ValidationStep(L.Callback):
    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_validation_end(self, trainer, pl_module):
        self.steps.append(compat.logger_step(trainer))


def test_logger_step_is_the_step_of_the_validation_metrics(tmp_path):
    recorder = ValidationStep()
    loader = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=2)  # 4 optimizer steps per epoch
    trainer = L.Trainer(max_epochs=2, callbacks=[recorder], logger=CSVLogger(tmp_path, name="", version=""), num_sanity_val_steps=0,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(TinyValidated(), loader, loader)
    with open(tmp_path / "metrics.csv", newline="") as handle:
        written = [int(row["step"]) for row in csv.DictReader(handle) if row.get("val_seen")]
    assert recorder.steps == written == [3, 7]


@pytest.mark.parametrize("name", ["is_logging_step", "epoch_batches_ready", "epoch_batches_processed", "logger_step"])
def test_every_fenced_reader_fails_loudly_when_its_internal_is_gone(name):
    with pytest.raises(AttributeError):
        getattr(compat, name)(object())


def test_wandb_logger_keeps_anonymous_only_when_the_user_set_it(tmp_path):
    from lightning.pytorch.loggers import WandbLogger

    unset = WandbLogger(save_dir=str(tmp_path), offline=True)
    assert "anonymous" in unset._wandb_init  # what makes wandb warn
    compat.drop_unset_wandb_anonymous(unset)
    assert "anonymous" not in unset._wandb_init
    chosen = WandbLogger(save_dir=str(tmp_path), offline=True, anonymous=True)
    compat.drop_unset_wandb_anonymous(chosen)
    assert chosen._wandb_init["anonymous"] == "allow"
