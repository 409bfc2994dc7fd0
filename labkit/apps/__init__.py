"""The reference services the notebooks run: ordinary Flask apps on labkit's core.

Each module here is one service, named for it, with a ``create_app(**options)``
factory; :func:`create` makes one by name, which is what
``python -m labkit serve NAME`` uses.
"""

import importlib
import pkgutil

#: Service name -> module that defines ``create_app`` (every module of this package).
SERVICES = {m.name: f"{__name__}.{m.name}" for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name)
            if not m.name.startswith("_")}


def create(name: str, **options):
    """A new app of the reference service ``name`` (see SERVICES)."""
    if name not in SERVICES:
        raise ValueError(f"no reference service {name!r}; choose one of {', '.join(SERVICES)}")
    return importlib.import_module(SERVICES[name]).create_app(**options)
