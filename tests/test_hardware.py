"""Hardware defaults (ssl_norms.hardware): precision, channels_last, the split of the CPU cores, and the
opt-in torch.compile of the backbone. channels_last must not change results."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from ssl_norms import hardware
from ssl_norms.callbacks import CompileBackbone
from ssl_norms.data import CIFAR10DataModule
from ssl_norms.data.augment import BatchedSimCLRAugmentation
from ssl_norms.data.datasets import AugmentedViews
from ssl_norms.methods import BYOL, SimCLR


class LossCurve(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def tiny_views(n: int = 64) -> DataLoader:
    images = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    dataset = AugmentedViews(images, torch.zeros(n, dtype=torch.long), BatchedSimCLRAugmentation(16, (0.5,) * 3, (0.25,) * 3))
    return DataLoader(dataset, batch_size=16, shuffle=True, drop_last=True, collate_fn=dataset.collate_fn)


def short_fit(channels_last: bool, precision: str, callbacks=(), steps: int = 6) -> tuple[list[float], SimCLR]:
    L.seed_everything(0, verbose=False)
    model = SimCLR(backbone_width=4, projector_dims=[32, 16], warmup_epochs=0, lr=0.001)
    model.channels_last = channels_last
    curve = LossCurve()
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", precision=precision, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[curve, *callbacks])
    trainer.fit(model, tiny_views())
    return curve.losses, model


# float32: the same function, summed in another order (measured: 8e-7). bf16 keeps 8 mantissa bits and
# the two layouts round at different places: in this width-4 net the loss moves by up to 2.3% (measured).
@pytest.mark.parametrize("precision, tolerance", [("32-true", 1e-5), ("bf16-mixed", 5e-2)])
def test_channels_last_leaves_the_loss_curve_unchanged(precision, tolerance):
    plain, plain_model = short_fit(False, precision)
    nhwc, nhwc_model = short_fit(True, precision)
    assert nhwc_model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert plain_model.backbone.conv1.weight.is_contiguous()
    assert len(plain) == len(nhwc) == 6 and plain[0] != plain[-1]  # training moved the loss
    assert torch.allclose(torch.tensor(nhwc), torch.tensor(plain), rtol=tolerance, atol=0)
    # the state dict is the same whatever the layout: checkpoints load either way
    assert plain_model.state_dict().keys() == nhwc_model.state_dict().keys()
    SimCLR(backbone_width=4, projector_dims=[32, 16]).load_state_dict(nhwc_model.state_dict())


def test_channels_last_by_default_on_cpu_for_convolutions_only():
    _, model = short_fit(None, "32-true", steps=1)
    assert model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    byol = BYOL(backbone_width=4, projector_dims=[16, 8], predictor_hidden_dims=[16])
    byol.setup("fit")  # the EMA target network too
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in byol.parameters() if p.ndim == 4)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in byol.target.parameters() if p.ndim == 4)
    mlp = SimCLR(backbone="mlp", input_dim=8, mlp_hidden_dims=[16], projector_dims=[8])
    assert not hardware.channels_last_is_faster(mlp.backbone, "cpu")
    assert not hardware.channels_last_is_faster(model.backbone, "mps")


def test_precision_follows_the_hardware(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for amx, avx512_bf16, expected in [(True, False, "bf16-mixed"), (False, True, "bf16-mixed"), (False, False, "32-true")]:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        precision, why = hardware.default_precision("auto")
        assert precision == expected and precision in why and "\n" not in why


def test_cli_states_the_precision_it_chose_and_an_explicit_one_wins(monkeypatch, capsys):
    from conftest import TINY_DEMO
    from ssl_norms.cli import main

    monkeypatch.setattr(hardware, "fast_bf16", lambda accelerator: "the CPU has AMX")
    main(["fit", *TINY_DEMO, "--trainer.max_epochs", "1", "--trainer.precision", "32-true", "--run_dir", "explicit"])
    assert "precision" not in capsys.readouterr().err
    main(["fit", *TINY_DEMO, "--trainer.max_epochs", "1", "--run_dir", "auto"])
    assert "ssl-norms: precision bf16-mixed (the CPU has AMX;" in capsys.readouterr().err
    import yaml

    assert yaml.safe_load(open("auto/config.yaml"))["trainer"]["precision"] == "bf16-mixed"
    # continuing or evaluating a trained run keeps the precision it was trained at, whatever the hardware
    main(["fit", *TINY_DEMO, "--trainer.max_epochs", "2", "--run_dir", "explicit", "--ckpt_path", "last"])
    assert "ssl-norms: precision 32-true, as the run was trained" in capsys.readouterr().err
    assert yaml.safe_load(open("explicit/config.yaml"))["trainer"]["precision"] == "32-true"
    main(["validate", *TINY_DEMO, "--run_dir", "explicit"])
    assert "ssl-norms: precision 32-true, as the run was trained" in capsys.readouterr().err


def test_workers_and_threads_from_the_core_count(monkeypatch, capsys):
    assert hardware.loader_split(1, threads=4)[:2] == (0, 1)
    assert hardware.loader_split(2, threads=2)[:2] == (2, 2)  # the workers mostly sleep: the step keeps both cores
    assert hardware.loader_split(32, threads=32)[:2] == (8, 24)
    assert hardware.loader_split(32, threads=16)[:2] == (8, 16)  # no more threads than physical cores
    workers, threads, why = hardware.loader_split(12, threads=12)
    assert (workers, threads) == (3, 9) and "12 CPU cores: 3 DataLoader workers, 9 torch threads" in why
    monkeypatch.setattr(hardware, "cpu_cores", lambda: 2)
    assert CIFAR10DataModule().num_workers == 2
    assert "2 CPU cores: 2 DataLoader workers, 2 torch threads" in capsys.readouterr().err
    assert CIFAR10DataModule(num_workers=3).num_workers == 3  # explicit wins, nothing said
    assert capsys.readouterr().err == ""


def test_compiled_backbone_trains_one_step():
    """The callback's wiring on a CPU: the backbone runs compiled, the state dict keeps its keys.
    (``aot_eager`` traces forward and backward like inductor without needing a C++ toolchain.)"""
    losses, model = short_fit(None, "32-true", callbacks=[CompileBackbone(backend="aot_eager")], steps=1)
    assert model.backbone._compiled_call_impl is not None and len(losses) == 1 and losses[0] == losses[0]
    assert not any("_orig_mod" in key for key in model.state_dict())


@pytest.mark.slow
def test_inductor_compiled_backbone_gives_the_eager_loss():
    """The real compiler (needs a C++ toolchain): the first loss equals the eager one."""
    eager, _ = short_fit(False, "32-true", steps=2)
    compiled, _ = short_fit(False, "32-true", callbacks=[CompileBackbone()], steps=2)
    assert torch.allclose(torch.tensor(compiled), torch.tensor(eager), rtol=1e-4)
