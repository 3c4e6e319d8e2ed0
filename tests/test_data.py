"""DataModules: CIFAR-10 formats, the latent-class generator, errors."""

from __future__ import annotations

import pickle
import re

import numpy as np
import pytest
import torch

from conftest import write_image_folder
from ssl_norms.data import CIFAR10DataModule, SyntheticLatentClasses
from ssl_norms.data.synthetic import LatentClasses, class_counts, sample_dataset


def write_cifar10_pickles(root, n_train=40, n_test=20):
    """torchvision's on-disk CIFAR-10 format (pickled batches of uint8 rows)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def batch(n):
        return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, n))}

    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch(n_train // 5), f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch(n_test), f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return root


def test_cifar10_torchvision_format(tmp_path):
    root = write_cifar10_pickles(tmp_path)
    data = CIFAR10DataModule(root=str(root), batch_size=8, num_workers=0)
    data.setup()
    assert len(data.train_set) == 40 and len(data.val_set) == 20
    batch = next(iter(data.train_dataloader()))
    assert len(batch["views"]) == 2 and batch["views"][0].shape == (8, 3, 32, 32)
    assert batch["views"][0].dtype == torch.float32
    assert not torch.equal(batch["views"][0], batch["views"][1])  # two different augmentations


def test_cifar10_image_folder_keeps_order_and_subsets(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_NORMS_CACHE", str(tmp_path / "cache"))
    root = write_image_folder(tmp_path / "data", {"train": 5, "test": 2}, num_classes=3)
    data = CIFAR10DataModule(root=str(root), batch_size=4, num_workers=0, max_train_samples=10)
    data.setup()
    assert len(data.train_set) == 10 and len(data.bank_set) == 10 and len(data.val_set) == 6
    assert torch.equal(data.bank_set.labels, torch.tensor([0] * 5 + [1] * 5 + [2] * 5))
    assert list((tmp_path / "cache").glob("*.pt")), "decoded images are cached"
    again = CIFAR10DataModule(root=str(root), num_workers=0)
    again.setup()
    assert torch.equal(again.bank_set.images, data.bank_set.images)


def test_data_root_from_environment(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "envdata", {"train": 2, "test": 1}, num_classes=2)
    monkeypatch.setenv("SSL_NORMS_DATA", str(root))
    assert CIFAR10DataModule().root == root


def test_missing_data_error(tmp_path):
    data = CIFAR10DataModule(root=str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="SSL_NORMS_DATA.*download true"):
        data.setup()


def test_corrupt_image_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_NORMS_CACHE", str(tmp_path / "cache"))
    root = write_image_folder(tmp_path / "data", {"train": 2, "test": 1}, num_classes=2)
    bad = root / "train" / "class_1" / "0001.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="0001.png"):
        CIFAR10DataModule(root=str(root)).setup()


def _cached_cifar_folder(tmp_path, monkeypatch):
    """A CIFAR-10 image folder decoded once: (DataModule, the training split's cache file)."""
    monkeypatch.setenv("SSL_NORMS_CACHE", str(tmp_path / "cache"))
    root = write_image_folder(tmp_path / "data", {"train": 3, "test": 2}, num_classes=2)
    data = CIFAR10DataModule(root=str(root), num_workers=0)
    data.setup()
    (cache,) = (tmp_path / "cache").glob("train-*.pt")
    return data, cache


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "wrong_shape"])
def test_corrupt_image_cache_is_rebuilt_from_the_images(tmp_path, monkeypatch, damage):
    first, cache = _cached_cifar_folder(tmp_path, monkeypatch)
    if damage == "truncated":
        cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
    elif damage == "garbage":
        cache.write_bytes(b"\x00not a tensor file" * 64)
    elif damage == "empty":
        cache.write_bytes(b"")
    else:  # a readable file with another set in it: 4 images for 6 files
        torch.save({"images": torch.zeros(4, 3, 32, 32, dtype=torch.uint8), "labels": torch.zeros(4, dtype=torch.long)}, cache)
    with pytest.warns(UserWarning, match=f"decoded-image cache {re.escape(str(cache))} is unreadable .*rebuilding it") as caught:
        again = CIFAR10DataModule(root=first.root, num_workers=0)
        again.setup()
    assert not [w for w in caught if "weights_only" in str(w.message)]  # no advice to unpickle a cache file
    assert torch.equal(again.bank_set.images, first.bank_set.images) and torch.equal(again.bank_set.labels, first.bank_set.labels)
    saved = torch.load(cache, weights_only=True)  # replaced by a good copy
    assert torch.equal(saved["images"], first.bank_set.images) and torch.equal(saved["labels"], first.bank_set.labels)


def test_corrupt_image_cache_that_cannot_be_replaced_is_one_line_naming_it(tmp_path, monkeypatch):
    first, cache = _cached_cifar_folder(tmp_path, monkeypatch)
    cache.unlink()
    cache.mkdir()  # a non-empty directory where the cache file should be: unreadable and not replaceable
    (cache / "stray").write_text("x")
    with pytest.warns(UserWarning, match="rebuilding it"), pytest.raises(ValueError) as err:
        CIFAR10DataModule(root=first.root, num_workers=0).setup()
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"the decoded-image cache {cache} is unreadable") and message.endswith("; delete it")


def test_latent_generator_is_seeded_on_sphere_and_imbalanced():
    world = LatentClasses.create(4, 11, 64, sigma=0.1, seed=3)
    assert torch.allclose(world.centres.norm(dim=1), torch.ones(4))
    counts = class_counts(1500, [8, 4, 2, 1], 4)
    assert counts == [800, 400, 200, 100]
    x, y, latents = sample_dataset(world, counts, seed=5)
    assert x.shape == (1500, 64) and torch.bincount(y).tolist() == counts
    assert torch.allclose(latents.norm(dim=1), torch.ones(1500), atol=1e-5)
    x2, y2, _ = sample_dataset(LatentClasses.create(4, 11, 64, sigma=0.1, seed=3), counts, seed=5)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    # samples sit near their own centre
    assert ((latents @ world.centres.T).argmax(1) == y).float().mean() > 0.99


@pytest.mark.parametrize("mode", ["class", "noise"])
def test_latent_views_are_positives(mode):
    data = SyntheticLatentClasses(num_classes=3, train_samples=90, val_samples=30, batch_size=30, view_mode=mode, view_noise=0.05, sigma=0.1)
    data.setup()
    batch = next(iter(data.train_dataloader()))
    v1, v2 = batch["views"]
    labels = batch["label"]
    assert v1.shape == (30, 64) and torch.equal(v1, data.train_set.ambient[batch["index"]]) == (mode == "class")
    latents = data.train_set.latents
    # the second view belongs to the same class (class mode) or is a jitter of the same point (noise mode)
    centres = data.world.centres
    recovered = torch.linalg.lstsq(data.world.mapping.T, v2.T).solution.T
    assert torch.equal((recovered @ centres.T).argmax(1), labels)
    if mode == "noise":
        assert (torch.nn.functional.cosine_similarity(recovered, latents[batch["index"]]) > 0.9).all()
