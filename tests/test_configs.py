"""configs/: how files compose (configs/README.md), and that every user-facing config resolves to
the recipe it states."""

from __future__ import annotations

import pytest
import torch
import yaml

from conftest import REPO
from ssl_norms.data import SSLDataModule
from ssl_norms.methods import SSLMethod
from test_sweep import fit_parser  # noqa: F401  (the real `ssl-norms fit` parser, built once)

CONFIGS = REPO / "configs"
AS_RUN = CONFIGS / "paper" / "as_run"
METHODS = sorted(p.parent.name for p in CONFIGS.glob("*/cifar10.yaml") if "model" in yaml.safe_load(p.read_text()))  # not data/


def parse(parser, *args):
    """The parsed `fit` config, without the file paths jsonargparse records beside the values."""
    return parser.parse_args(["fit", *map(str, args)]).fit.clone(with_meta=False)


def test_composition_rules_hold_for_the_installed_jsonargparse(fit_parser, tmp_path):
    """The rules configs/README.md states, on small files in another folder than configs/: a file
    builds on the one its first key `config:` names (paths relative to the file); a dotted key
    changes one value; a block replaces the base's block; a data file is a data block on the
    command line too (`--data FILE`, merged into the current one)."""
    own = tmp_path / "mine"
    own.mkdir()
    (own / "extra.yaml").write_text("init_args:\n  extra_eval_sets: [mnist_test]\n")
    (own / "tweaked.yaml").write_text(
        f"config: {CONFIGS / 'simsiam' / 'cifar10.yaml'}\n"
        "trainer.max_epochs: 7\n"
        "model.init_args.lr: 0.5\n"
        "data.init_args.num_workers: 5\n"
    )
    (own / "chained.yaml").write_text(
        "config: tweaked.yaml\n"                       # relative to this file, not to the working directory
        "data:\n  class_path: ssl_norms.data.CIFAR100DataModule\n  init_args:\n    batch_size: 64\n"
    )
    base = parse(fit_parser, "--config", CONFIGS / "simsiam" / "cifar10.yaml")
    tweaked = parse(fit_parser, "--config", own / "tweaked.yaml")
    assert (tweaked.trainer.max_epochs, tweaked.model.init_args.lr, tweaked.data.init_args.num_workers) == (7, 0.5, 5)
    # everything else is the base's: the monitor callbacks, the accumulation, the other model values
    assert tweaked.trainer.callbacks == base.trainer.callbacks and tweaked.trainer.accumulate_grad_batches == 4
    assert {**vars(tweaked.model.init_args), "lr": base.model.init_args.lr} == vars(base.model.init_args)
    chained = parse(fit_parser, "--config", own / "chained.yaml")
    assert chained.data.class_path == "ssl_norms.data.CIFAR100DataModule"
    assert chained.data.init_args.batch_size == 64 and chained.data.init_args.num_workers is None  # replaced: the class default (chosen from the cores)
    assert chained.trainer.max_epochs == 7 and chained.model.init_args.lr == 0.5
    stacked = parse(fit_parser, "--config", own / "chained.yaml", "--data", own / "extra.yaml")
    assert stacked.data.init_args.extra_eval_sets == ["mnist_test"] and stacked.data.init_args.batch_size == 64
    # a dotted class_path switches the dataset and keeps the other values (the as-run dataset configs)
    (own / "switched.yaml").write_text("config: tweaked.yaml\ndata.class_path: ssl_norms.data.CIFAR100DataModule\n")
    switched = parse(fit_parser, "--config", own / "switched.yaml")
    assert switched.data.class_path == "ssl_norms.data.CIFAR100DataModule" and switched.data.init_args.num_workers == 5
    # the two limits configs/README.md states: no append in a file, and a dotted key drops a block given by file
    (own / "appended.yaml").write_text("config: tweaked.yaml\ntrainer.callbacks+:\n  - class_path: ssl_norms.callbacks.GradScale\n")
    assert [c.class_path for c in parse(fit_parser, "--config", own / "appended.yaml").trainer.callbacks] == ["ssl_norms.callbacks.GradScale"]
    (own / "cifar100.yaml").write_text("class_path: ssl_norms.data.CIFAR100DataModule\n")
    (own / "dropped.yaml").write_text("config: tweaked.yaml\ndata: cifar100.yaml\ndata.init_args.batch_size: 64\n")
    dropped = parse(fit_parser, "--config", own / "dropped.yaml")
    assert dropped.data.class_path == "ssl_norms.data.CIFAR10DataModule" and dropped.data.init_args.batch_size == 64


def test_every_config_starts_with_what_it_builds_on():
    """`config:` must come first: keys before it would be overwritten by the base."""
    for path in CONFIGS.rglob("*.yaml"):
        keys = list(yaml.safe_load(path.read_text()) or {})
        if "config" in keys and "name" not in keys:  # sweep files (a `name`) use `config` for their base configs
            assert keys[0] == "config", f"{path.relative_to(REPO)}: put `config:` first"


def test_data_files_are_data_blocks():
    """Every file of a data/ folder is a data block (for `--data FILE` and `data: FILE`), never a config."""
    files = [*CONFIGS.glob("data/*.yaml"), *AS_RUN.glob("data/*.yaml")]
    assert len(files) > 10
    for path in files:
        block = yaml.safe_load(path.read_text())
        assert block and set(block) <= {"class_path", "init_args"}, f"{path.relative_to(REPO)}: a data block has class_path and/or init_args only"


@pytest.mark.parametrize("path", sorted(p.relative_to(CONFIGS) for p in CONFIGS.glob("*/*.yaml") if p.parent.name in METHODS), ids=str)
def test_method_configs_run_the_shared_schedule_and_monitors(fit_parser, path):
    base = yaml.safe_load((CONFIGS / "base.yaml").read_text())
    fit = parse(fit_parser, "--config", CONFIGS / path)
    assert fit.seed_everything == base["seed_everything"]
    assert [c.class_path for c in fit.trainer.callbacks] == [c["class_path"] for c in base["trainer"]["callbacks"]]
    knn = fit.trainer.callbacks[1].init_args
    assert (knn.k, knn.temperature, knn.space) == (200, 0.1, "features")
    assert (fit.trainer.max_epochs, fit.trainer.check_val_every_n_epoch, fit.trainer.precision) == (500, 10, None)  # None: ssl_norms.hardware chooses
    assert fit.model.class_path.startswith("ssl_norms.methods.") and fit.data.class_path.startswith("ssl_norms.data.")


# dataset -> data files of configs/data/ that, stacked on the method's CIFAR-10 config with --data,
# give the data block of configs/<method>/<dataset>.yaml
DATA_FILES = {
    "cifar100": ["cifar100.yaml"],
    "cifar10_imbalanced": ["cifar10_imbalanced.yaml"],
    "cifar100_imbalanced": ["cifar100.yaml", "cifar100_imbalanced.yaml"],
    "imagenet100": ["imagenet100.yaml"],
    "flowers102": ["flowers102.yaml"],
}


@pytest.mark.parametrize("dataset", sorted(DATA_FILES))
@pytest.mark.parametrize("method", ["simclr", "simsiam"])
def test_dataset_configs_are_the_cifar10_recipe_on_the_data_files(fit_parser, method, dataset):
    stacked = parse(fit_parser, "--config", CONFIGS / method / "cifar10.yaml", *(a for f in DATA_FILES[dataset] for a in ("--data", CONFIGS / "data" / f)))
    own = parse(fit_parser, "--config", CONFIGS / method / f"{dataset}.yaml")
    assert own.data == stacked.data
    assert own.trainer.callbacks == stacked.trainer.callbacks
    assert own.model.class_path == stacked.model.class_path
    changed = {k for k in vars(own.model.init_args) if own.model.init_args[k] != stacked.model.init_args[k]}
    model, data, trainer = own.model.init_args, own.data.init_args, own.trainer
    if dataset in ("imagenet100", "flowers102"):  # 128 px images: the ImageNet stem (and SimSiam's ImageNet lr rule)
        assert changed == ({"cifar_stem", "lr"} if method == "simsiam" else {"cifar_stem"})
        assert not model.cifar_stem and data.image_size == 128 and data.pipeline == "paper"
    else:
        assert not changed
    if dataset == "flowers102":
        assert data.splits == "paper"  # trains on the official test split
    if method == "simclr":
        assert (model.lr, model.weight_decay, model.temperature, data.batch_size, trainer.accumulate_grad_batches) == (0.3, 1e-6, 0.5, 256, 1)
    else:
        assert (model.lr, model.weight_decay, data.batch_size, trainer.accumulate_grad_batches) == (0.2 if dataset in ("imagenet100", "flowers102") else 0.12, 5e-4, 256, 4)


@pytest.mark.parametrize("method", METHODS)
def test_configs_build_their_model_and_cifar100_mirrors_cifar10(fit_parser, method):
    cifar10 = parse(fit_parser, "--config", CONFIGS / method / "cifar10.yaml")
    cifar100 = parse(fit_parser, "--config", CONFIGS / method / "cifar100.yaml")
    assert cifar10.data.class_path == "ssl_norms.data.CIFAR10DataModule"
    assert cifar100.data.class_path == "ssl_norms.data.CIFAR100DataModule"
    cifar100.data.class_path = cifar10.data.class_path
    assert all(cifar100[key] == cifar10[key] for key in ("seed_everything", "model", "data", "trainer"))
    module, name = cifar10.model.class_path.rsplit(".", 1)
    cls = getattr(__import__(module, fromlist=[name]), name)
    init_args = {**vars(cifar10.model.init_args), "backbone_width": 4}
    model = cls(**init_args)
    assert model.hparams.lr == init_args["lr"]
    if method == "simsiam":
        assert cifar10.trainer.accumulate_grad_batches == 4 and init_args["weight_decay"] == 5e-4


# ---------------------------------------------------------------------------------------------
# configs/paper/as_run/: the released code's regime, composed by the same rules
# ---------------------------------------------------------------------------------------------

AS_RUN_FITS = sorted(p.name for p in AS_RUN.glob("*.yaml") if "name" not in yaml.safe_load(p.read_text()))  # not the sweeps
AS_RUN_DATASETS = ["cifar100", "cifar10_imbalanced", "cifar100_imbalanced", "flowers102", "imagenet100"]
SIMSIAM_STEPS = {"cifar10_imbalanced": 112, "cifar100_imbalanced": 112, "flowers102": 48, "imagenet100": 984}  # 8 x floor(batches / 8)


def clean_origin(path):
    """The first config outside as_run/ on the chain of `config:` links from ``path``."""
    while path.parent == AS_RUN:
        path = (path.parent / yaml.safe_load(path.read_text())["config"]).resolve()
    return path


def test_every_as_run_config_is_listed():
    methods = ["simclr", "simsiam", "byol", "isoloss", "frossl"]
    expected = {f"{m}_cifar10.yaml" for m in methods} | {"simclr_cifar10_gradscale.yaml"}
    expected |= {f"{m}_{d}.yaml" for m in ("simclr", "simsiam") for d in AS_RUN_DATASETS}
    assert set(AS_RUN_FITS) == expected


@pytest.mark.parametrize("name", AS_RUN_FITS)
def test_as_run_configs_build_on_the_clean_config_and_change_only_what_differs(fit_parser, name):
    """Each as-run config starts with `config:` and reaches the clean recipe of its method; every
    other key changes its base's value (a key that repeats the base is noise); it keeps the shared
    monitors, and its model, data module and callbacks instantiate."""
    path = AS_RUN / name
    spec = yaml.safe_load(path.read_text())
    assert list(spec)[0] == "config", f"{name}: start with the config it departs from"
    own = parse(fit_parser, "--config", path)
    method = own.model.class_path.rsplit(".", 1)[1].lower()
    assert clean_origin(path) == CONFIGS / method / "cifar10.yaml"
    base = parse(fit_parser, "--config", path.parent / spec["config"])
    for key in set(spec) - {"config"}:
        assert key in own and (key not in base or own[key] != base[key]), f"{name}: {key} repeats its base's value"
    monitors = yaml.safe_load((CONFIGS / "base.yaml").read_text())["trainer"]["callbacks"]
    assert [c.class_path for c in own.trainer.callbacks[: len(monitors)]] == [c["class_path"] for c in monitors]
    knn = own.trainer.callbacks[1].init_args
    assert (knn.k, knn.temperature, knn.space) == (200, 0.1, "features")
    cfg = fit_parser.parse_args(["fit", "--config", str(path)])
    with torch.device("meta"):
        init = fit_parser.instantiate(cfg).fit
    assert isinstance(init.model, SSLMethod) and isinstance(init.data, SSLDataModule)
    assert init.model.hparams.lr == own.model.init_args.lr


@pytest.mark.parametrize("name", AS_RUN_FITS)
def test_as_run_configs_state_the_released_precision(fit_parser, name):
    """The clean recipes leave the precision to the hardware (bf16-mixed on bf16 hardware); an as-run
    config trains at the released code's precision wherever it runs (FIDELITY.md)."""
    expected = "16-mixed" if name.startswith("isoloss") else "32-true"
    assert parse(fit_parser, "--config", AS_RUN / name).trainer.precision == expected
    assert parse(fit_parser, "--config", clean_origin(AS_RUN / name)).trainer.precision is None


@pytest.mark.parametrize("dataset", AS_RUN_DATASETS)
@pytest.mark.parametrize("method", ["simclr", "simsiam"])
def test_as_run_dataset_configs_are_the_cifar10_config_on_the_data_blocks(fit_parser, method, dataset):
    """as_run/<method>_<dataset>.yaml = as_run/<method>_cifar10.yaml --data as_run/data/<dataset>.yaml,
    plus the standard stem on 128 px images and, for SimSiam, the released loop's steps per epoch."""
    cifar10 = parse(fit_parser, "--config", AS_RUN / f"{method}_cifar10.yaml")
    stacked = parse(fit_parser, "--config", AS_RUN / f"{method}_cifar10.yaml", "--data", AS_RUN / "data" / f"{dataset}.yaml")
    own = parse(fit_parser, "--config", AS_RUN / f"{method}_{dataset}.yaml")
    assert own.data == stacked.data and own.seed_everything == stacked.seed_everything
    changed = {k for k in vars(own.model.init_args) if own.model.init_args[k] != stacked.model.init_args[k]}
    assert own.model.class_path == stacked.model.class_path and changed == ({"cifar_stem"} if dataset in ("flowers102", "imagenet100") else set())
    steps = SIMSIAM_STEPS.get(dataset) if method == "simsiam" else None
    trainer = {k for k in vars(own.trainer) if own.trainer[k] != stacked.trainer[k]}
    assert trainer == ({"limit_train_batches"} if steps else set()) and own.trainer.limit_train_batches == (steps or cifar10.trainer.limit_train_batches)
    # the data block keeps the CIFAR-10 config's batch and augmentation
    for key in ("batch_size", "eval_batch_size", "color_jitter", "normalize", "min_scale"):
        assert own.data.init_args[key] == cifar10.data.init_args[key], key


@pytest.mark.parametrize("config", ["byol_cifar10.yaml", "simclr_cifar10_gradscale.yaml"])
def test_as_run_data_blocks_stack_on_every_as_run_cifar10_config(fit_parser, config):
    base = parse(fit_parser, "--config", AS_RUN / config)
    for dataset in AS_RUN_DATASETS:
        stacked = parse(fit_parser, "--config", AS_RUN / config, "--data", AS_RUN / "data" / f"{dataset}.yaml")
        assert stacked.data.init_args.batch_size == base.data.init_args.batch_size and not stacked.data.init_args.normalize
        assert stacked.data.init_args.color_jitter == "independent" and stacked.model == base.model and stacked.trainer == base.trainer
