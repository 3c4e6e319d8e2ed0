"""``ssl-norms export --ckpt CKPT --out backbone.pt``: a run's backbone for use outside ssl-norms.

``backbone.pt`` holds the backbone's ``state_dict`` (no classifier head: it maps images to features)
and ``backbone.json`` beside it the recipe of the module it loads into; both are plain data
(``torch.load(..., weights_only=True)``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ssl_norms.bad_input import UsageError
from ssl_norms.runs import write_atomically

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")


def architecture(hparams: dict[str, Any], feature_dim: int) -> dict[str, Any]:
    """How to build the module a method's backbone loads into: ``build_backbone`` with the recorded
    arguments always works; the standard torchvision/timm constructor is named where one exists."""
    name = hparams["backbone"]
    kwargs = {"name": name, "cifar_stem": hparams.get("cifar_stem", False), "width": hparams.get("backbone_width", 64),
              "input_dim": hparams.get("input_dim"), "hidden_dims": hparams.get("mlp_hidden_dims"),
              "backbone_kwargs": hparams.get("backbone_kwargs")}
    recipe: dict[str, Any] = {"feature_dim": feature_dim, "build": {"function": "ssl_norms.models.build_backbone", "kwargs": kwargs}}
    if name in RESNETS and kwargs["width"] == 64:
        stem = ("; model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False); "
                "model.maxpool = torch.nn.Identity()") if kwargs["cifar_stem"] else ""
        recipe["torchvision"] = f"model = torchvision.models.{name}(){stem}; model.fc = torch.nn.Identity()"
    elif name in RESNETS:  # torchvision builds 64-channel stages only
        recipe["torchvision"] = None
    elif name != "mlp":
        recipe["timm"] = f"model = timm.create_model({name!r}, num_classes=0, **{kwargs['backbone_kwargs'] or {}!r})"
    return recipe


def export(*, ckpt: Path, out: Path, force: bool = False) -> Path:
    """write a checkpoint's backbone as a state_dict, with the recipe of its architecture beside it

    Args:
        ckpt: a checkpoint (e.g. RUN_DIR/checkpoints/last.ckpt) or a run directory (its newest checkpoint)
        out: the state_dict file to write, e.g. backbone.pt; the recipe goes to the same name with .json
        force: replace existing output files
    """
    from ssl_norms.analysis.loading import checkpoint_path, load_model  # weights_only loading, plain data only
    from ssl_norms.run_hooks import AtomicCheckpointIO

    source = checkpoint_path(ckpt)
    recipe_path = out.with_suffix(".json")
    if out.resolve() == source.resolve() or recipe_path.resolve() == source.resolve():
        raise UsageError(f"--out {out} would replace the checkpoint it exports; name another file")
    existing = [str(path) for path in (out, recipe_path) if path.exists()]
    if existing and not force:
        raise UsageError(f"{' and '.join(existing)} exist; pass --force to replace them")
    model = load_model(source)
    recipe = {"checkpoint": str(source.resolve()), **architecture(dict(model.hparams), model.feature_dim),
              "load": f"model.load_state_dict(torch.load({out.name!r}, weights_only=True))"}
    out.parent.mkdir(parents=True, exist_ok=True)
    AtomicCheckpointIO().save_checkpoint(model.backbone.state_dict(), out)
    write_atomically(recipe_path, json.dumps(recipe, indent=2) + "\n")
    print(f"backbone: {out}\narchitecture: {recipe_path}")
    return out
