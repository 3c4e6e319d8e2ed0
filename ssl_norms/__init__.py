"""ssl-norms: a Lightning framework for self-supervised learning research on embedding norms."""

import sys
import types

__all__ = ["grad_scale"]
__version__ = "0.1.0"


class _Package(types.ModuleType):
    """``ssl_norms.grad_scale`` is the function (the public API), imported with torch on first use so
    that ``ssl-norms --help`` starts at once. It lives in the submodule of the same name, which the
    import system binds here when it is imported: the function stays the attribute."""

    @property
    def grad_scale(self):
        from ssl_norms.grad_scale import grad_scale

        return grad_scale

    @grad_scale.setter
    def grad_scale(self, value) -> None:
        pass


sys.modules[__name__].__class__ = _Package
