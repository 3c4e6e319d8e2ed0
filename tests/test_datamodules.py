"""CIFAR-100, Flowers102, ImageNet-100 and the named evaluation sets, on generated fixtures in the
official on-disk formats and on the real data under $SSL_NORMS_DATA where it exists."""

from __future__ import annotations

import pickle
import sys
import types
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from scipy.io import savemat
from torchvision.io import write_jpeg

from ssl_norms.callbacks import EmbeddingNormMonitor
from ssl_norms.data import CIFAR100DataModule, CIFAR10DataModule, Flowers102DataModule, ImageNet100DataModule, load_eval_set
from ssl_norms.data.eval_sets import canonical_eval_set_name
from ssl_norms.data.imagenet import materialise_hf_imagenet
from ssl_norms.data.readers import read_flowers_labels, read_flowers_splits
from ssl_norms.methods import SimCLR
from test_data import write_cifar10_pickles


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_NORMS_CACHE", str(tmp_path / "cache"))


def coloured_image(height: int, width: int, label: int, generator: torch.Generator) -> torch.Tensor:
    """A random uint8 image whose mean colour depends on its class."""
    return (torch.rand(3, height, width, generator=generator) * 120 + 30 * label).clamp(0, 255).to(torch.uint8)


def write_cifar100_pickles(root: Path, n_train: int = 30, n_test: int = 12) -> Path:
    """torchvision's on-disk CIFAR-100 format: ``cifar-100-python/{train,test,meta}`` pickles."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name, n in (("train", n_train), ("test", n_test)):
        fine = rng.integers(0, 100, n)
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": list(fine),
                 "coarse_labels": list(fine // 5), "filenames": [f"img_{i}.png" for i in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": [f"c{i}" for i in range(20)]}, f)
    return root


def write_flowers(root: Path, splits: dict[str, list[int]], num_images: int, num_classes: int = 4) -> Path:
    """torchvision's Flowers102 layout: ``flowers-102/jpg/image_%05d.jpg``, ``imagelabels.mat``, ``setid.mat``
    (1-based ids and classes, as the official files)."""
    folder = root / "flowers-102"
    (folder / "jpg").mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    labels = np.array([(i % num_classes) + 1 for i in range(num_images)], dtype=np.uint8)
    for i in range(1, num_images + 1):
        height, width = 40 + 4 * (i % 3), 48 - 4 * (i % 2)  # varying sizes, as the real images
        write_jpeg(coloured_image(height, width, int(labels[i - 1]) - 1, g), str(folder / "jpg" / f"image_{i:05d}.jpg"), quality=90)
    savemat(str(folder / "imagelabels.mat"), {"labels": labels[None, :]})
    savemat(str(folder / "setid.mat"), {key: np.array(ids, dtype=np.uint16)[None, :] for key, ids in splits.items()})
    return root


FLOWER_SPLITS = {"trnid": [1, 2, 3, 4, 5, 6], "valid": [7, 8, 9, 10], "tstid": list(range(11, 27))}


def write_imagenet(root: Path, num_classes: int = 3, train: int = 5, val: int = 2) -> Path:
    """``imagenet100/{train,val}/<wnid>/*.JPEG`` with images of varying size."""
    g = torch.Generator().manual_seed(0)
    for split, count in (("train", train), ("val", val)):
        for c in range(num_classes):
            folder = root / "imagenet100" / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            for i in range(count):
                write_jpeg(coloured_image(36 + 6 * (i % 3), 44, c, g), str(folder / f"{split}_{c}_{i:03d}.JPEG"), quality=90)
    return root


# ---- CIFAR-100 ----------------------------------------------------------------------------------
def test_cifar100_torchvision_pickles(tmp_path):
    root = write_cifar100_pickles(tmp_path)
    data = CIFAR100DataModule(root=str(root), batch_size=6, num_workers=0)
    data.setup()
    assert data.num_classes == 100 and data.jitter_strength == 0.5 and data.eval_set_names == ["cifar100_test"]
    assert len(data.train_set) == len(data.bank_set) == 30 and len(data.val_set) == 12
    with open(root / "cifar-100-python" / "train", "rb") as f:
        entry = pickle.load(f)
    assert data.bank_set.targets.tolist() == list(entry["fine_labels"])
    assert torch.equal(data.bank_set.images[3], torch.from_numpy(entry["data"][3].reshape(3, 32, 32)))
    batch = next(iter(data.train_dataloader()))
    assert [v.shape for v in batch["views"]] == [(6, 3, 32, 32)] * 2


def test_cifar100_image_folder(tmp_path):
    from conftest import write_image_folder

    write_image_folder(tmp_path / "cifar100", {"train": 4, "test": 2}, num_classes=3)
    data = CIFAR100DataModule(root=str(tmp_path), num_workers=0)
    data.setup()
    assert len(data.train_set) == 12 and len(data.val_set) == 6


def test_cifar100_download_failure_is_one_line(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno 101] Network is unreachable>")

    monkeypatch.setattr(CIFAR100DataModule, "torchvision_dataset", staticmethod(offline))
    with pytest.raises(FileNotFoundError) as err:
        CIFAR100DataModule(root=str(tmp_path / "nothing"), download=True).setup()
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "nothing") in message
    assert "cifar-100-python" in message and "SSL_NORMS_DATA" in message and "download failed" in message


# ---- Flowers102 ---------------------------------------------------------------------------------
def test_flowers_real_split_sizes(real_data_root):
    meta = real_data_root / "flowers102-meta"
    splits = read_flowers_splits(meta / "setid.mat")
    assert {k: len(v) for k, v in splits.items()} == {"train": 1020, "val": 1020, "test": 6149}
    labels = read_flowers_labels(meta / "imagelabels.mat")
    assert len(labels) == 8189 and labels.min() == 0 and labels.max() == 101
    train_counts = np.bincount(labels[splits["train"] - 1], minlength=102)
    test_counts = np.bincount(labels[splits["test"] - 1], minlength=102)
    assert (train_counts == 10).all()  # the conventional training split is balanced ...
    assert test_counts.min() >= 20 and test_counts.max() > 5 * test_counts.min()  # ... the paper's is long-tailed


def test_flowers_fixture_paper_and_conventional_splits(tmp_path):
    root = write_flowers(tmp_path, FLOWER_SPLITS, num_images=26)
    data = Flowers102DataModule(root=str(root), image_size=24, batch_size=4, num_workers=0)
    data.setup()
    assert data.eval_set_names == ["flowers102_val"]
    assert len(data.train_set) == len(data.bank_set) == 16 and len(data.val_set) == 4
    assert data.bank_set.targets.tolist() == [(i - 1) % 4 for i in range(11, 27)]
    batch = next(iter(data.train_dataloader()))
    assert [v.shape for v in batch["views"]] == [(4, 3, 24, 24)] * 2
    assert data.val_set[0]["image"].shape == (3, 24, 24)
    conventional = Flowers102DataModule(root=str(root), splits="conventional", image_size=24, num_workers=0)
    conventional.setup()
    assert len(conventional.train_set) == 6 and len(conventional.val_set) == 16
    assert conventional.eval_set_names == ["flowers102_test"]


def test_flowers_missing_names_layout_env_and_download(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        Flowers102DataModule(root=str(tmp_path / "none")).setup()
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "none") in message
    assert "flowers-102/jpg/image_NNNNN.jpg" in message and "SSL_NORMS_DATA" in message and "download true" in message


# ---- ImageNet-100 -------------------------------------------------------------------------------
@pytest.mark.parametrize("in_memory", [True, False])
def test_imagenet_folder_cap_per_class_and_memory_modes(tmp_path, in_memory):
    root = write_imagenet(tmp_path)
    data = ImageNet100DataModule(root=str(root), image_size=32, max_per_class=3, in_memory=in_memory, batch_size=4, num_workers=0)
    data.setup()
    assert data.num_classes == 3 and data.class_names == ["n00000000", "n00000001", "n00000002"]
    assert len(data.train_set) == 9 and len(data.val_set) == 6  # at most 3 per class; val is not capped
    assert data.bank_set.targets.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    batch = next(iter(data.train_dataloader()))
    assert [v.shape for v in batch["views"]] == [(4, 3, 32, 32)] * 2
    item = data.bank_set[4]
    assert item["image"].shape == (3, 32, 32) and int(item["index"]) == 4 and int(item["label"]) == 1
    reference = ImageNet100DataModule(root=str(root), image_size=32, max_per_class=3, in_memory=not in_memory, num_workers=0)
    reference.setup()
    torch.testing.assert_close(item["image"], reference.bank_set[4]["image"])  # both paths decode alike


def test_imagenet_standard_pipeline_and_memory_rule(tmp_path):
    root = write_imagenet(tmp_path)
    data = ImageNet100DataModule(root=str(root), pipeline="standard", image_size=28, batch_size=3, num_workers=0)
    data.setup()
    assert data.eval_resize == 32  # 28 * 256 / 224
    batch = next(iter(data.train_dataloader()))
    assert [v.shape for v in batch["views"]] == [(3, 3, 28, 28)] * 2
    assert data.val_set[0]["image"].shape == (3, 28, 28)
    assert ImageNet100DataModule().image_size == 128 and ImageNet100DataModule(pipeline="standard").image_size == 224
    paper = ImageNet100DataModule(image_size=224)
    assert not paper.fits_in_memory(126_689) and paper.fits_in_memory(10_000)  # 19 GB versus 1.5 GB at 224 px


def test_imagenet_class_list(tmp_path):
    root = write_imagenet(tmp_path, num_classes=4)
    listing = tmp_path / "classes.txt"
    listing.write_text("# the classes to keep\nn00000003\nn00000001\n\n")
    data = ImageNet100DataModule(root=str(root), class_list=str(listing), image_size=16, num_workers=0)
    data.setup()
    assert data.class_names == ["n00000001", "n00000003"] and data.num_classes == 2
    assert len(data.train_set) == 10 and data.val_set.targets.tolist() == [0, 0, 1, 1]
    listing.write_text("n00000001\nn99999999\n")
    with pytest.raises(ValueError, match=r"^class_list .*classes.txt: 1 classes not found under .* \(first: n99999999\)$"):
        ImageNet100DataModule(root=str(root), class_list=str(listing), num_workers=0).setup()


def test_imagenet_missing_names_root_layout_env_and_hub_option(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        ImageNet100DataModule(root=str(tmp_path)).setup()
    message = str(err.value)
    assert "\n" not in message and str(tmp_path) in message and "{train,val}/<wnid>" in message
    assert "SSL_NORMS_DATA" in message and "huggingface" in message


@pytest.mark.parametrize("in_memory", [True, False])
def test_corrupt_image_named_or_skipped_and_counted(tmp_path, in_memory):
    root = write_imagenet(tmp_path, train=3)
    bad = root / "imagenet100" / "train" / "n00000001" / "train_1_001.JPEG"
    bad.write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(ValueError, match="train_1_001.JPEG.*on_corrupt skip"):
        data = ImageNet100DataModule(root=str(root), image_size=16, in_memory=in_memory, batch_size=9, num_workers=0)
        data.setup()
        next(iter(data.train_dataloader()))
    if not in_memory:  # raised in a loader worker: still one line naming the file
        data = ImageNet100DataModule(root=str(root), image_size=16, in_memory=False, batch_size=9, num_workers=1)
        data.setup()
        with pytest.raises(ValueError) as err:
            next(iter(data.train_dataloader()))
        assert "\n" not in str(err.value) and str(err.value).startswith(f"cannot decode image file {bad}: ")
    data = ImageNet100DataModule(root=str(root), image_size=16, in_memory=in_memory, on_corrupt="skip", batch_size=8, num_workers=0)
    with pytest.warns(UserWarning, match="train_1_001.JPEG"):
        data.setup()
        batch = next(iter(data.bank_dataloader()))
    if in_memory:
        assert data.bank_set.targets.tolist() == [0, 0, 0, 1, 1, 2, 2, 2]  # left out of the decoded set
    else:
        assert data.bank_set.skipped == {bad} and batch["index"].tolist().count(5) == 2  # the next image stands in


class FakeHubDataset:
    """What ``datasets.load_dataset(...).cast_column("image", Image(decode=False))`` yields."""

    def __init__(self, rows, names):
        self.rows, self.features, self.casts = rows, {"label": types.SimpleNamespace(names=names)}, []

    def cast_column(self, column, feature):
        self.casts.append((column, feature.decode))
        return self

    def __iter__(self):
        return iter(self.rows)


def fake_datasets_module(calls: list) -> types.ModuleType:
    import io

    from PIL import Image as PILImage

    def encoded(label, i):
        buffer = io.BytesIO()
        PILImage.new("RGB", (20 + i, 18), (60 * label, 90, 30)).save(buffer, format="JPEG")
        return {"bytes": buffer.getvalue(), "path": f"img_{label}_{i}.JPEG"}

    def load_dataset(name, split):
        calls.append((name, split))
        if split not in ("train", "validation"):
            raise ValueError(f"Unknown split {split}")
        count = 3 if split == "train" else 1
        return FakeHubDataset([{"image": encoded(c, i), "label": c} for c in range(2) for i in range(count)], ["n01440764", "n01443537"])

    module = types.ModuleType("datasets")
    module.load_dataset = load_dataset
    module.Image = lambda decode=True: types.SimpleNamespace(decode=decode)
    return module


def test_huggingface_copy_is_materialised_once(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets_module(calls))
    data = ImageNet100DataModule(root=str(tmp_path), huggingface="clane9/imagenet-100", image_size=16, num_workers=0)
    data.setup()
    assert calls == [("clane9/imagenet-100", "train"), ("clane9/imagenet-100", "validation")]
    assert sorted(p.name for p in (tmp_path / "imagenet100" / "train").iterdir()) == ["n01440764", "n01443537"]
    assert (tmp_path / "imagenet100" / ".complete").exists()
    assert len(data.train_set) == 6 and len(data.val_set) == 2 and data.num_classes == 2
    again = ImageNet100DataModule(root=str(tmp_path), huggingface="clane9/imagenet-100", image_size=16, num_workers=0)
    again.setup()
    assert len(calls) == 2  # never downloaded or written again
    materialise_hf_imagenet("clane9/imagenet-100", tmp_path / "imagenet100")
    assert len(calls) == 2


def test_huggingface_without_datasets_package_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails
    with pytest.raises(ValueError, match=r"needs the `datasets` package: pip install 'ssl-norms\[hf\]'"):
        ImageNet100DataModule(root=str(tmp_path), huggingface="clane9/imagenet-100").setup()


# ---- evaluation sets ----------------------------------------------------------------------------
def test_mnist_from_real_data(real_data_root):
    if not (real_data_root / "MNIST" / "raw").is_dir():
        pytest.skip("no MNIST under SSL_NORMS_DATA")
    dataset = load_eval_set("MNIST-test", real_data_root)
    assert len(dataset) == 10_000
    item = dataset[0]
    assert item["image"].shape == (3, 32, 32) and int(item["label"]) == 7
    assert torch.equal(item["image"][0], item["image"][1]) and torch.equal(item["image"][1], item["image"][2])
    train = load_eval_set("mnist_train", real_data_root, size=28, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert len(train) == 60_000 and train[0]["image"].shape == (3, 28, 28)
    assert torch.bincount(train.targets).tolist()[1] == 6742


def test_eval_set_names_and_missing_data(tmp_path):
    assert canonical_eval_set_name("CIFAR100-test") == "cifar100_test" and canonical_eval_set_name("mnist") == "mnist_test"
    with pytest.raises(ValueError, match="unknown evaluation set 'svhn'; choose from"):
        load_eval_set("svhn", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no MNIST under .*MNIST/raw/t10k-images-idx3-ubyte.*SSL_NORMS_DATA"):
        load_eval_set("mnist", tmp_path)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_corrupt_dataset_files_are_one_line_naming_the_file(tmp_path, damage):
    """Every on-disk format: a damaged file is a one-line ValueError naming it."""
    write_flowers(tmp_path, FLOWER_SPLITS, num_images=26)
    write_cifar100_pickles(tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "t10k-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28]) + bytes(2 * 28 * 28))
    (raw / "t10k-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 2, 3, 7]))
    assert load_eval_set("mnist", tmp_path).targets.tolist() == [3, 7]  # the fixture itself is readable
    cases = {
        tmp_path / "flowers-102" / "setid.mat": lambda: Flowers102DataModule(root=str(tmp_path)).setup(),
        tmp_path / "flowers-102" / "imagelabels.mat": lambda: load_eval_set("flowers102_val", tmp_path),
        tmp_path / "cifar-100-python" / "test": lambda: load_eval_set("cifar100_test", tmp_path),
        raw / "t10k-images-idx3-ubyte": lambda: load_eval_set("mnist", tmp_path),
    }
    for path, load in cases.items():
        intact = path.read_bytes()
        {"empty": lambda: path.write_bytes(b""), "truncated": lambda: _truncate(path),
         "garbage": lambda: path.write_bytes(b"\x07garbage" * 40)}[damage]()
        with pytest.raises(ValueError) as err:
            load()
        assert "\n" not in str(err.value) and str(path) in str(err.value), (path.name, str(err.value))
        path.write_bytes(intact)  # one damaged file at a time


def test_cifar_batch_with_fewer_labels_than_images_is_named(tmp_path):
    root = write_cifar100_pickles(tmp_path)
    path = root / "cifar-100-python" / "train"
    with open(path, "rb") as f:
        entry = pickle.load(f)
    entry["fine_labels"] = entry["fine_labels"][:-1]
    with open(path, "wb") as f:
        pickle.dump(entry, f)
    with pytest.raises(ValueError, match=f"^CIFAR batch file {path} holds 30 images but 29 labels"):
        CIFAR100DataModule(root=str(root)).setup()


def test_file_eval_sets_from_fixtures(tmp_path):
    write_flowers(tmp_path, FLOWER_SPLITS, num_images=26)
    write_imagenet(tmp_path)
    flowers = load_eval_set("flowers102", tmp_path, size=20)
    assert len(flowers) == 16 and flowers[0]["image"].shape == (3, 20, 20)
    imagenet = load_eval_set("imagenet100-val", tmp_path)
    assert len(imagenet) == 6 and imagenet[5]["image"].shape == (3, 128, 128)


def test_extra_eval_sets_are_further_val_loaders_with_norms_logged(tmp_path):
    """A CIFAR-10 DataModule with CIFAR-100 and Flowers102 attached: every set at 32 px with the
    CIFAR-10 normalisation, one validation dataloader each, and ``val/<set>/norm_*`` logged."""
    root = write_cifar10_pickles(tmp_path)
    write_cifar100_pickles(tmp_path)
    write_flowers(tmp_path, FLOWER_SPLITS, num_images=26)
    data = CIFAR10DataModule(root=str(root), batch_size=8, eval_batch_size=8, num_workers=0, extra_eval_sets=["cifar100-test", "flowers102_val"])
    data.setup()
    assert data.eval_set_names == ["cifar10_test", "cifar100_test", "flowers102_val"]
    loaders = data.val_dataloader()
    assert [len(loader.dataset) for loader in loaders] == [20, 12, 4]
    flower = next(iter(loaders[2]))["image"]
    assert flower.shape == (4, 3, 32, 32)
    raw = load_eval_set("flowers102_val", tmp_path, size=32, mean=(0.0,) * 3, std=(1.0,) * 3)[0]["image"]
    mean, std = torch.tensor(data.mean).view(3, 1, 1), torch.tensor(data.std).view(3, 1, 1)
    torch.testing.assert_close(flower[0], (raw - mean) / std)  # the main set's normalisation

    torch.set_num_threads(1)  # tiny kernels: two threads on the busy 2-core machine mostly wait for each other
    torch.manual_seed(0)
    model = SimCLR(backbone_width=4, projector_dims=[16, 8])
    monitor = EmbeddingNormMonitor(quantiles=(0.5,))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[monitor])
    trainer.validate(model, datamodule=data, verbose=False)
    logged = trainer.callback_metrics
    model.eval()
    with torch.no_grad():
        cifar100 = torch.cat([model.embed(b["image"])[1] for b in loaders[1]]).norm(dim=1)
    assert logged["val/cifar100_test/norm_mean"] == pytest.approx(cifar100.mean().item(), rel=1e-5)
    assert logged["val/cifar100_test/norm_q50"] == pytest.approx(cifar100.quantile(0.5).item(), rel=1e-5)
    for name in data.eval_set_names:
        assert {f"val/{name}/{key}" for key in ("norm_mean", "norm_std", "norm_min", "norm_max", "features_norm_mean")} <= set(logged)
    with pytest.raises(ValueError, match="extra_eval_sets needs an image DataModule"):
        from ssl_norms.data import SyntheticLatentClasses

        SyntheticLatentClasses(train_samples=64, val_samples=32, extra_eval_sets=["mnist"]).setup()


@pytest.mark.parametrize(
    "fragments, data_class",
    [
        (["cifar100.yaml", "cifar100_imbalanced.yaml", "norm_study_eval_sets.yaml"], CIFAR100DataModule),
        (["flowers102.yaml"], Flowers102DataModule),
        (["imagenet100.yaml", "imagenet100_224.yaml"], ImageNet100DataModule),
    ],
)
def test_data_config_fragments_stack_on_a_method_config(fragments, data_class, capsys):
    import yaml

    from conftest import REPO
    from ssl_norms.cli import main

    configs = [arg for name in fragments for arg in ("--data", str(REPO / "configs" / "data" / name))]
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(REPO / "configs" / "simclr" / "cifar10.yaml"), *configs, "--print_config"])
    assert done.value.code == 0
    data = yaml.safe_load(capsys.readouterr().out)["data"]
    assert data["class_path"] == f"ssl_norms.data.{data_class.__name__}"
    module = data_class(**data["init_args"])  # every value is valid for the class
    if data_class is CIFAR100DataModule:
        assert (module.imbalance.n_max, module.imbalance.base) == (500, 1.034)
        assert module.eval_set_names == ["cifar100_test", "mnist_test"]  # the main set is not repeated
    if data_class is ImageNet100DataModule:
        assert (module.pipeline, module.image_size, module.eval_resize) == ("standard", 224, 256)
