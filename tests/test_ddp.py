"""DDP correctness on CPU: 2 processes, gloo, Lightning's own DDP strategy.

Two processes are started the way SLURM or torchrun start them (``LOCAL_RANK`` etc. in the
environment; Lightning then creates no processes itself) and each runs ``Trainer(strategy="ddp",
accelerator="cpu", devices=2)`` fits of several scenarios one after the other, recording what each
rank sees. The parent compares with single-process computations on the union of the ranks' batches.

BatchNorm: per-rank BatchNorm normalises each rank's half batch with its own statistics, so a DDP
step is *not* the full-batch step unless SyncBatchNorm is on, and torch's SyncBatchNorm has no CPU
kernel. The equivalence scenarios therefore use the demo's MLP backbone and projector with their
BatchNorm layers replaced by identities (BN-free); the gather, the loss, DDP's gradient averaging and
the callbacks' collectives are what is tested. The ``bn`` scenario keeps BatchNorm to check that
evaluation (k-NN) is still identical on every rank even though the ranks' running statistics drift
apart during training.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from torch import nn

from conftest import REPO, TINY_DEMO, as_launched_rank, leave_process_group, metric_values, spawn_ranks
from ssl_norms.callbacks import EmbeddingNormMonitor, OnlineKNN
from ssl_norms.data import SyntheticLatentClasses
from ssl_norms.eval import knn_predict
from ssl_norms.methods import SimCLR

WORLD_SIZE = 2
TIMEOUT_S = 240
KNN_K = 5
SCENARIOS = ["no_bn", "bn", "isoloss"]


def have_isoloss() -> bool:
    import ssl_norms.methods as methods

    return hasattr(methods, "IsoLoss")


def without_batchnorm(module: nn.Module) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, nn.Identity())
        else:
            without_batchnorm(child)
    return module


def make_model(scenario: str) -> L.LightningModule:
    torch.manual_seed(1)
    common = dict(backbone="mlp", input_dim=16, mlp_hidden_dims=[32], lr=0.1, warmup_epochs=0)
    if scenario == "isoloss":
        from ssl_norms.methods import IsoLoss

        return without_batchnorm(IsoLoss(projector_dims=[32, 8], ema_target=False, **common))
    model = SimCLR(projector_dims=[32, 8], temperature=0.5, **common)
    return model if scenario == "bn" else without_batchnorm(model)


def make_data() -> SyntheticLatentClasses:
    # 35 training samples: 18 per rank (DistributedSampler pads), one batch of 16 each; a bank of
    # 35 shards 18/17 and 21 validation samples 11/11 (one repeated): padding and de-duplication run.
    return SyntheticLatentClasses(num_classes=4, latent_dim=4, ambient_dim=16, train_samples=35, val_samples=21,
                                  batch_size=16, eval_batch_size=8, view_mode="noise", seed=3)


class Probe(Callback):
    """Records, on each rank, what the equivalence checks need (after the monitors in the list)."""

    def __init__(self, knn: OnlineKNN) -> None:
        self.knn = knn
        self.record: dict = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 0:
            self.record["init"] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
            self.record["views"] = [v.clone() for v in batch["views"]]

    def on_after_backward(self, trainer, pl_module):
        if trainer.global_step == 0:  # after backward: DDP has averaged the gradients
            self.record["grads"] = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if "loss" not in self.record:
            self.record["loss"] = outputs["loss"].detach().clone()
            self.record["embeddings"] = [z.clone() for z in outputs["ssl"].embeddings]
            self.record["features"] = [f.clone() for f in outputs["ssl"].features]
            self.record["norm_metrics"] = {k: v.clone() for k, v in trainer.callback_metrics.items()
                                           if k.split("/")[0] in ("norm", "features", "pairs")}
            if hasattr(pl_module, "correlation"):
                self.record["correlation"] = pl_module.correlation.clone()

    def on_validation_start(self, trainer, pl_module):
        self.record["final_before_eval"] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if "bank" not in self.record:  # the bank OnlineKNN embedded (sharded, gathered) for this validation
            self.record["bank"] = tuple(t.clone() for t in self.knn._bank)

    def on_validation_end(self, trainer, pl_module):
        self.record["knn_top1"] = trainer.callback_metrics["knn/top1"].clone()


def _run_scenario(scenario: str, out_dir: Path, rank: int) -> None:
    L.seed_everything(0, verbose=False)
    knn = OnlineKNN(k=KNN_K)
    probe = Probe(knn)
    trainer = L.Trainer(
        strategy="ddp", accelerator="cpu", devices=WORLD_SIZE, max_epochs=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        log_every_n_steps=1, num_sanity_val_steps=0, callbacks=[EmbeddingNormMonitor(), knn, probe],
    )
    trainer.fit(make_model(scenario), make_data())
    torch.save(probe.record, out_dir / f"{scenario}-rank{rank}.pt")


def _worker(rank: int, port: int, out_dir: str, scenarios: list[str]) -> None:
    as_launched_rank(rank, port, WORLD_SIZE)
    for scenario in scenarios:
        _run_scenario(scenario, Path(out_dir), rank)
    leave_process_group()


@pytest.fixture(scope="module")
def ddp_records(tmp_path_factory) -> dict[str, list[dict]]:
    out_dir = tmp_path_factory.mktemp("ddp")
    scenarios = [s for s in SCENARIOS if s != "isoloss" or have_isoloss()]
    spawn_ranks(_worker, str(out_dir), scenarios, world_size=WORLD_SIZE, timeout_s=TIMEOUT_S)
    return {s: [torch.load(out_dir / f"{s}-rank{r}.pt", weights_only=False) for r in range(WORLD_SIZE)] for s in scenarios}


def _global(records: list[dict], key: str) -> list[torch.Tensor]:
    """Per view, the ranks' tensors concatenated in rank order: the global batch."""
    return [torch.cat([r[key][v] for r in records]) for v in range(len(records[0][key]))]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def test_simclr_ddp_loss_and_gradients_equal_single_process_on_the_union(ddp_records):
    records = ddp_records["no_bn"]
    for name, value in records[0]["init"].items():  # DDP starts every rank from the same weights
        assert torch.equal(value, records[1]["init"][name])
    model = make_model("no_bn")
    model.load_state_dict(records[0]["init"])
    reference = model.ssl_step(_global(records, "views")).loss  # 1 process, batch A+B
    reference.backward()
    ddp_loss = sum(r["loss"] for r in records) / WORLD_SIZE  # what DDP optimises: the mean of the rank losses
    diffs = {"loss": abs(ddp_loss.item() - reference.item())}
    for name, param in model.named_parameters():
        for rank, record in enumerate(records):
            diffs[f"{name}@{rank}"] = _max_diff(record["grads"][name], param.grad)
    print("SimCLR DDP vs single process, max abs diff:", max(diffs.values()), f"(loss {diffs['loss']:.2e})")
    assert max(diffs.values()) < 1e-5, diffs
    # the gradients are not trivially equal: a rank's local loss without the gather differs
    local = model.ssl_step(records[0]["views"]).loss.item()
    assert abs(local - records[0]["loss"].item()) > 1e-3


def test_norm_monitor_statistics_are_over_the_global_batch_on_every_rank(ddp_records):
    records = ddp_records["no_bn"]
    expected = EmbeddingNormMonitor().statistics(_global(records, "embeddings"), _global(records, "features"))
    local = EmbeddingNormMonitor().statistics(records[0]["embeddings"], records[0]["features"])
    assert set(records[0]["norm_metrics"]) == set(expected)
    worst = max(_max_diff(r["norm_metrics"][k], v) for k, v in expected.items() for r in records)
    print(f"norm statistics DDP vs single process, max abs diff: {worst:.2e}")
    for key, value in expected.items():
        for record in records:
            assert _max_diff(record["norm_metrics"][key], value) < 1e-5, key
    assert any(_max_diff(local[k], expected[k]) > 1e-4 for k in expected)  # rank 0 alone would differ


@pytest.mark.parametrize("scenario", ["no_bn", "bn"])
def test_knn_bank_and_top1_are_identical_on_every_rank_and_equal_single_process(ddp_records, scenario):
    records = ddp_records[scenario]
    # every rank evaluates rank 0's model (the bn scenario: after a step the ranks' BatchNorm running
    # statistics differ; OnlineKNN broadcasts them first)
    if scenario == "bn":
        drifted = [k for k in records[0]["final_before_eval"] if "running" in k
                   and not torch.equal(records[0]["final_before_eval"][k], records[1]["final_before_eval"][k])]
        assert drifted, "without SyncBatchNorm the ranks' running statistics should differ after a step"
    model = make_model(scenario)
    model.load_state_dict(records[0]["final_before_eval"])
    model.eval()
    data = make_data()
    data.setup("fit")
    with torch.no_grad():
        bank = model.embed(torch.stack([data.bank_set[i]["image"] for i in range(len(data.bank_set))]))[0]
        val = model.embed(torch.stack([data.val_set[i]["image"] for i in range(len(data.val_set))]))[0]
    bank_labels = data.bank_set.labels
    top1 = (knn_predict(bank, bank_labels, val, data.num_classes, k=KNN_K) == data.val_set.labels).float().mean()
    print(f"k-NN ({scenario}): bank max abs diff {max(_max_diff(r['bank'][0], bank) for r in records):.2e}, "
          f"top1 per rank {[round(r['knn_top1'].item(), 6) for r in records]}, single process {top1.item():.6f}")
    for record in records:
        rank_bank, rank_labels = record["bank"]
        assert rank_bank.shape == bank.shape and torch.equal(rank_labels, bank_labels)
        assert _max_diff(rank_bank, bank) < 1e-5
        assert record["knn_top1"].item() == pytest.approx(top1.item(), abs=1e-6)
    assert torch.equal(records[0]["bank"][0], records[1]["bank"][0])


def test_isoloss_correlation_is_the_same_on_every_rank_and_global(ddp_records):
    if "isoloss" not in ddp_records:
        pytest.skip("ssl_norms.methods.IsoLoss is not available yet")
    records = ddp_records["isoloss"]
    assert torch.equal(records[0]["correlation"], records[1]["correlation"])
    model = make_model("isoloss")
    model.load_state_dict(records[0]["init"])
    with torch.no_grad():
        z = torch.cat([model.projector(model.backbone(torch.cat(r["views"]))) for r in records])
    expected = (1 - model.correlation_tau) * (z.T @ z / len(z))  # C starts at 0; batch over both ranks
    print(f"IsoLoss C DDP vs single process, max abs diff: {_max_diff(records[0]['correlation'], expected):.2e}")
    assert _max_diff(records[0]["correlation"], expected) < 1e-6


def test_sync_batchnorm_is_one_switch():
    """``--trainer.sync_batchnorm true`` is Lightning's switch: DDP converts every BatchNorm."""
    trainer = L.Trainer(strategy="ddp", accelerator="cpu", devices=2, sync_batchnorm=True, logger=False)
    model = trainer.strategy._layer_sync.apply(SimCLR(backbone="mlp", input_dim=16, mlp_hidden_dims=[8], projector_dims=[8, 4]))
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, nn.SyncBatchNorm) for m in norms)
    from ssl_norms.slurm import SLURM_CONFIG

    for path in [REPO / "configs" / "ddp" / "simclr_cifar10_4gpu.yaml", REPO / "configs" / "ddp" / "simclr_cifar10_2x4gpu.yaml", SLURM_CONFIG]:
        trainer_cfg = yaml.safe_load(path.read_text())["trainer"]
        assert trainer_cfg["sync_batchnorm"] is True and trainer_cfg["strategy"] == "ddp", path


def test_ddp_configs_state_the_global_batch_and_lr():
    for name in ["simclr_cifar10_4gpu.yaml", "simclr_cifar10_2x4gpu.yaml", "demo_cpu.yaml"]:
        text = (REPO / "configs" / "ddp" / name).read_text()
        cfg = yaml.safe_load(text)
        devices, nodes = cfg["trainer"]["devices"], cfg["trainer"]["num_nodes"]
        global_batch = devices * nodes * cfg["data"]["init_args"]["batch_size"]
        assert f"= {global_batch}" in text and "never rescales" in text, name
        assert f"lr: {cfg['model']['init_args']['lr']}" in text


def test_sync_batchnorm_on_cpu_processes_is_a_one_line_error(capsys):
    from ssl_norms.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["fit", *TINY_DEMO, "--config", str(REPO / "configs" / "ddp" / "demo_cpu.yaml"), "--trainer.sync_batchnorm", "true"])
    assert stop.value.code == 2
    assert "sync_batchnorm true needs GPUs" in capsys.readouterr().err


def test_cli_ddp_fit_on_two_cpu_processes(tmp_path):
    """The command users run: Lightning launches the second process; both share one run dir; the
    global batch is stated at fit start and logged; the monitors log global statistics."""
    env = {**os.environ, "SSL_NORMS_RUN_DIR": ""}
    result = subprocess.run(
        [sys.executable, "-m", "ssl_norms.cli", "fit", "--config", str(REPO / "configs" / "demo.yaml"),
         "--config", str(REPO / "configs" / "ddp" / "demo_cpu.yaml"), "--data.init_args.train_samples", "1024",
         "--data.init_args.val_samples", "256", "--trainer.max_epochs", "1", "--trainer.log_every_n_steps", "1",
         "--trainer.enable_progress_bar", "false"],
        capture_output=True, text=True, timeout=TIMEOUT_S, cwd=tmp_path, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "global batch 256 = 2 processes" in result.stderr + result.stdout
    (run_dir,) = (tmp_path / "runs" / "simclr-syntheticlatentclasses").iterdir()
    hparams = yaml.safe_load((run_dir / "hparams.yaml").read_text())
    assert hparams["scale/global_batch_size"] == 256 and hparams["scale/world_size"] == 2
    assert len(metric_values(run_dir / "metrics.csv", "norm/mean")) == 4  # 1024 / 256 steps
    assert 0 <= metric_values(run_dir / "metrics.csv", "knn/top1")[-1] <= 1
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
