"""A timer -> autoretrain.loop.reconcile: finds what events missed (lost, dead-lettered, crashed)."""

from __future__ import annotations

import azure.functions as func

from autoretrain import loop
from autoretrain.bootstrap import runtime, runtime_settings

bp = func.Blueprint()


# The schedule is an app setting (the host resolves %NAME%), so ops can change it without a deploy.
@bp.function_name("reconcile")
@bp.timer_trigger(arg_name="timer", schedule="%AUTORETRAIN_RECONCILE_SCHEDULE%")
def reconcile(timer: func.TimerRequest) -> None:
    loop.reconcile(runtime(), grace=runtime_settings().reconcile_grace)
