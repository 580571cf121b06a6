"""The function app as the local host sees it: imported from its folder, indexed with the
azure-functions library's own indexing, binding expressions resolved from the app settings."""

from __future__ import annotations

import importlib
import os
import re
import sys
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import azure.functions as func

from autoretrain.domain.errors import ConfigError

__all__ = ["EVENT_GRID_TRIGGER", "TIMER_TRIGGER", "FunctionInfo", "index_functions", "load_app", "resolve_setting"]

EVENT_GRID_TRIGGER = "eventGridTrigger"
TIMER_TRIGGER = "timerTrigger"


@dataclass(frozen=True, slots=True)
class FunctionInfo:
    """One indexed function: its name, trigger binding and the Python callable behind it."""

    name: str
    trigger_type: str
    arg_name: str
    user_function: Callable[..., Any]
    schedule: str | None = None
    run_on_startup: bool = False


# FunctionApp.get_functions() registers the functions as it indexes them, so a second call on the
# same app raises; every host built from one app shares the first result.
_INDEX_LOCK = threading.Lock()
_INDEX: weakref.WeakKeyDictionary[Any, tuple[FunctionInfo, ...]] = weakref.WeakKeyDictionary()


def index_functions(app: Any) -> tuple[FunctionInfo, ...]:
    """Index `app` (a func.FunctionApp) with the library's own indexing, once per app object."""
    with _INDEX_LOCK:
        cached = _INDEX.get(app)
        if cached is not None:
            return cached
        infos: list[FunctionInfo] = []
        for function in app.get_functions():
            trigger = function.get_trigger()
            if trigger is None:
                raise ConfigError(
                    f"function {function.get_function_name()!r} has no trigger; give it one decorator "
                    "such as @app.event_grid_trigger(arg_name=...)."
                )
            binding = trigger.get_binding_name()
            infos.append(
                FunctionInfo(
                    name=function.get_function_name(),
                    trigger_type=binding,
                    arg_name=trigger.name,
                    user_function=function.get_user_function(),
                    schedule=getattr(trigger, "schedule", None) if binding == TIMER_TRIGGER else None,
                    run_on_startup=bool(getattr(trigger, "run_on_startup", False)),
                )
            )
        result = tuple(infos)
        _INDEX[app] = result
        return result


def load_app(app: Any, attribute: str, app_root: Path | None) -> func.FunctionApp:
    """`app` itself, or the FunctionApp named `attribute` in the module `app`, imported from
    `app_root` (default: the current folder) as `func start` does."""
    if isinstance(app, str):
        app = _import_app(app, attribute, app_root)
    if not isinstance(app, func.FunctionApp):
        raise ConfigError(f"{app!r} is not an azure.functions.FunctionApp.")
    return app


def _import_app(module_name: str, attribute: str, app_root: Path | None) -> Any:
    # Like `func start`, import the app from its folder, whatever put us on sys.path.
    root = str(Path(app_root or Path.cwd()).resolve())
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise ConfigError(
            f"cannot import the function app module {module_name!r} from {root}; run the host from "
            "the project folder (where function_app.py is)."
        ) from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ConfigError(
            f"module {module_name!r} has no attribute {attribute!r}; point the host "
            "at the module that defines the FunctionApp."
        ) from None


def resolve_setting(value: str) -> str:
    """`%NAME%` in a binding expression is the app setting NAME, as the real host resolves it."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ConfigError(f"%{name}% names the app setting {name}, which is not set; set it and start again.")
        return os.environ[name]

    return re.sub(r"%([A-Za-z0-9_.:-]+)%", one, value)
