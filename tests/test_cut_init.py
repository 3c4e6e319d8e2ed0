"""CutInit's scopes and bn_lr_scale (issue 16): which parameters each scope divides, the lr / c^2
groups and their schedule, the uncut trajectory recovered, resume, and the command line."""

from __future__ import annotations

import copy
import json
import logging

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn

from conftest import TINY_DEMO
from ssl_norms.callbacks import CutInit
from ssl_norms.callbacks.cut_init import scoped_parameters
from ssl_norms.cli import main
from ssl_norms.methods import BYOL, SimCLR, SimSiam
from ssl_norms.models.scale_invariance import normalised_layers
from test_interventions import FirstBatchSnapshot, clone_parameters, tiny_data, tiny_method, tiny_trainer


def layer_parameter_names(model: nn.Module, feeds_norm: bool) -> set[str]:
    """Parameter names of the Linear/Conv layers that do (or do not) feed a normalisation layer."""
    layers = {name for name, fed in normalised_layers(model).items() if fed == feeds_norm}
    return {name for name, _ in model.named_parameters() if name.rsplit(".", 1)[0] in layers}


class LrRecorder(Callback):
    """(lr, lr_scale) of every parameter group at every optimizer step."""

    def __init__(self) -> None:
        self.steps: list[list[tuple[float, float]]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.steps.append([(g["lr"], g.get("lr_scale", 1.0)) for g in optimizer.param_groups])


@pytest.mark.parametrize("scope", ["unnormalised", "normalised"])
@pytest.mark.parametrize("method", [SimCLR, SimSiam], ids=lambda cls: cls.__name__)
def test_scope_divides_only_the_chosen_layers(method, scope):
    L.seed_everything(0)
    model = tiny_method(method)
    before = clone_parameters(model)
    cut = layer_parameter_names(model, feeds_norm=scope == "normalised")
    assert cut and len(cut) < len(before)
    snapshot = FirstBatchSnapshot()
    tiny_trainer([CutInit(4.0, scope=scope), snapshot], max_steps=1).fit(model, tiny_data())
    for name, value in before.items():  # BatchNorm affine parameters and the other layers stay as initialised
        assert torch.equal(snapshot.parameters[name], value / 4.0 if name in cut else value), name


def test_unnormalised_scope_names_the_heads_last_layers():
    # the layers whose output no normalisation layer rescales: SimCLR's projector output, SimSiam's predictor output
    assert layer_parameter_names(tiny_method(SimCLR), False) == {"projector.6.weight", "projector.6.bias"}
    assert layer_parameter_names(tiny_method(SimSiam), False) == {"predictor.3.weight", "predictor.3.bias"}


@pytest.mark.parametrize("scope", ["unnormalised", "normalised"])
def test_ema_target_parameters_go_with_their_online_twins(scope):
    model = tiny_method(BYOL, projector_batchnorm_last=False)
    chosen = {id(p) for p in scoped_parameters(model, scope)}
    twins = model.target.parameter_twins()
    assert any(id(online) in chosen for _, online in twins) and not all(id(online) in chosen for _, online in twins)
    for target, online in twins:
        assert (id(target) in chosen) == (id(online) in chosen)


def test_layers_the_embed_pass_does_not_reach_are_an_error():
    model = tiny_method(SimCLR)
    model.probe = nn.Linear(4, 2)  # not in embed: whether it feeds a normalisation layer is unknown
    with pytest.raises(ValueError, match="cannot tell whether SimCLR's layers probe feed a normalisation layer"):
        scoped_parameters(model, "unnormalised")


def test_rejects_unknown_scope_and_lr_scale_without_normalised_cut():
    with pytest.raises(ValueError, match="scope must be one of all, unnormalised, normalised"):
        CutInit(2.0, scope="heads")
    with pytest.raises(ValueError, match="bn_lr_scale needs scope 'all' or 'normalised'"):
        CutInit(2.0, scope="unnormalised", bn_lr_scale=True)


def test_bn_lr_scale_divides_the_lr_of_exactly_the_normalised_layers_through_the_schedule():
    # SimSiam's unscheduled predictor group and the weight-decay split are split again, not lost
    L.seed_everything(0)
    c = 3.0
    model = tiny_method(SimSiam, fixed_predictor_lr=True, exclude_bias_and_norm_from_wd=True, warmup_epochs=1, lr=0.1)
    recorder = LrRecorder()
    trainer = tiny_trainer([CutInit(c, bn_lr_scale=True), recorder], max_epochs=2)
    trainer.fit(model, tiny_data())
    names = {id(p): n for n, p in model.named_parameters()}
    groups = trainer.optimizers[0].param_groups
    scaled = {names[id(p)] for g in groups if g.get("lr_scale") for p in g["params"]}
    assert scaled == layer_parameter_names(model, feeds_norm=True)
    assert all(g["lr_scale"] == c**-2 for g in groups if "lr_scale" in g)
    assert "lr_scale" not in groups[0] and groups[0].get("scheduled", True)  # the configured lr, which monitors report
    kinds = {(g.get("scheduled", True), g["weight_decay"] == 0, "lr_scale" in g) for g in groups}
    # (scheduled, no weight decay, lr-scaled): every combination but a decayed unscaled scheduled weight,
    # as every scheduled weight matrix of this network feeds a BatchNorm
    all_kinds = {(s, nd, sc) for s in (True, False) for nd in (True, False) for sc in (True, False)}
    assert kinds == all_kinds - {(True, False, False)}
    unscaled = {g.get("scheduled", True): i for i, g in enumerate(groups) if "lr_scale" not in g}
    for step in recorder.steps:  # warmup then cosine on the scheduled groups, lr / c^2 at every step
        for i, g in enumerate(groups):
            if "lr_scale" in g:
                assert step[i][0] == pytest.approx(step[unscaled[g.get("scheduled", True)]][0] / c**2)
    assert len({step[0][0] for step in recorder.steps}) > 3  # the schedule moved


def _trained(model: nn.Module, callbacks: list) -> dict[str, torch.Tensor]:
    L.seed_everything(1)
    model = copy.deepcopy(model)
    tiny_trainer(callbacks, max_epochs=2).fit(model, tiny_data())  # 8 steps: warmup, then cosine
    return clone_parameters(model)


@pytest.mark.parametrize("method", [SimCLR, SimSiam], ids=lambda cls: cls.__name__)
def test_lr_scaled_normalised_cut_follows_the_uncut_trajectory(method):
    # Scale invariance: w -> w / c keeps the function and multiplies the gradient by c, so with SGD
    # (momentum, no weight decay) lr / c^2 gives exactly the uncut steps divided by c.
    L.seed_everything(0)
    c = 3.0
    model = tiny_method(method, lr=0.2, momentum=0.9, weight_decay=0.0, warmup_epochs=1)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eps = 1e-12  # BatchNorm's eps is the only break of scale invariance
    fed = layer_parameter_names(model, feeds_norm=True)
    uncut = _trained(model, [])
    scaled = _trained(model, [CutInit(c, scope="normalised", bn_lr_scale=True)])
    plain = _trained(model, [CutInit(c, scope="normalised")])
    initial = clone_parameters(model)
    for name, value in uncut.items():
        if value.ndim > 1:  # every weight trained (a bias feeding BatchNorm has no gradient)
            assert not torch.equal(value, initial[name]), name
        torch.testing.assert_close(scaled[name], value / c if name in fed else value, rtol=1e-4, atol=1e-6)
    assert all(not torch.allclose(plain[name], uncut[name] / c, rtol=1e-2, atol=1e-4) for name in fed if name.endswith("weight"))


class StopAfter(Callback):
    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        trainer.should_stop = trainer.should_stop or trainer.global_step >= self.steps


def test_resumed_run_keeps_the_scaled_groups(tmp_path):
    L.seed_everything(0)
    make = lambda: tiny_method(SimCLR, warmup_epochs=0.5, lr=0.1)  # noqa: E731
    through = LrRecorder()
    tiny_trainer([CutInit(2.0, bn_lr_scale=True), through], max_steps=4).fit(make(), tiny_data())

    L.seed_everything(0)  # the same 4-step schedule, interrupted after step 2
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=2)
    callbacks = [CutInit(2.0, bn_lr_scale=True), StopAfter(2), checkpoint]
    tiny_trainer(callbacks, enable_checkpointing=True, max_steps=4).fit(make(), tiny_data())
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert saved["callbacks"]["CutInit"]["record"] == {"c": 2.0, "global_step": 0, "scope": "all", "bn_lr_scale": True}
    assert sorted(g.get("lr_scale", 1.0) for g in saved["optimizer_states"][0]["param_groups"]) == [0.25, 1.0]

    resumed = LrRecorder()
    tiny_trainer([CutInit(2.0, bn_lr_scale=True), resumed], max_steps=4).fit(make(), tiny_data(), ckpt_path=tmp_path / "last.ckpt")
    assert resumed.steps == through.steps[2:]
    (scaled_lr, _), (lr, _) = sorted(resumed.steps[0], key=lambda group: group[1])
    assert scaled_lr == pytest.approx(lr / 4) and lr > 0

    with pytest.raises(ValueError, match=r"CutInit\(bn_lr_scale=False\) cannot continue .* bn_lr_scale=True"):
        tiny_trainer([CutInit(2.0)], max_steps=4).fit(make(), tiny_data(), ckpt_path=tmp_path / "last.ckpt")


def test_command_line_scopes(tmp_path, caplog):
    unnormalised = tmp_path / "unnormalised"
    with caplog.at_level(logging.INFO):
        main(["fit", *TINY_DEMO, "--trainer.max_epochs=1", "--trainer.callbacks+", "ssl_norms.callbacks.CutInit",
              "--trainer.callbacks.c", "3", "--trainer.callbacks.scope", "unnormalised", "--run_dir", str(unnormalised)])
    saved = torch.load(unnormalised / "checkpoints" / "last.ckpt", weights_only=False)
    model = SimCLR.load_from_checkpoint(unnormalised / "checkpoints" / "last.ckpt")
    values = sum(p.numel() for p in scoped_parameters(model, "unnormalised"))
    assert 0 < values < sum(p.numel() for p in model.parameters())
    assert f"CutInit: divided {values} parameter values by c=3 (scope unnormalised)" in caplog.text
    assert saved["callbacks"]["CutInit"]["record"]["scope"] == "unnormalised"
    assert "cut_init/scope: unnormalised" in (unnormalised / "hparams.yaml").read_text()

    scaled = tmp_path / "scaled"
    callback = json.dumps({"class_path": "ssl_norms.callbacks.CutInit", "init_args": {"c": 3, "bn_lr_scale": True}})
    main(["fit", *TINY_DEMO, "--trainer.max_epochs=1", f"--trainer.callbacks+={callback}", "--run_dir", str(scaled)])
    saved = torch.load(scaled / "checkpoints" / "last.ckpt", weights_only=False)
    scaled_group, group = sorted(saved["optimizer_states"][0]["param_groups"], key=lambda g: g.get("lr_scale", 1.0))
    assert scaled_group["lr_scale"] == 1 / 9 and "lr_scale" not in group and scaled_group["lr"] == pytest.approx(group["lr"] / 9)
    assert saved["callbacks"]["CutInit"]["record"]["bn_lr_scale"] is True
    assert "cut_init/bn_lr_scale: true" in (scaled / "hparams.yaml").read_text()
