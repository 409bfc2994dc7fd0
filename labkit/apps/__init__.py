"""The reference services the notebooks run: ordinary Flask apps made with the service kit.

Each service is a module here, named for it, with a ``create_app(*, name=..., **options)``
factory; :func:`create` makes one by the service's name, which is what
``python -m labkit serve SERVICE`` uses. ``kit`` (how a service is made), ``store``
(notebook 04's shared schema) and ``tokens`` (signed tokens) are not services.
README.md in this folder is the checklist for adding a service or a notebook.
"""

import importlib
import pkgutil

#: Modules of this package that are not services.
NOT_SERVICES = {"kit", "store", "tokens"}
#: Service name -> module that defines ``create_app``.
SERVICES = {m.name: f"{__name__}.{m.name}" for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name)
            if not m.name.startswith("_") and m.name not in NOT_SERVICES}


def create(service: str, /, **options):
    """A new app of the reference ``service`` (see SERVICES); ``options`` go to its ``create_app``.

        >>> app = create("hello", name="hello-2")
        >>> app.name
        'hello-2'
    """
    if service not in SERVICES:
        raise ValueError(f"no reference service {service!r}; choose one of {', '.join(SERVICES)}")
    return importlib.import_module(SERVICES[service]).create_app(**options)
