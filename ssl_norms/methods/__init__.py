from ssl_norms.contract import EmbeddedBatch, SSLStep
from ssl_norms.methods.base import SSLMethod
from ssl_norms.methods.byol import BYOL
from ssl_norms.methods.frossl import FroSSL
from ssl_norms.methods.isoloss import IsoLoss
from ssl_norms.methods.simclr import SimCLR
from ssl_norms.methods.simsiam import SimSiam
from ssl_norms.methods.vicreg import VICReg

__all__ = ["BYOL", "EmbeddedBatch", "FroSSL", "IsoLoss", "SSLMethod", "SSLStep", "SimCLR", "SimSiam", "VICReg"]
