"""A timer -> autoretrain.loop.reconcile: finds what events missed (lost, dead-lettered, crashed)."""

from __future__ import annotations

import logging

import azure.functions as func

from autoretrain.logs import invocation, log_event

bp = func.Blueprint()
log = logging.getLogger("autoretrain.functions.reconcile")


# The schedule is an app setting (the host resolves %NAME%), so ops can change it without a deploy.
@bp.function_name("reconcile")
@bp.timer_trigger(arg_name="timer", schedule="%AUTORETRAIN_RECONCILE_SCHEDULE%")
def reconcile(timer: func.TimerRequest) -> None:
    # One span per pass; each file it finds gets a trace of its own (loop.reconcile).
    with invocation("reconcile"):
        log_event(log, logging.INFO, "reconcile.started", past_due=timer.past_due)
        from autoretrain import loop  # the use cases and their wiring: at the first event, not at import
        from autoretrain.bootstrap import runtime, runtime_settings

        loop.reconcile(runtime(), grace=runtime_settings().reconcile_grace)
