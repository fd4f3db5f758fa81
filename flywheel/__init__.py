"""Core library of the relevance flywheel, one package per pipeline stage, bottom to top: ``data``, ``retrieval``,
``judge``, ``labeling``, ``training``, ``evaluation``, ``serving``; ``settings``, ``config`` and ``metrics`` are
shared by all. Never imports prefect (tests/unit/test_layering.py proves it, and the direction of every import)."""

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

# MLflow pickles a registered model's pyfunc class by module path, so models registered before the stage packages
# existed ask for ``flywheel.registry.RankerModel`` when they load. Old path -> the module that holds it now.
MOVED_MODULES = {"flywheel.registry": "flywheel.serving.registry"}


class _MovedModule(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED_MODULES else None

    def create_module(self, spec):
        module = importlib.import_module(MOVED_MODULES[spec.name])
        spec.loader_state = module.__spec__          # importlib sets the alias's spec on it next; undone below
        return module

    def exec_module(self, module):
        module.__spec__ = module.__spec__.loader_state


if not any(isinstance(f, _MovedModule) for f in sys.meta_path):
    sys.meta_path.append(_MovedModule())
