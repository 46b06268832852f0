"""Optional dependencies, named by the extra that installs them.

A proxy installs only what it runs (``pip install xpro-mesh``): the lab
(``xpro-mesh[lab]``: matplotlib, pyroute2, netfilterqueue) and the paper's master mode
(``xpro-mesh[master]``: redis) are extras. :func:`need` imports a module of
an extra and turns its absence into one :class:`MissingExtra` line that says
which extra to install, which the CLI prints without a traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["EXTRAS", "MissingExtra", "need"]

#: What each extra brings, by the top-level module it provides.
EXTRAS: dict[str, str] = {
    "matplotlib": "lab",
    "netfilterqueue": "lab",
    "pyroute2": "lab",
    "redis": "master",
}


class MissingExtra(RuntimeError):
    """An optional dependency is not installed; the message names the extra."""


def need(module: str, purpose: str) -> ModuleType:
    """Import ``module`` (dotted names allowed) or raise :class:`MissingExtra`.

    Only a missing *top-level* package becomes MissingExtra: an import error
    inside an installed package is a real bug and propagates unchanged."""
    top = module.split(".", 1)[0]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != top:
            raise
        extra = EXTRAS.get(top, "lab")
        raise MissingExtra(
            f"{purpose} needs {top}, which is not installed: pip install 'xpro-mesh[{extra}]'"
        ) from None
