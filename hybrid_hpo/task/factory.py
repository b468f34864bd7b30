"""Where a run's Task comes from: a Task, a factory function, a factory named by a string, or the
built-in datasets and models.

A factory named by a string (``RunConfig.task``, ``hybrid-hpo run --task``, ``task: {factory: ...}``
in a sweep file) is ``FILE.py:FUNCTION`` (a path, relative to the working directory) or
``MODULE:FUNCTION`` (an importable module path, e.g. ``my_package.tasks:make_task``). On a Ray
cluster every node must be able to import it: prefer a module path installed on the nodes, or a
file that exists at the same path everywhere.

Every problem (cannot import, no such function, the factory raises, returns something that is not
a Task) is one :class:`ConfigError` line naming the factory.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hybrid_hpo.errors import ConfigError, first_line
from hybrid_hpo.task.task import Task, TaskFactory

if TYPE_CHECKING:
    from hybrid_hpo.config import RunConfig

TaskSource = Task | Callable[[dict[str, Any]], Task] | str | None
"""What a run may be given: a Task, a factory, a factory's name, or None (``config.task`` or built-in)."""

_FORMAT = "FILE.py:FUNCTION or MODULE:FUNCTION, e.g. my_tasks.py:make_task or my_package.tasks:make_task"


def load_factory(spec: str) -> TaskFactory:
    """The function named by ``spec`` (``FILE.py:FUNCTION`` or ``MODULE:FUNCTION``)."""
    target, sep, function = spec.rpartition(":")
    if not sep or not target or not function.isidentifier():
        raise ConfigError(f"task: {spec!r} is not a factory name; use {_FORMAT}")
    if target.endswith(".py"):
        module = _import_file(spec, Path(target).expanduser())
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as error:
            if error.name and target.startswith(error.name):
                raise ConfigError(f"task: cannot import module {error.name!r} of factory {spec!r}; install it, "
                                  f"add its folder to PYTHONPATH, or give a file: {_FORMAT}") from None
            raise ConfigError(f"task: importing factory {spec!r} failed ({first_line(error)})") from None
        except Exception as error:  # the user's module raised while importing
            raise ConfigError(f"task: importing factory {spec!r} failed ({first_line(error)})") from None
    factory = getattr(module, function, None)
    if factory is None:
        raise ConfigError(f"task: {target} has no function {function!r}; check the name after ':' in {spec!r}")
    if not callable(factory):
        raise ConfigError(f"task: {spec!r} is a {type(factory).__name__}, not a function config -> Task")
    return factory


def _import_file(spec: str, path: Path):
    """Import the file ``path`` once per absolute path (as module ``hybrid_hpo_task_<hash>``)."""
    if not path.is_file():
        raise ConfigError(f"task: no file {str(path)!r} for factory {spec!r} (working directory {Path.cwd()}); "
                          f"give an existing path, or {_FORMAT}")
    resolved = path.resolve()
    name = f"hybrid_hpo_task_{resolved.stem}_{hashlib.sha1(str(resolved).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, resolved)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # pickling (Ray) finds functions of the module by its name
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[name]
        raise ConfigError(f"task: importing factory {spec!r} failed ({first_line(error)})") from None
    return module


def _factory_name(factory: Callable) -> str:
    """``module:qualname`` of a factory function, for messages."""
    name = getattr(factory, "__qualname__", type(factory).__name__)
    module = getattr(factory, "__module__", None)
    return f"{module}:{name}" if module else name


def resolve_task(source: TaskSource, config: RunConfig) -> Task:
    """The Task of a run: ``source`` itself if a Task; else the factory it names (or ``config.task``,
    or the built-in datasets and models when both are None) called with ``config.to_dict()`` (the
    trainer calls this with the torch RNG seeded by ``config.seed``)."""
    if source is None:
        source = config.task
    if source is not None and config.imbalance is not None:
        raise ConfigError("imbalance: thins the built-in datasets only; with your own task, thin its data in the "
                          "task factory and leave imbalance unset")
    if isinstance(source, Task):
        return source
    if source is None:
        from hybrid_hpo.task.builtin import builtin_task

        factory, label = builtin_task, "built-in"
    elif isinstance(source, str):
        factory, label = load_factory(source), source
    elif callable(source):
        factory, label = source, _factory_name(source)
    else:
        raise ConfigError(f"task: expected a hybrid_hpo.Task, a factory config -> Task or its name ({_FORMAT}), "
                          f"got {type(source).__name__}")
    try:
        task = factory(config.to_dict())
    except ConfigError:
        raise
    except Exception as error:
        raise ConfigError(f"task: factory {label} raised {first_line(error)}") from None
    if not isinstance(task, Task):
        raise ConfigError(f"task: factory {label} returned {type(task).__name__}, not a hybrid_hpo.Task; "
                          "return Task(model=..., data=...)")
    return task
