from ssl_norms.data.base import DATA_ENV, SSLDataModule
from ssl_norms.data.cifar import CIFAR10DataModule
from ssl_norms.data.synthetic import SyntheticLatentClasses

__all__ = ["DATA_ENV", "CIFAR10DataModule", "SSLDataModule", "SyntheticLatentClasses"]
