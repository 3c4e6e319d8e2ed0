from __future__ import annotations

import pytest
import torch
from jsonargparse import ArgumentParser

from conftest import REPO, TINY_RESNET, write_image_folder
from test_sweep import fit_parser  # noqa: F401  (the real `ssl-norms fit` parser, built once)
from ssl_norms.cli import main
from ssl_norms.methods import SimCLR
from ssl_norms.models import build_backbone, mlp_head
from ssl_norms.optim import build_optimizer

METHODS = sorted(p.parent.name for p in (REPO / "configs").glob("*/cifar10.yaml") if p.parent.name != "data")
VIT_CIFAR = ["--config", str(REPO / "configs" / "simclr" / "cifar10.yaml"),
             "--config", str(REPO / "configs" / "presets" / "vit_tiny_cifar.yaml")]


@pytest.mark.parametrize("width, expected_dim", [(64, 512), (16, 128)])
def test_resnet18_cifar_stem_and_width(width, expected_dim):
    net, dim = build_backbone("resnet18", cifar_stem=True, width=width)
    assert dim == expected_dim
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, torch.nn.Identity)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, expected_dim)


def test_resnet50_imagenet_stem_feature_dim():
    net, dim = build_backbone("resnet50", width=16)
    assert dim == 16 * 8 * 4 and net.conv1.kernel_size == (7, 7)
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, dim)


def test_standard_resnet18_matches_torchvision_parameter_count():
    import torchvision

    net, _ = build_backbone("resnet18")
    reference = torchvision.models.resnet18()
    expected = sum(p.numel() for n, p in reference.named_parameters() if not n.startswith("fc."))
    assert sum(p.numel() for p in net.parameters()) == expected


def test_timm_backbone_and_unknown_name():
    net, dim = build_backbone("resnet10t")
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, dim)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("no_such_net_xyz")


def test_a_vit_built_for_224_px_refuses_32_px_images_in_one_line_naming_img_size():
    net, _ = build_backbone("vit_tiny_patch16_224")
    message = ("backbone vit_tiny_patch16_224 takes 224x224 images, got 32x32: build it for this size with "
               "--model.init_args.backbone_kwargs '{img_size: 32, patch_size: 4}'")
    with pytest.raises(ValueError) as refused:
        net(torch.zeros(1, 3, 32, 32))
    assert str(refused.value) == message
    with pytest.raises(ValueError, match=r"got 48x32: .*'\{img_size: \[48, 32\], patch_size: 4\}'"):
        net(torch.zeros(1, 3, 48, 32))
    net, _ = build_backbone("vit_tiny_patch16_224", backbone_kwargs={"img_size": 128})
    with pytest.raises(ValueError, match=r"takes 128x128 images, got 160x160: .*'\{img_size: 160\}'$"):  # 10 patches a side: no patch hint
        net(torch.zeros(1, 3, 160, 160))


def test_backbone_kwargs_build_a_vit_for_32_px_images():
    net, dim = build_backbone("vit_tiny_patch16_224", backbone_kwargs={"img_size": 32, "patch_size": 4})
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, dim) and dim == 192
    assert net.pos_embed.shape == (1, 1 + (32 // 4) ** 2, 192)  # class token + an 8x8 grid of patches
    model = SimCLR(backbone="vit_tiny_patch16_224", backbone_kwargs={"img_size": 32, "patch_size": 4}, projector_dims=[16], warmup_epochs=0)
    assert model.hparams.backbone_kwargs == {"img_size": 32, "patch_size": 4}
    assert model.embed(torch.randn(2, 3, 32, 32))[1].shape == (2, 16)
    parser = ArgumentParser()
    parser.add_class_arguments(SimCLR, "model")
    assert parser.parse_args(["--model.backbone_kwargs", "{img_size: 32, patch_size: 4}"]).model.backbone_kwargs == {"img_size": 32, "patch_size": 4}


def test_backbone_kwargs_go_to_timm_models_only():
    for name in ("resnet18", "mlp"):
        with pytest.raises(ValueError, match=f"backbone_kwargs go to timm models; the '{name}' backbone takes none"):
            build_backbone(name, input_dim=4, backbone_kwargs={"img_size": 32})
    with pytest.raises(ValueError, match="backbone resnet10t does not take backbone_kwargs .*'img_size'"):
        build_backbone("resnet10t", backbone_kwargs={"img_size": 32})


def test_mlp_head_shapes_and_batchnorm_last():
    head = mlp_head([8, 16, 4], batchnorm_last=True)
    assert isinstance(head[-1], torch.nn.BatchNorm1d)
    assert head(torch.randn(5, 8)).shape == (5, 4)


def test_mlp_backbone_hidden_layers_and_input_dim():
    net, dim = build_backbone("mlp", input_dim=6)
    assert dim == 256 and net(torch.randn(3, 6)).shape == (3, 256)  # default [256, 256]
    net, dim = build_backbone("mlp", input_dim=6, hidden_dims=[])  # no hidden layer: the input itself
    assert dim == 6 and not any(isinstance(m, torch.nn.Linear) for m in net)
    for bad in (None, 0):
        with pytest.raises(ValueError, match="needs input_dim >= 1"):
            build_backbone("mlp", input_dim=bad)


@pytest.mark.parametrize("method", METHODS)
def test_the_vit_preset_stacks_on_every_method_config(fit_parser, method):
    """Its settings land on each method's own (a one-block ViT keeps this quick): the method trains
    a step on 32 px views with AdamW and the no-decay group."""
    config = fit_parser.parse_args(["fit", "--config", str(REPO / "configs" / method / "cifar10.yaml"), *VIT_CIFAR[2:]]).fit
    module, name = config.model.class_path.rsplit(".", 1)
    init_args = config.model.init_args.clone().as_dict()
    assert (init_args["backbone"], init_args["optimizer"], init_args["exclude_bias_and_norm_from_wd"]) == (
        "vit_tiny_patch16_224", "adamw", True)
    one_block = {**init_args["backbone_kwargs"], "depth": 1}
    model = getattr(__import__(module, fromlist=[name]), name)(**{**init_args, "backbone_kwargs": one_block})
    groups = model._split_weight_decay(model.parameter_groups())
    assert {id(p) for g in groups if g.get("no_decay") for p in g["params"]} == model.no_weight_decay_parameters() & {
        id(p) for g in groups for p in g["params"]}
    optimizer = build_optimizer("adamw", groups, lr=init_args["lr"])
    model.ssl_step([torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)]).loss.backward()
    optimizer.step()


def test_the_vit_preset_trains_on_32_px_images_with_adamw_and_its_no_decay_group(tmp_path):
    """The preset on a method config, one optimizer step on 32 px images: ViT-Tiny with 4 px patches,
    AdamW, decay on the weight matrices only."""
    images = write_image_folder(tmp_path / "images", {"train": 2, "test": 2})
    run_dir = tmp_path / "run"
    main(["fit", *VIT_CIFAR, *TINY_RESNET, "--data.init_args.root", str(images), "--data.init_args.batch_size", "4",
          "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0", "--model.init_args.warmup_epochs", "0",
          "--run_dir", str(run_dir)])
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    assert hparams["backbone"] == "vit_tiny_patch16_224" and hparams["backbone_kwargs"] == {"img_size": 32, "patch_size": 4}
    assert checkpoint["state_dict"]["backbone.pos_embed"].shape == (1, 1 + 8 * 8, 192)
    assert checkpoint["global_step"] == 1
    (state,) = checkpoint["optimizer_states"]
    decayed, exempt = state["param_groups"]
    assert (decayed["weight_decay"], exempt["weight_decay"], decayed["initial_lr"]) == (0.05, 0.0, pytest.approx(5e-4))
    assert decayed["betas"] == exempt["betas"] == (0.9, 0.999)
    shapes = {name: [tuple(state["state"][i]["exp_avg"].shape) for i in group["params"]] for name, group in
              (("decayed", decayed), ("exempt", exempt))}
    tokens = [(1, 1, 192), (1, 65, 192)]  # the class token and position embedding (timm's no_weight_decay())
    assert all(len(shape) >= 2 for shape in shapes["decayed"]) and not set(tokens) & set(shapes["decayed"])
    assert [shape for shape in shapes["exempt"] if len(shape) > 1] == tokens and len(shapes["exempt"]) > 2
    assert all(s["step"] == 1 for s in state["state"].values())  # every parameter took its AdamW step


def test_a_misfitting_input_size_is_refused_before_any_run_folder_exists(tmp_path, capsys):
    """Found when the model and data are built, before the run starts: one line, exit 2, no folder."""
    images = write_image_folder(tmp_path / "images", {"train": 2, "test": 2})
    run_dir = tmp_path / "runs" / "new"
    with pytest.raises(SystemExit) as exited:
        main(["fit", *VIT_CIFAR, *TINY_RESNET, "--data.init_args.root", str(images), "--model.init_args.backbone_kwargs",
              "{img_size: 64, patch_size: 8}", "--run_dir", str(run_dir)])
    assert exited.value.code == 2
    assert capsys.readouterr().err == ("ssl-norms: error: backbone vit_tiny_patch16_224 takes 64x64 images, got 32x32: build it "
                                       "for this size with --model.init_args.backbone_kwargs '{img_size: 32, patch_size: 4}'\n")
    assert not (tmp_path / "runs").exists()
