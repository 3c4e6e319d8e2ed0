"""Resume policy: what may differ between a checkpoint and the config that loads it, and making the
allowed differences real.

The config (file and command line) describes the model; a checkpoint given to ``fit``, ``validate``,
``test`` or ``predict`` must hold that model:

* **Refused**, with one line naming what differs: another method class, any other difference in the
  method's hyperparameters (backbone, widths, head dims, EMA and loss settings, weight-decay
  grouping ...), and any parameter whose name or shape differs from the configured model.
* **Applied** from the checkpoint's step on, and recorded in the run's ``run_record.yaml``
  (``changes``, with the global step): the settings in ``APPLIED_ON_RESUME``. Lightning restores the
  optimizer and lr scheduler from the checkpoint, which would keep the old lr, weight decay and
  momentum; :class:`ApplyResumeChanges` puts the configured ones back into every parameter group and
  the scheduler's base lrs. Warmup and ``min_lr`` act through the schedule function, which is always
  the configured one; the temperature is read by the loss at every step.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from ssl_norms.runs import CheckpointInfo, RunError, note

APPLIED_ON_RESUME = ("lr", "weight_decay", "momentum", "nesterov", "warmup_epochs", "warmup_start_factor", "min_lr", "temperature")
_BOOKKEEPING = ("_class_path", "_instantiator")  # what LightningCLI adds to saved hyperparameters


def plain(value: Any) -> Any:
    """Config values as plain dicts and lists (jsonargparse Namespaces, tuples), so equal settings compare equal."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict):
        return {key: plain(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def compare_with_checkpoint(checkpoint: CheckpointInfo, model_config: Any) -> dict[str, dict[str, Any]]:
    """The ``APPLIED_ON_RESUME`` settings that differ (``{key: {"from": old, "to": new}}``); raises
    :class:`RunError` naming every other difference. Settings the checkpoint does not record (written
    by an older version) are not compared; :func:`check_parameters` still checks the shapes."""
    saved = {key: plain(value) for key, value in checkpoint.hparams.items() if key not in _BOOKKEEPING}
    configured = plain(model_config.get("init_args") or {})
    saved_class = checkpoint.hparams.get("_class_path")
    if saved_class and saved_class != model_config.class_path:
        differences = [f"method {saved_class.rsplit('.', 1)[-1]} -> {model_config.class_path.rsplit('.', 1)[-1]}"]
    else:
        differences = [f"{key} {saved[key]} -> {configured[key]}" for key in sorted(saved.keys() & configured.keys())
                       if key not in APPLIED_ON_RESUME and saved[key] != configured[key]]
    if differences:
        raise RunError(
            f"{checkpoint.path} holds another model than the config asks for: {'; '.join(differences)}. "
            "A run's method and architecture are fixed: pass the run's own config.yaml, or start a new run"
        )
    return {key: {"from": saved[key], "to": configured[key]} for key in APPLIED_ON_RESUME
            if key in saved and key in configured and saved[key] != configured[key]}


def check_parameters(model: L.LightningModule, checkpoint: CheckpointInfo) -> None:
    """Raise :class:`RunError` unless the checkpoint holds exactly the model's parameters and buffers,
    with the same shapes (what Lightning's strict loading needs), before anything is written."""
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    saved = checkpoint.shapes
    problems = [f"{name} is {saved[name]} in the checkpoint, {expected[name]} configured"
                for name in sorted(expected.keys() & saved.keys()) if saved[name] != expected[name]]
    missing, extra = sorted(expected.keys() - saved.keys()), sorted(saved.keys() - expected.keys())
    if missing:
        problems.append(f"{len(missing)} configured tensor(s) missing from the checkpoint, e.g. {missing[0]}")
    if extra:
        problems.append(f"{len(extra)} checkpoint tensor(s) the configured model lacks, e.g. {extra[0]}")
    if problems:
        raise RunError(f"{checkpoint.path} does not fit the configured {type(model).__name__}: {'; '.join(problems[:3])}")


def describe_changes(changes: dict[str, dict[str, Any]]) -> str:
    return ", ".join(f"{key} {change['from']} -> {change['to']}" for key, change in changes.items())


class ApplyResumeChanges(Callback):
    """After Lightning restored the optimizer and lr scheduler from a checkpoint, put back the
    configured optimizer settings: they are read from the freshly configured parameter groups before
    the restore (``on_fit_start``) and written back after it (``on_train_start``), with the
    scheduler's base lrs and the current lr recomputed from them. Only the momentum buffers and the
    schedule position come from the checkpoint."""

    def __init__(self, changes: dict[str, dict[str, Any]], global_step: int) -> None:
        self.changes, self.global_step = changes, global_step
        self._configured: list[list[dict[str, Any]]] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._configured = [[{k: v for k, v in group.items() if k not in ("params", "lr")} for group in optimizer.param_groups]
                            for optimizer in trainer.optimizers]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for optimizer, groups in zip(trainer.optimizers, self._configured, strict=True):
            for group, configured in zip(optimizer.param_groups, groups, strict=True):
                group.update(configured)
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            scheduler.base_lrs = [group["initial_lr"] for group in scheduler.optimizer.param_groups]
            scheduler.last_epoch -= 1
            scheduler.step()  # recomputes this step's lr from the configured base lrs and schedule
        note(f"from global step {self.global_step} training uses {describe_changes(self.changes)}")
