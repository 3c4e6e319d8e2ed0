"""CutInit, GradScale and the non-finite guard, on every method the package exports."""

from __future__ import annotations

import inspect
import json

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn

import ssl_norms.methods as methods
from conftest import TINY_DEMO
from ssl_norms.callbacks import CutInit, GradScale, NonFiniteGuard, NonFiniteLossError
from ssl_norms.cli import main
from ssl_norms.data import SyntheticLatentClasses
from ssl_norms.losses import negative_cosine
from ssl_norms.methods import SimCLR, SSLMethod, SSLStep

AMBIENT_DIM = 16
METHODS = sorted(
    {obj for obj in vars(methods).values() if isinstance(obj, type) and issubclass(obj, SSLMethod) and obj is not SSLMethod},
    key=lambda cls: cls.__name__,
)
TARGET_WORDS = ("target", "momentum", "ema")


def tiny_method(cls: type[SSLMethod], **kwargs) -> SSLMethod:
    """``cls`` with an MLP backbone and every ``*_dims`` head default shrunk 64x (ratios kept, so dims
    that must agree still agree), whatever the method's signature."""
    args = {"backbone": "mlp", "input_dim": AMBIENT_DIM, "mlp_hidden_dims": [32], "warmup_epochs": 0}
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name.endswith("_dims") and name != "mlp_hidden_dims" and isinstance(param.default, (list, tuple)):
            args[name] = [max(2, d // 64) for d in param.default]
    return cls(**{**args, **kwargs})


def tiny_data(**kwargs) -> SyntheticLatentClasses:
    settings = dict(num_classes=4, latent_dim=8, ambient_dim=AMBIENT_DIM, train_samples=128, val_samples=32,
                    batch_size=32, view_mode="noise")
    return SyntheticLatentClasses(**{**settings, **kwargs})


def tiny_trainer(callbacks, **kwargs) -> L.Trainer:
    settings = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    return L.Trainer(callbacks=callbacks, **{**settings, **kwargs})


def clone_parameters(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


class FirstBatchSnapshot(Callback):
    """Parameters and buffers as the first training batch of a fit sees them."""

    def __init__(self) -> None:
        self.parameters: dict[str, torch.Tensor] | None = None
        self.buffers: dict[str, torch.Tensor] | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.parameters is None:
            self.parameters = clone_parameters(pl_module)
            self.buffers = {n: b.clone() for n, b in pl_module.named_buffers()}


# ---------------------------------------------------------------------------------------------
# CutInit
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS, ids=lambda cls: cls.__name__)
def test_cut_init_divides_every_parameter_before_the_first_step(method):
    L.seed_everything(0)
    model = tiny_method(method)
    before = clone_parameters(model)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    snapshot = FirstBatchSnapshot()
    tiny_trainer([CutInit(4.0), snapshot], max_steps=1).fit(model, tiny_data())
    assert before.keys() <= snapshot.parameters.keys()
    for name, value in before.items():
        assert torch.equal(snapshot.parameters[name], value / 4.0), name
    for name, value in buffers.items():  # BatchNorm running statistics (buffers) are left alone
        assert torch.equal(snapshot.buffers[name], value), name


@pytest.mark.parametrize("name", ["BYOL", "IsoLoss"])
def test_ema_target_equals_cut_online_network_at_step_0(name):
    method = getattr(methods, name, None)
    if method is None:
        pytest.skip(f"ssl_norms.methods.{name} is not available yet")
    L.seed_everything(0)
    model = tiny_method(method)
    snapshot = FirstBatchSnapshot()
    tiny_trainer([CutInit(3.0), snapshot], max_steps=1).fit(model, tiny_data())
    params = snapshot.parameters
    targets = {n: p for n, p in params.items() if any(w in n.lower() for w in TARGET_WORDS)}
    if not targets:
        assert name != "BYOL", "BYOL must hold an EMA target network among its parameters"
        pytest.skip(f"{name} with default arguments has no EMA target network")
    online = [p for n, p in params.items() if n not in targets]
    for target_name, target in targets.items():
        # random-init weight matrices only ever equal their own counterpart
        assert any(p.shape == target.shape and torch.equal(p, target) for p in online), target_name


def test_optimizer_state_is_computed_from_cut_values():
    L.seed_everything(0)
    lr, wd, c = 0.1, 0.1, 4.0
    model = tiny_method(SimCLR, lr=lr, weight_decay=wd, momentum=0.9)
    uncut = clone_parameters(model)
    seen = {}

    class Capture(Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            seen["params"] = clone_parameters(pl_module)
            seen["grads"] = {n: p.grad.clone() for n, p in pl_module.named_parameters()}

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            optimizer = trainer.optimizers[0]
            seen["momentum"] = {n: optimizer.state[p]["momentum_buffer"].clone() for n, p in pl_module.named_parameters()}
            seen["after"] = clone_parameters(pl_module)

    tiny_trainer([CutInit(c), Capture()], max_steps=1).fit(model, tiny_data())
    for name, value in uncut.items():
        cut = seen["params"][name]
        assert torch.equal(cut, value / c), name
        expected = seen["grads"][name] + wd * cut  # SGD's first momentum buffer: grad + wd * param
        torch.testing.assert_close(seen["momentum"][name], expected)
        if value.abs().max() > 0:
            assert not torch.allclose(seen["momentum"][name], seen["grads"][name] + wd * value), name
        torch.testing.assert_close(seen["after"][name], cut - lr * expected)


@pytest.mark.parametrize(
    "first_run_cut, on_checkpoint, expected_divisor",
    [(True, "skip", 1.0), (True, "apply", 1.0), (False, "skip", 1.0), (False, "apply", 2.0)],
    ids=["cut-run-resumed", "cut-run-never-cut-twice", "uncut-checkpoint-skip", "uncut-checkpoint-apply"],
)
def test_resumed_or_restarted_run_is_cut_only_when_explicit(tmp_path, first_run_cut, on_checkpoint, expected_divisor):
    L.seed_everything(0)
    first = [CutInit(2.0)] if first_run_cut else []
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=2)
    tiny_trainer([*first, checkpoint], enable_checkpointing=True, max_steps=2).fit(tiny_method(SimCLR), tiny_data())
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)
    record = saved["callbacks"].get("CutInit", {}).get("record")
    assert record == ({"c": 2.0, "global_step": 0, "scope": "all", "bn_lr_scale": False} if first_run_cut else None)

    snapshot = FirstBatchSnapshot()
    resumed = tiny_method(SimCLR)  # fresh random weights: the checkpoint must replace them
    trainer = tiny_trainer([CutInit(2.0, on_checkpoint=on_checkpoint), snapshot], max_steps=3)
    if not first_run_cut and on_checkpoint == "skip":
        with pytest.warns(UserWarning, match="did nothing.*never cut.*on_checkpoint='apply'"):
            trainer.fit(resumed, tiny_data(), ckpt_path=tmp_path / "last.ckpt")
    else:
        trainer.fit(resumed, tiny_data(), ckpt_path=tmp_path / "last.ckpt")
    for name, _ in resumed.named_parameters():
        assert torch.equal(snapshot.parameters[name], saved["state_dict"][name] / expected_divisor), name
    assert trainer.global_step == 3


def test_same_module_fitted_again_is_not_cut_twice():
    L.seed_everything(0)
    model = tiny_method(SimCLR)
    tiny_trainer([CutInit(2.0)], max_steps=1).fit(model, tiny_data())
    after_first = clone_parameters(model)
    snapshot = FirstBatchSnapshot()
    tiny_trainer([CutInit(2.0), snapshot], max_steps=1).fit(model, tiny_data())
    for name, value in after_first.items():
        assert torch.equal(snapshot.parameters[name], value), name


@pytest.mark.parametrize("c", [0, -1.0, float("inf"), float("nan"), True, "3"])
def test_cut_init_rejects_impossible_constants(c):
    with pytest.raises(ValueError, match="CutInit c must be a finite number > 0"):
        CutInit(c)


def test_cut_init_allows_c_below_one_and_logs_hyperparameter(tmp_path):
    run_dir = tmp_path / "cut_half"
    callback = json.dumps({"class_path": "ssl_norms.callbacks.CutInit", "init_args": {"c": 0.5}})
    main(["fit", *TINY_DEMO, "--trainer.max_epochs=1", f"--trainer.callbacks+={callback}", "--run_dir", str(run_dir)])
    assert "cut_init/c: 0.5" in (run_dir / "hparams.yaml").read_text()
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["callbacks"]["CutInit"]["record"] == {"c": 0.5, "global_step": 0, "scope": "all", "bn_lr_scale": False}


def test_bad_cut_constant_on_the_command_line_names_the_rule(capsys):
    # jsonargparse reports a callback's ValueError inside its multi-line Union report; the CLI
    # prints that report (condensing it to one line is the CLI's job).
    callback = json.dumps({"class_path": "ssl_norms.callbacks.CutInit", "init_args": {"c": -2}})
    with pytest.raises(SystemExit) as stop:
        main(["fit", *TINY_DEMO, f"--trainer.callbacks+={callback}"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "CutInit c must be a finite number > 0" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# GradScale
# ---------------------------------------------------------------------------------------------


class LossSpaceSpies(Callback):
    """Puts a recording hook right before and right after GradScale's hook in ``loss_space_hooks``
    (register after GradScale), so a test sees the tensors entering and leaving it on the real path,
    and the loss-space embeddings (``norm_source``) whose norms scale the gradient."""

    def __init__(self, grad_scale: GradScale) -> None:
        self.grad_scale, self.before, self.after, self.norm_sources = grad_scale, [], [], []

    def _recorder(self, store, sources=None):
        def record(z, norm_source):
            if z.requires_grad:
                z.retain_grad()
            store.append(z)
            if sources is not None:
                sources.append(norm_source)
            return z

        return record

    def setup(self, trainer, pl_module, stage):
        hooks = pl_module.loss_space_hooks
        position = next(i for i, h in enumerate(hooks) if h is self.grad_scale.hook)
        hooks.insert(position + 1, self._recorder(self.after))
        hooks.insert(position, self._recorder(self.before, self.norm_sources))


def _one_step(method, callbacks, **trainer_kwargs):
    """Loss and every parameter gradient of the first step, from seed 0."""
    L.seed_everything(0)
    model = tiny_method(method)
    seen = {}

    class Capture(Callback):
        def on_before_backward(self, trainer, pl_module, loss):
            seen["loss"] = loss.detach().clone()

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            seen["grads"] = {n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None}
            seen["hooks"] = list(pl_module.loss_space_hooks)

    tiny_trainer([*callbacks, Capture()], max_steps=1, **trainer_kwargs).fit(model, tiny_data())
    seen["hooks_after_fit"] = list(model.loss_space_hooks)
    return seen


@pytest.mark.parametrize("method", METHODS, ids=lambda cls: cls.__name__)
def test_grad_scale_power_zero_is_bit_identical_to_default_training(method):
    plain = _one_step(method, [])
    scaled = _one_step(method, [GradScale(power=0.0)])
    assert torch.equal(plain["loss"], scaled["loss"])
    assert plain["grads"].keys() == scaled["grads"].keys() and plain["grads"]
    for name, grad in plain["grads"].items():
        assert torch.equal(grad, scaled["grads"][name]), name
    assert len(scaled["hooks"]) == 1 and scaled["hooks_after_fit"] == []  # installed for fit, removed after


@pytest.mark.parametrize("method", METHODS, ids=lambda cls: cls.__name__)
def test_grad_scale_scales_each_loss_space_gradient_by_norm(method):
    grad_scale = GradScale(power=1.0)
    spies = LossSpaceSpies(grad_scale)
    _one_step(method, [grad_scale, spies])
    pairs = [
        (zin, zout, source)
        for zin, zout, source in zip(spies.before, spies.after, spies.norm_sources)
        if zin.requires_grad and zout.grad is not None
    ]
    assert pairs, f"{method.__name__} sends no gradient-carrying tensor through loss_space"
    for zin, zout, source in pairs:
        norms = source.detach().float().norm(dim=-1, keepdim=True)
        torch.testing.assert_close(zin.grad, zout.grad * norms.to(zout.grad.dtype))
        assert not torch.allclose(zin.grad, zout.grad)  # the scaling really happened


class CosineToFixedTarget(SSLMethod):
    """A minimal real method: loss = sum_i -cos(z_i, t_i), z = a linear head of view 0, t fixed.

    ``scale`` multiplies the head, so ||z|| changes while every angle phi_i stays the same."""

    def __init__(self, scale: float = 1.0, **kwargs) -> None:
        super().__init__(backbone="mlp", input_dim=AMBIENT_DIM, mlp_hidden_dims=[16], warmup_epochs=0, **kwargs)
        self.head = nn.Linear(16, 8)
        with torch.no_grad():
            self.head.weight.mul_(scale)
            self.head.bias.mul_(scale)
        self.register_buffer("target", torch.randn(32, 8, generator=torch.Generator().manual_seed(1)))

    def embed_features(self, features):
        return self.head(features)

    def ssl_step(self, views):
        features = self.encode_views(views[:1])
        z = self.loss_space(self.embed_features(features[0]))
        return SSLStep(negative_cosine(z, self.target[: len(z)]) * len(z), features, [z])


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize("power", [0.0, 1.0])
def test_cosine_gradient_at_z_is_sine_of_angle_with_power_one(precision, power):
    """Prop 3.1: |dL/dz_i| = sin(phi_i) / ||z_i||; GradScale(1) multiplies by ||z_i||, leaving sin(phi_i)."""
    tolerance = dict(rtol=1e-4, atol=1e-6) if precision == "32-true" else dict(rtol=3e-2, atol=1e-2)
    for scale in (0.1, 1.0, 10.0):
        L.seed_everything(0)
        model = CosineToFixedTarget(scale)
        grad_scale = GradScale(power)
        spies = LossSpaceSpies(grad_scale)
        tiny_trainer([grad_scale, spies], max_steps=1, precision=precision).fit(model, tiny_data())
        (z,) = spies.before
        assert z.dtype == (torch.float32 if precision == "32-true" else torch.bfloat16)
        zf, target = z.detach().float(), model.target[: len(z)]
        sine = torch.sqrt((1 - F.cosine_similarity(zf, target, dim=1) ** 2).clamp_min(0))
        expected = sine if power == 1.0 else sine / zf.norm(dim=1)
        torch.testing.assert_close(z.grad.float().norm(dim=1), expected, **tolerance)


def test_simclr_loss_space_gradient_is_norm_independent_with_power_one():
    """InfoNCE is scale-invariant in z too: with p=1 the gradient at z no longer depends on ||z||."""
    grads = {}
    for power in (0.0, 1.0):
        for scale in (0.1, 10.0):
            grad_scale = GradScale(power)
            spies = LossSpaceSpies(grad_scale)

            class ScaleLossSpace(Callback):
                def setup(self, trainer, pl_module, stage, scale=scale):
                    pl_module.loss_space_hooks.insert(0, lambda z, norm_source: z * scale)

            _one_step(SimCLR, [ScaleLossSpace(), grad_scale, spies])
            grads[power, scale] = spies.before[0].grad
    torch.testing.assert_close(grads[1.0, 0.1], grads[1.0, 10.0], rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(grads[0.0, 0.1], grads[0.0, 10.0] * 100, rtol=1e-3, atol=1e-6)


def test_grad_scale_rejects_bad_power_and_foreign_modules():
    with pytest.raises(ValueError, match="finite"):
        GradScale(float("nan"))
    with pytest.raises(ValueError, match="SSLMethod"):
        GradScale(1.0).setup(None, L.LightningModule(), "fit")


# ---------------------------------------------------------------------------------------------
# Non-finite guard: gradients, and the command-line path
# ---------------------------------------------------------------------------------------------


class PoisonGradients(Callback):
    """Makes one gradient NaN at ``at_step`` while the loss stays finite."""

    def __init__(self, at_step: int = 3) -> None:
        self.at_step = at_step

    def on_after_backward(self, trainer, pl_module):
        if trainer.global_step >= self.at_step:
            next(p for p in pl_module.parameters() if p.grad is not None).grad.view(-1)[0] = float("nan")


def test_non_finite_gradient_stops_before_the_step_and_keeps_the_checkpoint(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=2)
    trainer = tiny_trainer([PoisonGradients(3), checkpoint, NonFiniteGuard()], enable_checkpointing=True, max_epochs=5)
    model = tiny_method(SimCLR)
    with pytest.raises(NonFiniteLossError, match=r"non-finite gradient in 1 parameter\(s\), first backbone\.\S+ at global step 3 .*last good checkpoint: .*last\.ckpt"):
        trainer.fit(model, tiny_data())
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the poisoned step was never taken
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())


def test_gradient_check_can_be_switched_off():
    trainer = tiny_trainer([PoisonGradients(0), NonFiniteGuard(check_gradients=False)], max_steps=1)
    trainer.fit(tiny_method(SimCLR), tiny_data())  # no error: only the loss is checked


def test_non_finite_run_on_the_command_line_exits_3_with_one_line(tmp_path, capsys):
    run_dir = tmp_path / "poisoned"
    poison = json.dumps({"class_path": "test_interventions.PoisonGradients", "init_args": {"at_step": 10}})
    with pytest.raises(SystemExit) as stop:  # 8 steps per epoch: epoch 0 is checkpointed first
        main(["fit", *TINY_DEMO, f"--trainer.callbacks+={poison}", "--run_dir", str(run_dir)])
    assert stop.value.code == 3
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ssl-norms: error")]
    assert len(err) == 1
    last = run_dir / "checkpoints" / "last.ckpt"
    assert "global step 10" in err[0] and str(last) in err[0]
    assert torch.load(last, weights_only=False)["global_step"] == 8
