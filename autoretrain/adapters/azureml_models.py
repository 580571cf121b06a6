"""The Azure ML adapter's model registry: model versions of one name, their champion tag, the gate's
decision tag, and one model per work key (found again by its `work_key` property).

Model versions must be integers in a workspace, so unlike data versions they cannot be the work key:
the service numbers them, and a version is found again by its `work_key` property before one is
registered. Two workers racing through that check at once both register; each then lists the key's
versions, keeps the lowest and archives the others, so both return the same model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from azure.ai.ml import MLClient
from azure.ai.ml.constants import AssetTypes
from azure.ai.ml.entities import Model
from azure.core.exceptions import ResourceNotFoundError

from autoretrain.adapters.azureml_calls import translated
from autoretrain.domain import Metrics, ModelVersion, WorkKey
from autoretrain.domain.errors import WorkspaceError
from autoretrain.logs import log_event

__all__ = ["CHAMPION_TAG", "GATE_TAG", "METRICS_PROPERTY", "WORK_KEY_PROPERTY", "ModelRegistry", "flavors"]

log = logging.getLogger("autoretrain.adapters.azureml")

GATE_TAG = "gate"
CHAMPION_TAG = "champion"
WORK_KEY_PROPERTY = "work_key"
# Properties cannot be changed once set: the metrics as evaluate reported them, whole.
METRICS_PROPERTY = "autoretrain.metrics"


class ModelRegistry:
    """The model versions of `model_name` in one workspace."""

    def __init__(self, client: MLClient, model_name: str) -> None:
        self._client = client
        self.model_name = model_name

    def _versions(self) -> list[Any]:
        try:
            return list(self._client.models.list(name=self.model_name))
        except ResourceNotFoundError:
            return []

    def existing(self, key: WorkKey) -> ModelVersion | None:
        """The version registered for `key` before (the lowest, should two be), or None."""
        found = [m for m in self._versions() if (m.properties or {}).get(WORK_KEY_PROPERTY) == key.value]
        return self._model(min(found, key=_version_number)) if found else None

    def register(
        self, job: str, key: WorkKey, metrics: Metrics, lineage: Mapping[str, str], *, path: str, mlmodel: bytes,
    ) -> ModelVersion:
        """Register the MLflow model at `path` (its MLmodel file's bytes: `mlmodel`) for `key`; one per key."""
        model = Model(
            name=self.model_name,
            path=path,
            type=AssetTypes.MLFLOW_MODEL,
            # Sent, not left to the service: azure-ai-ml reads `flavors` of every model version it
            # gets back, and the recorded answers echo what was sent.
            flavors=flavors(mlmodel),
            description=f"Trained by {job}",
            tags=metrics.as_tags(),
            properties={**lineage, WORK_KEY_PROPERTY: key.value, METRICS_PROPERTY: metrics.to_json()},
        )
        created = self._client.models.create_or_update(model)
        # Lookup and create are two calls: two workers past the lookup at once register two
        # versions. Both then see both, keep the lowest and archive the rest: one model per key.
        twins = [m for m in self._versions() if (m.properties or {}).get(WORK_KEY_PROPERTY) == key.value]
        if len(twins) <= 1:
            return self._model(created)
        first = min(twins, key=_version_number)
        for twin in twins:
            if twin.version != first.version:
                self._client.models.archive(self.model_name, version=str(twin.version))
                log_event(log, logging.WARNING, "workspace.model_twin_archived", work_key=key.value,
                          kept=first.version, archived=twin.version)
        return self._model(first)

    def _model(self, model: Any) -> ModelVersion:
        properties = dict(model.properties or {})
        try:
            metrics = Metrics.from_json(properties.pop(METRICS_PROPERTY))
        except (KeyError, ValueError, TypeError) as exc:
            raise WorkspaceError(
                f"model {model.name}:{model.version} has no {METRICS_PROPERTY!r} property; "
                "it was not registered by autoretrain."
            ) from exc
        lineage = {k: str(v) for k, v in properties.items() if not k.startswith("azureml.")}
        return ModelVersion(
            name=str(model.name),
            version=str(model.version),
            job=lineage.get("job", ""),
            metrics=metrics,
            properties=lineage,
            champion=_is_champion(model),
        )

    def champion(self) -> ModelVersion | None:
        with translated(f"find the champion of model {self.model_name}"):
            champions = [m for m in self._versions() if _is_champion(m)]
        # promote() tags the new champion before it untags the old one: if it died in between,
        # two carry the tag and the newer one is the champion.
        return self._model(max(champions, key=_version_number)) if champions else None

    def record_decision(self, model: ModelVersion, decision: str, *, tag: str = GATE_TAG) -> None:
        with translated(f"tag model {model.name}:{model.version} with the decision {tag!r}"):
            self._retag(model.version, lambda tags: {**tags, tag: decision[:256]})

    def promote(self, model: ModelVersion, *, replacing: ModelVersion | None) -> ModelVersion | None:
        # Tags have no compare-and-swap in Azure ML: the check narrows the race to the moment
        # between this read and the tagging, which completions of one workspace rarely share.
        current = self.champion()
        if (current.version if current else None) != (replacing.version if replacing else None):
            return None
        with translated(f"promote model {model.name}:{model.version}"):
            promoted = self._retag(model.version, lambda tags: {**tags, CHAMPION_TAG: "true"})
            for other in self._versions():
                if _is_champion(other) and str(other.version) != model.version:
                    self._retag(str(other.version), _without_champion)
        return self._model(promoted)

    def _retag(self, version: str, change: Callable[[dict[str, str]], dict[str, str]]) -> Any:
        # Tags are the one mutable part of a model version: the same version and path again
        # with other tags is an update.
        current = self._client.models.get(self.model_name, version=version)
        current.tags = change(dict(current.tags or {}))
        return self._client.models.create_or_update(current)


def flavors(mlmodel: bytes) -> dict[str, dict[str, str]]:
    """The flavors an MLmodel file declares, each with its plain settings (the REST shape takes strings)."""
    import yaml

    try:
        raw = yaml.safe_load(mlmodel)
    except yaml.YAMLError:
        return {}
    flavors = raw.get("flavors") if isinstance(raw, dict) else None
    if not isinstance(flavors, dict):
        return {}
    return {
        str(name): {str(k): str(v) for k, v in (spec or {}).items() if isinstance(v, str | int | float | bool)}
        for name, spec in flavors.items() if isinstance(spec, dict | type(None))
    }


def _is_champion(model: Any) -> bool:
    return str((model.tags or {}).get(CHAMPION_TAG, "")).lower() == "true"


def _without_champion(tags: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in tags.items() if k != CHAMPION_TAG}


def _version_number(model: Any) -> int:
    try:
        return int(model.version)
    except (TypeError, ValueError):
        return -1
