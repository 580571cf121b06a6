"""The champion gate: promote a new model only when it beats the champion on the same rows."""

from __future__ import annotations

import logging

from autoretrain.datacontract import PromoteRule
from autoretrain.domain import (
    Metrics,
    ModelVersion,
)
from autoretrain.domain.errors import (
    WorkspaceError,
)
from autoretrain.logs import log_event
from autoretrain.loop.deps import Deps

log = logging.getLogger("autoretrain.loop")


_GATE_ATTEMPTS = 5


def _decide(
    metrics: Metrics, champion: ModelVersion | None, evaluated: str | None, rule: PromoteRule
) -> tuple[bool, str]:
    """The champion gate: (promote?, one line saying why). Both numbers come from the same test rows."""
    name, mine = metrics.primary, metrics.primary_value
    rows = f"{metrics.test_rows} test rows" if metrics.test_rows is not None else "the test rows"
    if rule.min_value is not None and not metrics.reaches(rule.min_value):
        return False, f"kept: {name} {mine:.4f} does not reach the contract's min_value {rule.min_value:g}"
    if champion is None:
        return True, f"promoted: first model, {name} {mine:.4f} on {rows}"
    if champion.version != evaluated:
        # Its numbers are not on this job's rows: comparing them would be unfair either way.
        return False, (
            f"kept v{champion.version}: it became champion after this job was submitted "
            f"(the job scored {'v' + evaluated if evaluated else 'no champion'}), so the two were not "
            "scored on the same rows; retrain this file to compare them"
        )
    theirs, gain = metrics.champion_value, metrics.gain_over_champion()
    if (theirs is None or gain is None) and metrics.champion_error:
        # The champion cannot score today's data (another contract): it cannot serve it either.
        return True, f"promoted over v{champion.version}: it could not be scored ({metrics.champion_error})"
    if theirs is None or gain is None:
        return False, f"kept v{champion.version}: the job did not score it on the same rows, so no fair comparison"
    versus = f"{name} {mine:.4f} vs v{champion.version}'s {theirs:.4f} on the same {rows}"
    if gain > rule.min_delta:
        return True, f"promoted: {versus}"
    need = f"more than {rule.min_delta:g} better" if rule.min_delta else "better (a tie keeps the champion)"
    return False, f"kept v{champion.version}: {versus}; needs {need}"


def _champion_gate(
    deps: Deps, model: ModelVersion, metrics: Metrics, *, evaluated: str | None
) -> tuple[bool, str]:
    """Decide, then promote with a compare-and-swap: when another completion changed the champion in
    between, decide again against the new one (which this job did not score, so it is kept)."""
    for _ in range(_GATE_ATTEMPTS):
        champion = deps.workspace.champion()
        if model.champion or (champion is not None and champion.version == model.version):
            return True, "promoted"  # a retry after promote(): it stays promoted
        promote, decision = _decide(metrics, champion, evaluated, deps.contract.promote)
        if not promote:
            return False, decision
        if deps.workspace.promote(model, replacing=champion) is not None:
            return True, decision
        log_event(log, logging.INFO, "complete.champion_changed", model_version=f"{model.name}:{model.version}")
    raise WorkspaceError(
        f"model {model.name}:{model.version}: the champion changed {_GATE_ATTEMPTS} times during the gate; "
        "the event will be retried."
    )
