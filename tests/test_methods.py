"""SimSiam, BYOL, IsoLoss, FroSSL, VICReg: end-to-end through the CLI, EMA targets, the IsoLoss correlation,
schedules in optimizer steps, and what each method exposes to callbacks."""

from __future__ import annotations

import datetime
import inspect
import math
import os
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

import ssl_norms.methods as methods
from conftest import REPO, TINY_DEMO, TINY_RESNET, metric_values, read_metrics_csv, spawn_ranks
from ssl_norms.cli import main
from ssl_norms.data import SyntheticLatentClasses
from ssl_norms.grad_scale import grad_scale
from ssl_norms.losses import directpred_predictor, frossl_loss, iso_loss_cosine, isotropic_predictor, negative_cosine, vicreg_loss
from ssl_norms.methods import BYOL, FroSSL, IsoLoss, SimSiam, SSLMethod, VICReg
from ssl_norms.methods.base import warmup_cosine_factor
from ssl_norms.methods.ema import EMATarget, cosine_tau

EXPORTED_METHODS = sorted(
    name for name in methods.__all__
    if inspect.isclass(getattr(methods, name)) and issubclass(getattr(methods, name), SSLMethod) and name != "SSLMethod"
)
NEW_METHODS = ["SimSiam", "BYOL", "IsoLoss", "FroSSL", "VICReg"]
MLP = dict(backbone="mlp", input_dim=64, mlp_hidden_dims=[32])


def _views(n: int = 16, dim: int = 64, count: int = 2, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, dim, generator=g)
    return [base + 0.3 * torch.randn(n, dim, generator=g) for _ in range(count)]


def _data(**kwargs) -> SyntheticLatentClasses:
    return SyntheticLatentClasses(**{"num_classes": 4, "train_samples": 256, "val_samples": 64, "batch_size": 32, **kwargs})


def _trainer(**kwargs) -> L.Trainer:
    defaults = dict(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
    )
    return L.Trainer(**{**defaults, **kwargs})


# ---------------------------------------------------------------------------------------------
# Every exported method, end to end with the shared callbacks
# ---------------------------------------------------------------------------------------------


def test_new_methods_are_exported():
    assert set(NEW_METHODS) <= set(EXPORTED_METHODS)


@pytest.mark.parametrize("name", EXPORTED_METHODS)
def test_fit_with_norm_and_knn_callbacks_then_validate_and_resume(name, tmp_path):
    """The demo config's EmbeddingNormMonitor and OnlineKNN work on every method, unchanged."""
    run_dir = tmp_path / name
    # each method at its own default lr (the demo's 0.3 is SimCLR's; VICReg diverges at it with SGD)
    inits = (vars(cls).get("__init__") for cls in getattr(methods, name).__mro__)
    lr = next(inspect.signature(f).parameters["lr"].default for f in inits if f and "lr" in inspect.signature(f).parameters)
    args = [*TINY_DEMO, "--model", f"ssl_norms.methods.{name}", "--model.init_args.mlp_hidden_dims", "[64]",
            "--model.init_args.projector_dims", "[32,16]", "--model.init_args.lr", str(lr), "--trainer.max_epochs", "1"]
    main(["fit", *args, "--run_dir", str(run_dir)])
    metrics = run_dir / "metrics.csv"
    header = read_metrics_csv(metrics)[0].keys()
    assert {"norm/mean", "knn/top1", "train/loss", "pairs/opposite_rate"} <= set(header)
    norms, knn = metric_values(metrics, "norm/mean"), metric_values(metrics, "knn/top1")
    assert norms and all(math.isfinite(n) and n > 0 for n in norms)
    assert len(knn) == 1 and knn[0] > 0.25  # 10 classes: above chance after one epoch
    assert all(math.isfinite(v) for v in metric_values(metrics, "train/loss"))

    last = run_dir / "checkpoints" / "last.ckpt"
    main(["validate", *args, "--ckpt_path", str(last)])
    validate_dir = next(run_dir.glob("validate-*"))
    assert metric_values(validate_dir / "metrics.csv", "knn/top1")[-1] == pytest.approx(knn[0], abs=1e-6)

    steps = torch.load(last, weights_only=False)["global_step"]
    main(["fit", *args, "--trainer.max_epochs", "2", "--run_dir", str(run_dir), "--ckpt_path", "last"])
    assert torch.load(last, weights_only=False)["global_step"] == 2 * steps


class FirstBatchState(L.Callback):
    """The module's state_dict when the first training batch of this fit starts (after all
    on_train_start hooks, before any update)."""

    def __init__(self):
        self.state: dict[str, torch.Tensor] | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.state is None:
            self.state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


@pytest.mark.parametrize(
    "make",
    [lambda: BYOL(projector_dims=[16, 8], predictor_hidden_dims=[8], **MLP),
     lambda: IsoLoss(projector_dims=[16, 8], **MLP),
     lambda: IsoLoss(projector_dims=[16, 8], ema_target=False, **MLP)],
    ids=["byol", "isoloss-ema", "isoloss-no-target"],
)
def test_resume_restores_target_and_correlation_bit_exactly(make, tmp_path):
    torch.manual_seed(0)
    model = make()
    trainer = _trainer(max_epochs=1, enable_checkpointing=True, default_root_dir=tmp_path,
                       callbacks=[L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)])
    trainer.fit(model, _data())
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)["state_dict"]
    keys = [k for k in saved if k.startswith("target.") or k == "correlation"]
    if isinstance(model, IsoLoss):
        assert "correlation" in keys and saved["correlation"].abs().sum() > 0
    if model.target is not None:
        assert any(k.startswith("target.") for k in keys)
        # the target has moved away from the online network, so restoring it is not trivial
        assert not torch.equal(saved["target.network.0.1.weight"], saved["backbone.1.weight"])
    else:
        assert not any(k.startswith("target.") for k in saved)

    torch.manual_seed(1)  # a fresh model with different weights
    fresh = make()
    probe = FirstBatchState()
    _trainer(max_epochs=2, callbacks=[probe]).fit(fresh, _data(), ckpt_path=tmp_path / "last.ckpt")
    for key in keys:
        assert torch.equal(probe.state[key], saved[key]), key


# ---------------------------------------------------------------------------------------------
# EMA target
# ---------------------------------------------------------------------------------------------


def test_cosine_tau_schedule():
    assert cosine_tau(0, 100) == pytest.approx(0.99)
    assert cosine_tau(50, 100) == pytest.approx(0.995)
    assert cosine_tau(100, 100) == pytest.approx(1.0)
    assert cosine_tau(150, 100) == pytest.approx(1.0)
    assert cosine_tau(25, 100, base_tau=0.9, final_tau=0.95) == pytest.approx(0.95 - 0.05 * 0.5 * (1 + math.cos(math.pi / 4)))
    with pytest.raises(ValueError, match="base_tau"):
        EMATarget([torch.nn.Linear(2, 2)], base_tau=1.0, final_tau=0.99)


def test_byol_target_is_a_frozen_copy_outside_the_optimizer():
    model = BYOL(projector_dims=[16, 8], predictor_hidden_dims=[8], **MLP)
    online = [*model.backbone.parameters(), *model.projector.parameters()]
    target = list(model.target.parameters())
    assert len(target) == len(online) and all(torch.equal(t, o) for t, o in zip(target, online))
    assert all(not t.requires_grad for t in target)
    model.hparams.exclude_bias_and_norm_from_wd = True
    grouped = {id(p) for g in model._split_weight_decay(model.parameter_groups()) for p in g["params"]}
    assert not grouped & {id(t) for t in target}
    assert grouped == {id(p) for p in model.parameters() if p.requires_grad}
    # Scaling every parameter of the module (what CutInit does) scales the target identically.
    with torch.no_grad():
        for p in model.parameters():
            p.div_(4.0)
    assert all(torch.equal(t, o) for t, o in zip(model.target.parameters(), online))


@pytest.mark.parametrize("make", [lambda: BYOL(projector_dims=[16, 8], predictor_hidden_dims=[8], **MLP),
                                  lambda: IsoLoss(projector_dims=[16, 8], **MLP)], ids=["byol", "isoloss"])
def test_cut_init_shrinks_the_target_with_the_online_network(make):
    from ssl_norms.callbacks.cut_init import CutInit
    from ssl_norms.callbacks.grad_scale import GradScale

    torch.manual_seed(0)
    model = make()
    initial = [p.detach().clone() for p in [*model.backbone.parameters(), *model.projector.parameters()]]
    probe = FirstBatchState()
    _trainer(max_steps=1, callbacks=[CutInit(c=4.0), GradScale(power=1.0), probe]).fit(model, _data())
    online = [v for k, v in probe.state.items() if k.startswith(("backbone.", "projector.")) and "running" not in k and "num_batches" not in k]
    target = [v for k, v in probe.state.items() if k.startswith("target.") and "running" not in k and "num_batches" not in k]
    assert len(online) == len(target) == len(initial)
    for o, t, i in zip(online, target, initial):
        torch.testing.assert_close(o, i / 4.0)
        assert torch.equal(t, o)


def test_byol_ema_after_one_step():
    torch.manual_seed(0)
    model = BYOL(projector_dims=[16, 8], predictor_hidden_dims=[8], base_tau=0.9, warmup_epochs=0, lr=0.5, **MLP)
    old_target = [t.detach().clone() for t in model.target.parameters()]
    _trainer(max_steps=1).fit(model, _data())
    online = [*model.backbone.parameters(), *model.projector.parameters()]
    assert any(not torch.equal(o, t) for o, t in zip(online, old_target))  # the step moved the online network
    for new, old, o in zip(model.target.parameters(), old_target, online):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * o.detach())  # tau at step 0 of 1 is base_tau


class TauSpy:
    def __init__(self, target: EMATarget):
        self.taus: list[float] = []
        update = target.update

        def recording_update(tau: float) -> None:
            self.taus.append(tau)
            update(tau)

        target.update = recording_update


def test_ema_updates_once_per_optimizer_step_with_accumulation():
    model = BYOL(projector_dims=[16, 8], predictor_hidden_dims=[8], warmup_epochs=0, **MLP)
    spy = TauSpy(model.target)
    trainer = _trainer(max_epochs=2, accumulate_grad_batches=4)
    trainer.fit(model, _data())
    steps = trainer.global_step
    assert steps == 2 * (256 // 32) // 4
    assert spy.taus == pytest.approx([cosine_tau(k, steps) for k in range(steps)])


# ---------------------------------------------------------------------------------------------
# SimSiam
# ---------------------------------------------------------------------------------------------


def test_simsiam_heads_loss_and_exposure():
    torch.manual_seed(0)
    model = SimSiam(**MLP)
    linears = [m for m in model.projector if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [2048, 2048, 2048]
    assert isinstance(model.projector[-1], torch.nn.BatchNorm1d)  # BN after the last layer too
    assert [m.out_features for m in model.predictor if isinstance(m, torch.nn.Linear)] == [512, 2048]

    model = SimSiam(projector_dims=[16, 8], predictor_hidden_dims=[4], **MLP).train()
    views = _views()
    step = model.ssl_step(views)
    z1, z2 = model.projector(torch.cat(model.encode_views(views))).chunk(2)
    p1, p2 = model.predictor(torch.cat([z1, z2])).chunk(2)
    torch.testing.assert_close(step.embeddings[0], p1)  # loss space = predictor output
    torch.testing.assert_close(step.loss, 0.5 * (negative_cosine(p1, z2) + negative_cosine(p2, z1)))
    with pytest.raises(ValueError, match="num_views 2"):
        model.training_step({"views": views + views[:1]}, 0)


def test_simsiam_schedule_counts_optimizer_steps_and_fixed_predictor_lr():
    class LrRecorder(L.Callback):
        def __init__(self):
            self.lrs: list[list[float]] = []

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            self.lrs.append([g["lr"] for g in optimizer.param_groups])

    lr = 0.2
    model = SimSiam(projector_dims=[16, 8], predictor_hidden_dims=[4], fixed_predictor_lr=True, lr=lr, warmup_epochs=1, **MLP)
    recorder = LrRecorder()
    trainer = _trainer(max_epochs=4, accumulate_grad_batches=4, callbacks=[recorder])
    trainer.fit(model, _data(train_samples=512))
    per_epoch = 512 // 32 // 4
    steps = trainer.global_step
    assert steps == 4 * per_epoch and len(recorder.lrs) == steps
    optimizer = trainer.optimizers[0]
    predictor = {id(p) for p in model.predictor.parameters()}
    fixed = [i for i, g in enumerate(optimizer.param_groups) if {id(p) for p in g["params"]} <= predictor]
    assert len(fixed) == 1
    for k, group_lrs in enumerate(recorder.lrs):
        expected = lr * warmup_cosine_factor(k, per_epoch, steps, 0.0)
        for i, value in enumerate(group_lrs):
            assert value == pytest.approx(lr if i in fixed else expected)


@pytest.mark.parametrize("warmup_epochs, warning", [
    (3, "warmup_epochs 3 is longer than training (24 > 16 optimizer steps)"),
    (2, "warmup_epochs 2 is as long as training (16 = 16 optimizer steps)"),  # the peak would be step 16: never run
    (1, None),
])
def test_warmup_longer_than_training_warns_and_still_trains(warmup_epochs, warning, recwarn):
    model = SimSiam(projector_dims=[16, 8], predictor_hidden_dims=[4], warmup_epochs=warmup_epochs, **MLP)
    trainer = _trainer(max_epochs=2)
    trainer.fit(model, _data())
    messages = [str(w.message) for w in recwarn if "warmup never finishes" in str(w.message)]
    assert len(messages) == int(warning is not None) and trainer.global_step == 2 * 256 // 32
    if warning:
        assert messages[0].startswith(warning)


# ---------------------------------------------------------------------------------------------
# IsoLoss
# ---------------------------------------------------------------------------------------------


def _iso(**kwargs) -> IsoLoss:
    torch.manual_seed(0)
    return IsoLoss(**{"projector_dims": [16, 6], **MLP, **kwargs})


def test_isoloss_predictor_is_recomputed_exactly_when_correlation_changes():
    model = _iso(correlation_tau=0.5)
    z = torch.randn(32, 6, generator=torch.Generator().manual_seed(0))
    model.update_correlation(z)
    first = model.closed_form_predictor()
    assert model.closed_form_predictor()[0] is first[0]  # unchanged C: no second eigh
    with torch.inference_mode():
        inference = model.closed_form_predictor()
    assert inference[0] is not first[0]  # inference tensors never reach a training graph
    model.update_correlation(2 * z)
    updated = model.closed_form_predictor()
    torch.testing.assert_close(updated[0], isotropic_predictor(model.correlation, model.alpha, model.eps)[0])
    assert not torch.equal(updated[0], first[0])
    model.load_state_dict({**model.state_dict(), "correlation": torch.eye(6)})
    torch.testing.assert_close(model.closed_form_predictor()[0], isotropic_predictor(torch.eye(6), model.alpha, model.eps)[0])


def _projector_output(model: IsoLoss, views: list[torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model.projector(torch.cat(model.encode_views(views)))


def test_isoloss_defaults():
    assert _iso().correlation_tau == 0.998 and _iso(ema_target=False).correlation_tau == 0.5
    assert _iso(ema_target=False).target is None
    assert _iso().eps == 0.0 and _iso(loss="directpred").eps == 0.1
    model = IsoLoss(**MLP)
    assert [m.out_features for m in model.projector if isinstance(m, torch.nn.Linear)] == [4096, 256]
    assert not any(p.requires_grad for p in model.buffers())
    for bad in ({"loss": "huber"}, {"correlation_tau": 1.0}, {"alpha": 0.0}, {"eps": -1.0}):
        with pytest.raises(ValueError):
            _iso(**bad)


def test_isoloss_correlation_ema_only_in_training():
    model = _iso(correlation_tau=0.9).train()
    assert torch.equal(model.correlation, torch.zeros(6, 6))
    views_a, views_b = _views(seed=1), _views(seed=2)
    z_a = _projector_output(model, views_a)
    model.ssl_step(views_a)
    torch.testing.assert_close(model.correlation, 0.1 * z_a.T @ z_a / len(z_a))  # no mean-centring
    after_a = model.correlation.clone()
    z_b = _projector_output(model, views_b)
    model.ssl_step(views_b)
    torch.testing.assert_close(model.correlation, 0.9 * after_a + 0.1 * z_b.T @ z_b / len(z_b))
    frozen = model.correlation.clone()
    model.eval()
    batch = {"image": views_a[0], "label": torch.zeros(16, dtype=torch.long), "index": torch.arange(16)}
    out = model.validation_step(batch, 0)
    assert torch.equal(model.correlation, frozen)
    w_p, _ = isotropic_predictor(frozen)
    torch.testing.assert_close(out.embeddings, model.projector(model.backbone(views_a[0])) @ w_p)  # loss space = p


def test_isoloss_without_target_uses_stop_gradient_online_projection():
    model = _iso(ema_target=False).train()
    views = _views()
    step = model.ssl_step(views)
    z1, z2 = _projector_output(model, views).chunk(2)
    w_p, w_p_sqrt = isotropic_predictor(model.correlation)
    expected = iso_loss_cosine(z1, z2, w_p, w_p_sqrt) + iso_loss_cosine(z2, z1, w_p, w_p_sqrt)
    torch.testing.assert_close(step.loss, expected)
    torch.testing.assert_close(step.embeddings[1], z2 @ w_p)
    step.loss.backward()  # the gradient reaches the backbone through both views' online branch
    assert all(p.grad is not None for p in model.backbone.parameters() if p.ndim > 1)


def test_isoloss_with_target_and_directpred_losses():
    views = _views()
    model = _iso().train()
    with torch.no_grad():  # make the target differ from the online network
        for p in model.target.parameters():
            p.mul_(0.5)
    step = model.ssl_step(views)
    z1, z2 = _projector_output(model, views).chunk(2)
    zt1, zt2 = model.target(views)
    w_p, w_p_sqrt = isotropic_predictor(model.correlation)
    torch.testing.assert_close(step.loss, iso_loss_cosine(z1, zt2, w_p, w_p_sqrt) + iso_loss_cosine(z2, zt1, w_p, w_p_sqrt))

    direct = _iso(loss="directpred", ema_target=False).train()
    step = direct.ssl_step(views)
    z1, z2 = _projector_output(direct, views).chunk(2)
    w = directpred_predictor(direct.correlation, 0.5, 0.1)
    torch.testing.assert_close(step.loss, 2 * (negative_cosine(z1 @ w, z2) + negative_cosine(z2 @ w, z1)))


@pytest.mark.parametrize("kind", ["cosine", "euclidean"])
def test_isoloss_grad_scale_hook_scales_by_predictor_output_norm(kind):
    """The gradient reaching z is the gradient w.r.t. p; a GradScale hook on p multiplies it by ||p_i||."""
    model = _iso(loss=kind)
    g = torch.Generator().manual_seed(3)
    z, zt = torch.randn(8, 6, generator=g) * 3, torch.randn(8, 6, generator=g)
    correlation = torch.randn(20, 6, generator=g)
    w_p, w_p_sqrt = isotropic_predictor(correlation.T @ correlation)
    p = z @ w_p
    leaf = p.clone().requires_grad_(True)
    reference = -2 * F.cosine_similarity(leaf, zt, dim=1).mean() if kind == "cosine" else (leaf - zt).pow(2).sum(1).mean()
    (grad_p,) = torch.autograd.grad(reference, leaf)

    plain = z.clone().requires_grad_(True)
    loss, embedding = model.pair_loss(plain, zt, w_p, w_p_sqrt)
    (grad_plain,) = torch.autograd.grad(loss, plain)
    torch.testing.assert_close(grad_plain, grad_p, rtol=1e-4, atol=1e-6)  # the IsoLoss identity, unchanged
    torch.testing.assert_close(embedding, p)

    model.loss_space_hooks.append(lambda z, norm_source: grad_scale(z, 1.0, norm_source))
    scaled = z.clone().requires_grad_(True)
    loss_scaled, _ = model.pair_loss(scaled, zt, w_p, w_p_sqrt)
    assert torch.equal(loss_scaled, loss)  # hooks never change the value
    (grad_scaled,) = torch.autograd.grad(loss_scaled, scaled)
    torch.testing.assert_close(grad_scaled, grad_p * p.norm(dim=1, keepdim=True), rtol=1e-4, atol=1e-6)
    if kind == "cosine":  # orthogonal to p, and norm-independent with power 1
        assert F.cosine_similarity(grad_scaled, p, dim=1).abs().max() < 1e-4
        big = (10 * z).requires_grad_(True)
        (grad_big,) = torch.autograd.grad(model.pair_loss(big, zt, w_p, w_p_sqrt)[0], big)
        torch.testing.assert_close(grad_big, grad_scaled, rtol=1e-4, atol=1e-6)


def test_isoloss_under_bf16_autocast_keeps_float32_correlation():
    model = _iso().train()
    views = _views()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        step = model.ssl_step(views)
    assert model.correlation.dtype == torch.float32 and torch.isfinite(step.loss)
    assert model.correlation.abs().sum() > 0
    # p = z W_p is computed in float32 from the bf16 projector output
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        z1 = model.projector(torch.cat(model.encode_views(views))).chunk(2)[0]
    w_p, _ = isotropic_predictor(model.correlation)
    assert step.embeddings[0].dtype == torch.float32
    torch.testing.assert_close(step.embeddings[0], z1.float() @ w_p)


WORLD_SIZE = 2


def _rank_z(rank: int) -> torch.Tensor:
    return torch.randn(8, 6, generator=torch.Generator().manual_seed(10 + rank)) * (rank + 1)


def _correlation_worker(rank: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE, timeout=datetime.timedelta(seconds=30))
    try:
        model = _iso(correlation_tau=0.5)
        model.update_correlation(_rank_z(rank))
        torch.save(model.correlation, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_isoloss_correlation_is_averaged_over_ranks(tmp_path):
    spawn_ranks(_correlation_worker, str(tmp_path), world_size=WORLD_SIZE, timeout_s=90)
    expected = 0.5 * sum(z.T @ z / len(z) for z in map(_rank_z, range(WORLD_SIZE))) / WORLD_SIZE
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD_SIZE)]
    assert torch.equal(results[0], results[1])  # every rank holds the same C
    torch.testing.assert_close(results[0], expected)


# ---------------------------------------------------------------------------------------------
# FroSSL
# ---------------------------------------------------------------------------------------------


def test_frossl_multi_view_loss_space_is_unnormalised_projection():
    torch.manual_seed(0)
    model = FroSSL(projector_dims=[16, 8], invariance_weight=1.5, **MLP).train()
    assert [m.out_features for m in FroSSL(**MLP).projector if isinstance(m, torch.nn.Linear)] == [2048, 2048, 1024]
    views = _views(count=3)
    step = model.ssl_step(views)
    z = list(_projector_output(model, views).chunk(3))
    assert len(step.embeddings) == 3
    for exposed, expected in zip(step.embeddings, z):
        torch.testing.assert_close(exposed, expected)
    # not normalised per dimension: the loss is, the exposed embeddings are not
    assert not torch.allclose(z[0].norm(dim=0), torch.ones(8))
    torch.testing.assert_close(step.loss, frossl_loss(z, 1.5))
    with pytest.raises(ValueError, match="at least 2 views"):
        model.training_step({"views": views[:1]}, 0)


# ---------------------------------------------------------------------------------------------
# VICReg
# ---------------------------------------------------------------------------------------------


def test_vicreg_expander_loss_and_exposure():
    linears = [m for m in VICReg(**MLP).expander if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [2048, 2048, 2048] and linears[-1].bias is None
    torch.manual_seed(0)
    model = VICReg(projector_dims=[16, 8], invariance_weight=2.0, variance_weight=3.0, covariance_weight=0.5, **MLP).train()
    views = _views()
    step = model.ssl_step(views)
    z1, z2 = model.expander(torch.cat(model.encode_views(views))).chunk(2)
    torch.testing.assert_close(step.embeddings[0], z1)  # loss space = expander output
    torch.testing.assert_close(step.embeddings[1], z2)
    torch.testing.assert_close(step.loss, vicreg_loss(z1, z2, 2.0, 3.0, 0.5))
    with pytest.raises(ValueError, match="weights"):
        VICReg(variance_weight=-1.0, **MLP)


# ---------------------------------------------------------------------------------------------
# Real CIFAR-10 images
# ---------------------------------------------------------------------------------------------


@pytest.mark.real_data
@pytest.mark.parametrize("method", ["simsiam", "byol", "isoloss", "frossl", "vicreg"])
def test_fit_and_validate_on_real_cifar10(method, real_data_root, tmp_path):
    run_dir = tmp_path / method
    args = [
        "--config", str(REPO / "configs" / method / "cifar10.yaml"), *TINY_RESNET,
        "--data.init_args.root", str(real_data_root), "--data.init_args.batch_size", "16",
        "--data.init_args.max_train_samples", "128", "--data.init_args.max_val_samples", "64",
        "--trainer.max_epochs", "1",
    ]
    main(["fit", *args, "--run_dir", str(run_dir)])
    metrics = run_dir / "metrics.csv"
    assert all(math.isfinite(v) for v in metric_values(metrics, "train/loss"))
    assert metric_values(metrics, "norm/mean") and 0.0 <= metric_values(metrics, "knn/top1")[-1] <= 1.0
    main(["validate", *args, "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt")])
    assert metric_values(next(run_dir.glob("validate-*")) / "metrics.csv", "knn/top1")
