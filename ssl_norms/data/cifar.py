"""CIFAR-10 and CIFAR-100 DataModules: torchvision's pickled format or a class-per-folder copy."""

from __future__ import annotations

from torch import Tensor
from torchvision.datasets import CIFAR10, CIFAR100

from ssl_norms.data.base import ImageDataModule
from ssl_norms.data.datasets import InMemoryImages
from ssl_norms.data.paths import CIFAR10_LAYOUT, CIFAR100_LAYOUT, first_line
from ssl_norms.data.readers import cifar_missing, read_cifar
from ssl_norms.data.transforms import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10 (32 px, 10 classes), decoded once into memory.

    Looks under ``root`` for, in order: torchvision's ``cifar-10-batches-py/``; an image folder
    ``cifar10-jpg/{train,test}/<class>/*``; an image folder ``{train,test}/<class>/*``. With
    ``download=True`` and none of them present, torchvision downloads the official copy.

    Args:
        download: fetch the official archive when no copy is found.
        jitter_strength: colour-jitter strength s of the SimCLR augmentation (0.5 on CIFAR).
        min_scale: smallest RandomResizedCrop area.
        num_views: augmented views per training image.
        **kwargs: see :class:`ImageDataModule` and :class:`SSLDataModule` (``imbalance``,
            ``extra_eval_sets``, ``augment_on``, subsets, loaders).
    """

    num_classes = 10
    layout = CIFAR10_LAYOUT
    torchvision_dataset = CIFAR10  # what download=True fetches
    mean, std = CIFAR10_MEAN, CIFAR10_STD
    eval_set_name = "cifar10_test"
    eval_image_size = 32

    def __init__(self, download: bool = False, jitter_strength: float = 0.5, min_scale: float = 0.2, num_views: int = 2, **kwargs) -> None:
        super().__init__(jitter_strength=jitter_strength, min_scale=min_scale, num_views=num_views, **kwargs)
        self.download = download

    @property
    def torchvision_folder(self) -> str:
        """The folder of torchvision's pickled copy under the root (its original sample order)."""
        return self.layout.torchvision_folder

    def load_split(self, train: bool) -> tuple[Tensor, Tensor]:
        """uint8 (N, 3, 32, 32) images and labels of the train or test split."""
        if self.download and not (self.root / self.layout.torchvision_folder).is_dir():
            try:
                self.torchvision_dataset(str(self.root), train=True, download=True)
            except Exception as err:  # no network, a proxy, a full disk: say so on one line
                raise cifar_missing(self.layout, self.root, f"; the download failed ({type(err).__name__}: {first_line(err)})") from None
        return read_cifar(self.root, self.layout, train, self.on_corrupt)

    def build(self) -> None:
        train_images, train_labels = self.load_split(train=True)
        val_images, val_labels = self.load_split(train=False)
        plain = self.plain_transform()
        self.train_set = self.training_views(train_images, train_labels, size=self.eval_image_size)
        self.bank_set = InMemoryImages(train_images, train_labels, plain)
        self.val_set = InMemoryImages(val_images, val_labels, plain)


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 (32 px, 100 fine classes), decoded once into memory; colour jitter s=0.5 as on CIFAR-10.

    Looks under ``root`` for torchvision's ``cifar-100-python/{train,test}`` (pickles with
    ``fine_labels``), then an image folder ``cifar100/{train,test}/<class>/*``. ``download=True``
    fetches the official archive through torchvision. Arguments as :class:`CIFAR10DataModule`.
    """

    num_classes = 100
    layout = CIFAR100_LAYOUT
    torchvision_dataset = CIFAR100
    mean, std = CIFAR100_MEAN, CIFAR100_STD
    eval_set_name = "cifar100_test"
