"""ssl-norms: a Lightning framework for self-supervised learning research on embedding norms."""

from ssl_norms.grad_scale import grad_scale

__all__ = ["grad_scale"]
__version__ = "0.1.0"
