from ssl_norms.models.backbones import build_backbone
from ssl_norms.models.heads import mlp_head

__all__ = ["build_backbone", "mlp_head"]
