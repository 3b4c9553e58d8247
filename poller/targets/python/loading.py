"""Handler loading: the ``package.module:function`` of a Python target, imported once.

Config validation (``poller check``) and the app's target registry call :func:`load_handler`;
every failure becomes a one-line :class:`~poller.errors.HandlerImportError` naming the path.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

from poller.errors import HandlerImportError

#: A handler: ``handler(event, context)``, sync or async, returning a JSON-serializable value.
Handler = Callable[..., Any]


def load_handler(path: str) -> Handler:
    """Import the handler named by ``path``.

    The current working directory is added to ``sys.path`` (at the end, so it never shadows
    installed packages) when missing: the ``poller`` console script does not put it there,
    and repo-local handlers such as ``examples.handlers:log_batch`` must still import.

    Args:
        path: ``package.module:function``; the function part may be dotted
            (``module:Class.method``).

    Returns:
        The callable.

    Raises:
        HandlerImportError: the path is malformed, the module does not import, the attribute
            is missing or is not callable.
    """
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise HandlerImportError(f"handler {path!r} must have the form 'package.module:function'")
    _ensure_cwd_on_path()
    module = _import_module(module_name)
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise HandlerImportError(
                f"handler {path!r}: module {module_name!r} has no attribute {attribute!r}"
            ) from None
    if not callable(target):
        raise HandlerImportError(
            f"handler {path!r}: {attribute!r} is a {type(target).__name__}, not a callable"
        )
    return target  # type: ignore[no-any-return]


def _ensure_cwd_on_path() -> None:
    """Append the working directory to ``sys.path`` unless it (or ``""``) is already there."""
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.append(cwd)


def _import_module(module_name: str) -> Any:
    """Import ``module_name``, turning every failure into a :class:`HandlerImportError`."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # The module itself (or a parent package) is missing, as opposed to one of its imports.
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            raise HandlerImportError(f"handler module {module_name!r} not found") from exc
        raise HandlerImportError(f"importing handler module {module_name!r} failed: {exc}") from exc
    except BaseException as exc:  # the module's own code, whatever it raises
        # Any error raised by the module's top-level code (SyntaxError, a failing import...),
        # BaseException included: a ``sys.exit(0)`` there must not pass for a clean exit.
        raise HandlerImportError(
            f"importing handler module {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
