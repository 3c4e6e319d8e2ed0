from ssl_norms.methods.base import SSLMethod, SSLStep
from ssl_norms.methods.simclr import SimCLR

__all__ = ["SSLMethod", "SSLStep", "SimCLR"]
