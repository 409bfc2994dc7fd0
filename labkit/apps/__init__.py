"""The reference services the notebooks run: ordinary Flask apps on labkit's core.

Each module has a ``create_app()`` factory; :func:`create` makes one by name,
which is what ``python -m labkit serve NAME`` uses.
"""

import importlib

#: Service name -> module that defines ``create_app``.
SERVICES = {
    "hello": "labkit.apps.hello",
    "shop": "labkit.apps.shop",
    "chat": "labkit.apps.chat",
    "weather": "labkit.apps.weather",
}


def create(name: str, **options):
    """A new app of the reference service ``name`` (see SERVICES)."""
    if name not in SERVICES:
        raise ValueError(f"no reference service {name!r}; choose one of {', '.join(SERVICES)}")
    return importlib.import_module(SERVICES[name]).create_app(**options)
