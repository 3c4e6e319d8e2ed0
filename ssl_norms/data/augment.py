"""The SimCLR augmentation applied to a whole uint8 batch at once, with per-sample randomness.

torchvision's v2 transforms draw one set of random parameters per call, so a batched call would
crop, flip and jitter every image of the batch identically. ``BatchedSimCLRAugmentation`` draws the
parameters per sample, exactly as the per-sample pipeline in ``transforms.simclr_augmentation``
does (same distributions, same order of operations), and applies them as batched tensor ops:

* RandomResizedCrop(scale=(min_scale, 1), ratio=(3/4, 4/3)): torchvision's box sampler (10 tries,
  then a central fallback), vectorised; resampling by ``torchvision.ops.roi_align`` (bilinear at the
  pixel centres of the crop, averaging several samples per output pixel when the crop is larger
  than the output, so it also antialiases downscaling);
* horizontal flip with p=0.5;
* with p=0.8 ColorJitter(0.8 s, 0.8 s, 0.8 s, 0.2 s), its four operations in a random order drawn
  per sample, with torchvision's formulas (blend with black / grey mean / grey image; hue rotation
  in HSV);
* grayscale with p=0.2; then scale to [0, 1] floats and normalise.

``color_jitter="independent"`` is the paper's released recipe instead (SSLEmbeddingNorms
``CLA/utils/data_utils.py:108-115``): brightness, contrast, saturation and hue are four separate
``RandomApply`` steps, each applied with p=0.8 on its own, always in that order.

Everything is computed in float32 in [0, 1]; torchvision working on uint8 rounds after every
operation, so pixel values differ by rounding only. The same object runs on any device (the
datamodule can apply it after the batch reached the GPU).

Randomness comes from an explicit ``torch.Generator``. ``batch_generator`` makes one per batch from
the process's global torch RNG (seeded per DataLoader worker by PyTorch and by ``seed_everything``)
mixed with the distributed rank, so every worker and every rank draws different augmentations and a
fixed seed reproduces them.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import roi_align
from torchvision.transforms.v2.functional import rgb_to_grayscale as grayscale  # batched: (N, 3, H, W) -> (N, 1, H, W)



def batch_generator(rank: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh generator for one batch: a seed drawn from the global torch RNG, mixed with ``rank``.

    Inside a DataLoader worker the global RNG is already distinct per worker (PyTorch seeds it with
    base_seed + worker_id); ranks share the base seed after ``seed_everything``, hence the mix."""
    drawn = int(torch.randint(0, 2**62, (1,)).item())
    digest = hashlib.blake2b(f"{drawn}:{rank}".encode(), digest_size=8).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest, "little") % 2**63)


def _uniform(n: int, low: float, high: float, generator: torch.Generator, device) -> Tensor:
    return torch.rand(n, generator=generator, device=device) * (high - low) + low


def random_crop_boxes(
    n: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
    generator: torch.Generator, device: torch.device | str = "cpu", attempts: int = 10,
) -> Tensor:
    """``n`` RandomResizedCrop boxes (top, left, h, w) as an int64 (n, 4) tensor.

    torchvision's sampler, vectorised: each sample tries ``attempts`` (area, log-ratio) draws and
    keeps the first that fits; samples where none fits get torchvision's central fallback crop."""
    area = height * width
    target_area = area * (torch.rand(n, attempts, generator=generator, device=device) * (scale[1] - scale[0]) + scale[0])
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(torch.rand(n, attempts, generator=generator, device=device) * (log_high - log_low) + log_low)
    w = torch.round(torch.sqrt(target_area * aspect)).long()
    h = torch.round(torch.sqrt(target_area / aspect)).long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.long().argmax(dim=1, keepdim=True)  # first fitting attempt (0 when none fits)
    w, h, found = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0], fits.any(dim=1)
    # central fallback, as torchvision: the largest box within the ratio bounds
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fh, fw = height, int(round(height * max(ratio)))
    else:
        fw, fh = width, height
    w, h = torch.where(found, w, fw), torch.where(found, h, fh)
    u_top, u_left = torch.rand(2, n, generator=generator, device=device)
    top = torch.where(found, (u_top * (height - h + 1)).long(), (height - fh) // 2)
    left = torch.where(found, (u_left * (width - w + 1)).long(), (width - fw) // 2)
    return torch.stack([top, left, h, w], dim=1)


def resized_crops(images: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Crop box i of float image i and resize it to ``size`` x ``size`` (bilinear, pixel centres)."""
    top, left, h, w = boxes.to(images.dtype).unbind(1)
    rois = torch.stack([torch.arange(len(images), device=images.device, dtype=images.dtype), left, top, left + w, top + h], 1)
    return roi_align(images, rois, output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def _per_sample(factor: Tensor) -> Tensor:
    return factor.view(-1, 1, 1, 1)


def adjust_brightness(images: Tensor, factor: Tensor) -> Tensor:
    return (images * _per_sample(factor)).clamp_(0, 1)


def adjust_contrast(images: Tensor, factor: Tensor) -> Tensor:
    mean = grayscale(images).mean(dim=(-3, -2, -1), keepdim=True)
    f = _per_sample(factor)
    return (f * images + (1 - f) * mean).clamp_(0, 1)


def adjust_saturation(images: Tensor, factor: Tensor) -> Tensor:
    f = _per_sample(factor)
    return (f * images + (1 - f) * grayscale(images)).clamp_(0, 1)


def adjust_hue(images: Tensor, shift: Tensor) -> Tensor:
    """Rotate the HSV hue of image i by ``shift[i]`` (a fraction of the colour circle)."""
    low, value = torch.aminmax(images, dim=-3)
    chroma = value - low
    inv_chroma = chroma.clamp_min(1e-12).reciprocal_()  # grey pixels: chroma 0 makes the hue irrelevant
    r, g, b = images.unbind(dim=-3)
    # hue in sextants (any multiple of 6 apart is the same hue): the maximum channel picks the formula
    hue = torch.where(value == r, (g - b) * inv_chroma, torch.where(value == g, (b - r) * inv_chroma + 2, (r - g) * inv_chroma + 4))
    hue += 6 * shift.view(-1, 1, 1)
    # back to RGB: channel n in (R, G, B) = v - c * clamp(min(k, 4 - k), 0, 1), k = (n + hue) mod 6
    offsets = torch.arange(5.0, 0.0, -2.0, device=images.device).view(1, 3, 1, 1)  # 5, 3, 1; made on the device, no host copy
    k = torch.remainder(offsets + hue.unsqueeze(-3), 6)
    ramp = torch.minimum(k, 4 - k).clamp_(0, 1)
    return value.unsqueeze(-3) - chroma.unsqueeze(-3) * ramp


COLOR_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


class BatchedSimCLRAugmentation:
    """SimCLR views of a uint8 (N, 3, H, W) batch with per-sample random parameters (module docstring).

    Args:
        size: output side in pixels.
        mean / std: normalisation.
        jitter_strength: s; brightness/contrast/saturation 0.8 s, hue 0.2 s (0.5 on CIFAR, 1 on ImageNet).
        min_scale: smallest crop area fraction.
        jitter_p / grayscale_p / flip_p: probabilities of those steps.
        crop: False when the images are already cropped (crops taken at decode time).
        color_jitter: ``simclr`` (one ColorJitter with p=``jitter_p``, operations in random order) or
            ``independent`` (each operation on its own with p=``jitter_p``, fixed order; module docstring).
    """

    def __init__(
        self, size: int, mean: Sequence[float], std: Sequence[float], jitter_strength: float = 0.5, min_scale: float = 0.2,
        jitter_p: float = 0.8, grayscale_p: float = 0.2, flip_p: float = 0.5, crop: bool = True,
        ratio: tuple[float, float] = (3 / 4, 4 / 3), color_jitter: str = "simclr",
    ) -> None:
        if color_jitter not in ("simclr", "independent"):
            raise ValueError(f"color_jitter must be 'simclr' or 'independent', got {color_jitter!r}")
        self.independent_jitter = color_jitter == "independent"
        if not 0 < min_scale <= 1:
            raise ValueError(f"min_scale must be in (0, 1], got {min_scale}")
        if jitter_strength < 0:
            raise ValueError(f"jitter_strength must be >= 0, got {jitter_strength}")
        for name, p in {"jitter_p": jitter_p, "grayscale_p": grayscale_p, "flip_p": flip_p}.items():
            if not 0 <= p <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        self.size, self.crop, self.scale, self.ratio = size, crop, (min_scale, 1.0), ratio
        self.mean, self.std = tuple(mean), tuple(std)
        self._constants: dict[torch.device, tuple[Tensor, Tensor]] = {}
        s = jitter_strength
        self.brightness = self.contrast = self.saturation = 0.8 * s
        self.hue = min(0.2 * s, 0.5)
        self.jitter_p, self.grayscale_p, self.flip_p = jitter_p, grayscale_p, flip_p

    def sample(self, n: int, height: int, width: int, generator: torch.Generator, device="cpu") -> dict[str, Tensor]:
        """All random parameters of ``n`` views (exposed so tests can check their distributions)."""
        params = {}
        if self.crop:
            params["box"] = random_crop_boxes(n, height, width, self.scale, self.ratio, generator, device)
        params["flip"] = torch.rand(n, generator=generator, device=device) < self.flip_p
        # simclr: one draw per sample; independent: one per (sample, operation)
        params["jitter"] = torch.rand((n, 4) if self.independent_jitter else n, generator=generator, device=device) < self.jitter_p
        params["factors"] = torch.stack([
            _uniform(n, max(0.0, 1 - self.brightness), 1 + self.brightness, generator, device),
            _uniform(n, max(0.0, 1 - self.contrast), 1 + self.contrast, generator, device),
            _uniform(n, max(0.0, 1 - self.saturation), 1 + self.saturation, generator, device),
            _uniform(n, -self.hue, self.hue, generator, device),
        ], dim=1)
        params["order"] = torch.argsort(torch.rand(n, 4, generator=generator, device=device), dim=1)
        if self.independent_jitter:
            params["order"] = torch.arange(4, device=device).expand(n, 4)
        params["gray"] = torch.rand(n, generator=generator, device=device) < self.grayscale_p
        return params

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        """Apply drawn parameters to uint8 (or [0, 1] float) images; returns normalised floats."""
        x = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
        if "box" in params:
            x = resized_crops(x, params["box"], self.size)
        x = torch.where(params["flip"].view(-1, 1, 1, 1), x.flip(-1), x)
        jitter, factors, order = params["jitter"], params["factors"], params["order"]
        # position k of each sample's random order: run each operation on the samples whose k-th step it is
        for k in range(4):
            for op_index, op in enumerate(COLOR_OPS):
                applied = (jitter[:, op_index] if jitter.ndim == 2 else jitter) & (order[:, k] == op_index)
                if x.device.type == "cpu":  # only the selected rows: no device to wait for on a CPU
                    rows = applied.nonzero().flatten()
                    if len(rows):
                        x[rows] = op(x[rows], factors[rows, op_index])
                else:  # every row, kept where selected: a GPU never waits for the host to count the rows
                    x = torch.where(applied.view(-1, 1, 1, 1), op(x, factors[:, op_index]), x)
        gray = params["gray"].view(-1, 1, 1, 1)
        x = torch.where(gray, grayscale(x).expand_as(x), x)
        mean, std = self._normalisation(x.device)
        return x.sub_(mean).div_(std)

    def _normalisation(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """mean and std as (1, C, 1, 1) tensors on ``device``, copied there once (a copy to a GPU waits for its queue)."""
        if device not in self._constants:
            self._constants[device] = tuple(torch.tensor(v, device=device).view(1, -1, 1, 1) for v in (self.mean, self.std))
        return self._constants[device]

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        n, _, height, width = images.shape
        return self.apply(images, self.sample(n, height, width, generator, images.device))
