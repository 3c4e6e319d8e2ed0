from ssl_norms.data.base import ImageDataModule, SSLDataModule
from ssl_norms.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from ssl_norms.data.eval_sets import load_eval_set
from ssl_norms.data.flowers import Flowers102DataModule
from ssl_norms.data.imagenet import ImageNet100DataModule
from ssl_norms.data.paths import DATA_ENV
from ssl_norms.data.splits import Imbalance, exponential_imbalance
from ssl_norms.data.synthetic import SyntheticLatentClasses

__all__ = [
    "DATA_ENV",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "Flowers102DataModule",
    "ImageDataModule",
    "ImageNet100DataModule",
    "Imbalance",
    "SSLDataModule",
    "SyntheticLatentClasses",
    "exponential_imbalance",
    "load_eval_set",
]
