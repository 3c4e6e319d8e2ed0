"""The batched SimCLR augmentation: same semantics as torchvision's per-sample pipeline, its random
parameters' distributions, seeded worker- and rank-distinct randomness, device augmentation."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ssl_norms.data import CIFAR10DataModule
from ssl_norms.data.augment import BatchedSimCLRAugmentation, adjust_hue, random_crop_boxes, resized_crops
from ssl_norms.data.datasets import AugmentedViews

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.fixture(autouse=True)
def one_thread():
    """Many small tensor ops: one thread, as in a DataLoader worker (two threads on a busy two-core
    machine spend most of their time waiting for each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_colour_and_geometry_match_torchvision_per_sample():
    """With the crop left out, one batched call equals torchvision's functional ops applied image by
    image with the same parameters: flip, the jitter ops in each sample's order, grayscale, normalise."""
    augment = BatchedSimCLRAugmentation(24, MEAN, STD, jitter_strength=1.0, crop=False)
    images = random_images(64, 24)
    params = augment.sample(64, 24, 24, torch.Generator().manual_seed(3))
    assert params["jitter"].any() and params["gray"].any() and params["flip"].any()
    ours = augment.apply(images, params)
    ops = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)
    for i in range(64):
        x = images[i].float() / 255
        if params["flip"][i]:
            x = F.horizontal_flip(x)
        if params["jitter"][i]:
            for op_index in params["order"][i].tolist():
                x = ops[op_index](x, float(params["factors"][i, op_index]))
        if params["gray"][i]:
            x = F.rgb_to_grayscale(x, num_output_channels=3)
        expected = F.normalize(x, list(MEAN), list(STD))
        torch.testing.assert_close(ours[i], expected, atol=2e-5, rtol=0)


def test_hue_rotation_matches_torchvision_on_edge_cases():
    grey_and_saturated = torch.tensor([[0.5, 0.5, 0.5], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.2, 0.9, 0.9], [1.0, 1.0, 0.0]])
    images = grey_and_saturated.T.reshape(1, 3, 2, 3).expand(5, 3, 2, 3).contiguous()
    shifts = torch.tensor([-0.5, -0.1, 0.0, 0.25, 0.5])
    expected = torch.stack([F.adjust_hue(images[i], float(shifts[i])) for i in range(5)])
    torch.testing.assert_close(adjust_hue(images, shifts), expected, atol=1e-5, rtol=0)


def test_crop_resample_equals_torchvision_resized_crop_inside():
    images = random_images(6).float() / 255
    boxes = torch.tensor([[0, 0, 32, 32], [3, 5, 20, 16], [10, 2, 12, 30], [0, 0, 8, 8], [7, 9, 25, 23], [16, 16, 16, 16]])
    ours = resized_crops(images, boxes, 32)
    for i, (top, left, h, w) in enumerate(boxes.tolist()):
        expected = F.resized_crop(images[i], top, left, h, w, [32, 32], antialias=True)
        # bilinear at the crop's pixel centres; only output pixels within half an input pixel of the
        # crop's border read the neighbouring pixel outside it, where torchvision clamps to the border
        m = math.ceil(32 / min(h, w) / 2)
        torch.testing.assert_close(ours[i, :, m:-m, m:-m], expected[:, m:-m, m:-m], atol=1e-5, rtol=0)
    torch.testing.assert_close(ours[0], images[0], atol=1e-6, rtol=0)  # the full image is unchanged


def test_crop_boxes_follow_random_resized_crop_distribution():
    n = 20000
    boxes = random_crop_boxes(n, 32, 40, (0.2, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0))
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 40).all()
    area = (h * w).float() / (32 * 40)
    assert area.min() >= 0.2 - 0.02 and area.max() <= 1.0
    ratio = w.float() / h.float()
    assert ratio.min() >= 0.75 * 0.85 and ratio.max() <= 4 / 3 / 0.85  # integer rounding of the sides
    # the same distribution as torchvision's sampler (compared on its own draws)
    torch.manual_seed(0)
    image = torch.zeros(3, 32, 40)
    reference = torch.tensor([v2.RandomResizedCrop.get_params(image, [0.2, 1.0], [3 / 4, 4 / 3]) for _ in range(4000)])
    ref_area = (reference[:, 2] * reference[:, 3]).float() / (32 * 40)
    assert abs(area.mean() - ref_area.mean()) < 0.015
    assert abs(area.std() - ref_area.std()) < 0.015
    assert abs((top.float() + h / 2).mean() - (reference[:, 0].float() + reference[:, 2] / 2).mean()) < 0.3
    # no crop fits a very wide image inside the ratio bounds: torchvision's central fallback
    fallback = random_crop_boxes(5, 4, 64, (0.9, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0))
    assert fallback.tolist() == [[0, 29, 4, 5]] * 5


def test_random_parameter_rates_and_ranges():
    augment = BatchedSimCLRAugmentation(32, MEAN, STD, jitter_strength=0.5)
    n = 20000
    params = augment.sample(n, 32, 32, torch.Generator().manual_seed(1))
    tolerance = 4 * math.sqrt(0.25 / n)
    assert abs(params["flip"].float().mean() - 0.5) < tolerance
    assert abs(params["gray"].float().mean() - 0.2) < tolerance
    assert abs(params["jitter"].float().mean() - 0.8) < tolerance
    brightness, contrast, saturation, hue = params["factors"].T
    for factor in (brightness, contrast, saturation):  # 0.8 s = 0.4
        assert factor.min() >= 0.6 and factor.max() <= 1.4 and abs(factor.mean() - 1.0) < 0.01
    assert hue.min() >= -0.1 and hue.max() <= 0.1 and abs(hue.mean()) < 0.003
    order = params["order"]
    assert torch.equal(order.sort(dim=1).values, torch.arange(4).expand(n, 4))
    first = torch.bincount(order[:, 0], minlength=4).float() / n
    assert (first - 0.25).abs().max() < tolerance  # every op equally likely to go first


def test_applied_views_show_the_rates():
    """On the images themselves: about 20 % of views are grey and, without crop and jitter, half are mirrored."""
    images = random_images(2500)
    gray_aug = BatchedSimCLRAugmentation(32, (0.0,) * 3, (1.0,) * 3)
    views = gray_aug(images, torch.Generator().manual_seed(2))
    grey = (views[:, 0] == views[:, 1]).flatten(1).all(1) & (views[:, 1] == views[:, 2]).flatten(1).all(1)
    assert abs(grey.float().mean() - 0.2) < 0.03
    flip_only = BatchedSimCLRAugmentation(32, (0.0,) * 3, (1.0,) * 3, crop=False, jitter_p=0.0, grayscale_p=0.0)
    views = flip_only(images, torch.Generator().manual_seed(2))
    plain = images.float() / 255
    mirrored = torch.isclose(views, plain.flip(-1)).flatten(1).all(1)
    unchanged = torch.isclose(views, plain).flatten(1).all(1)
    assert (mirrored | unchanged).all() and abs(mirrored.float().mean() - 0.5) < 0.03
    assert views.shape == (2500, 3, 32, 32) and views.dtype == torch.float32


def same_image_views(rank: int = 0, num_views: int = 2) -> AugmentedViews:
    """Every item is the same image, so any difference between views is the augmentation's."""
    images = random_images(1).expand(64, 3, 32, 32).contiguous()
    dataset = AugmentedViews(images, torch.zeros(64, dtype=torch.long), BatchedSimCLRAugmentation(32, MEAN, STD), num_views)
    dataset.rank = rank
    return dataset


def first_batches(dataset, seed: int, workers: int = 0, count: int = 2) -> list[dict]:
    torch.manual_seed(seed)
    loader = DataLoader(dataset, batch_size=8, shuffle=True, num_workers=workers)
    iterator = iter(loader)
    return [next(iterator) for _ in range(count)]


def test_seeded_reproducible_and_distinct_per_rank_and_view():
    a, b = first_batches(same_image_views(), seed=5), first_batches(same_image_views(), seed=5)
    for x, y in zip(a, b):
        assert torch.equal(x["index"], y["index"]) and all(torch.equal(u, v) for u, v in zip(x["views"], y["views"]))
    other_seed = first_batches(same_image_views(), seed=6)
    assert not torch.equal(a[0]["views"][0], other_seed[0]["views"][0])
    other_rank = first_batches(same_image_views(rank=1), seed=5)
    assert not torch.equal(a[0]["views"][0], other_rank[0]["views"][0])
    views = a[0]["views"]
    assert not torch.equal(views[0], views[1])  # two views of an image differ
    assert not torch.equal(views[0][0], views[0][1])  # samples of a batch differ (same source image)
    assert not torch.equal(a[0]["views"][0], a[1]["views"][0])  # consecutive batches differ


def test_workers_draw_different_augmentations_reproducibly():
    dataset = same_image_views()
    run = first_batches(dataset, seed=11, workers=2)  # batch 0 from worker 0, batch 1 from worker 1
    assert not torch.equal(run[0]["views"][0], run[1]["views"][0])
    again = first_batches(dataset, seed=11, workers=2)
    assert all(torch.equal(x["views"][0], y["views"][0]) for x, y in zip(run, again))


def test_dataset_items_work_with_default_collate_and_single_items():
    dataset = AugmentedViews(random_images(20), torch.arange(20) % 3, BatchedSimCLRAugmentation(16, MEAN, STD), num_views=3)
    item = dataset[4]
    assert len(item["views"]) == 3 and item["views"][0].shape == (3, 16, 16) and int(item["index"]) == 4
    sub = dataset.subset(torch.tensor([2, 5, 7]))
    assert torch.equal(sub.targets, torch.tensor([2, 2, 1]))
    batch = next(iter(DataLoader(sub, batch_size=3)))
    assert batch["views"][2].shape == (3, 3, 16, 16) and batch["index"].tolist() == [2, 5, 7]


def test_device_augmentation_after_transfer(tmp_path):
    from test_data import write_cifar10_pickles

    root = write_cifar10_pickles(tmp_path)
    data = CIFAR10DataModule(root=str(root), batch_size=8, num_workers=0, augment_on="device")
    data.setup()
    raw = next(iter(data.train_dataloader()))
    assert raw["images"].dtype == torch.uint8 and raw["images"].shape == (8, 3, 32, 32)
    batch = data.on_after_batch_transfer(raw, 0)
    assert [v.shape for v in batch["views"]] == [(8, 3, 32, 32)] * 2 and batch["views"][0].dtype == torch.float32
    assert torch.equal(batch["index"], raw["index"])
    evaluation = {"image": torch.zeros(2, 3, 32, 32), "label": torch.zeros(2), "index": torch.arange(2)}
    assert data.on_after_batch_transfer(evaluation, 0) is evaluation
    with pytest.raises(ValueError, match="augment_on"):
        CIFAR10DataModule(root=str(root), augment_on="gpu")


@pytest.mark.slow
def test_batched_pipeline_outpaces_resnet18_step():
    """The benchmark's claim as a test: the batched pipeline with 2 workers delivers augmented images
    at least twice as fast as a ResNet-18 (CIFAR stem) SimCLR step consumes them."""
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("input_pipeline", REPO / "benchmarks" / "input_pipeline.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    loader_rate, step_rate = benchmark.loader_rate, benchmark.step_rate
    dataset = AugmentedViews(random_images(256 * 8), torch.zeros(256 * 8, dtype=torch.long), BatchedSimCLRAugmentation(32, MEAN, STD))
    assert loader_rate(dataset, 256, 2, 6) > 2 * step_rate(64, 256, 1)


def test_loaders_take_the_batch_as_built_and_default_collate_stacks_the_same():
    dataset = AugmentedViews(random_images(16), torch.arange(16) % 3, BatchedSimCLRAugmentation(16, MEAN, STD))
    torch.manual_seed(0)
    own = next(iter(DataLoader(dataset, batch_size=8, collate_fn=dataset.collate_fn)))
    torch.manual_seed(0)
    default = next(iter(DataLoader(dataset, batch_size=8)))
    assert torch.equal(own["index"], default["index"]) and torch.equal(own["label"], default["label"])
    assert len(own["views"]) == 2 and all(torch.equal(a, b) for a, b in zip(own["views"], default["views"]))
