"""The Workspace port on Azure Machine Learning, with azure-ai-ml v2.

Only `bootstrap` imports this module (for `AUTORETRAIN_WORKSPACE=azureml`), so the ~2 s import of
azure-ai-ml never slows a local cold start. What each port call does in the workspace:

    register_data   data asset `data_asset`, version = the work key, a uri_file on our datastore
                    (the `datasets` container), lineage as tags and properties
    submit          pipeline job `key.job_name` from the registered pipeline component (label
                    latest), every input bound (the training set, the contract, the window, the
                    champion or the "no champion yet" marker), every output bound to a path of ours,
                    our run tag
    job_status      the job's status; for a failed job, the failed step, its error and studio link,
                    and whether prep rejected the data (what its report output says)
    job_metrics     evaluate's `metrics` output (metrics.json), read from the path bound at submission
    register_model  model `model_name` from the path bound to the job's `model` output, metrics as
                    tags, lineage and the metrics JSON as properties; found again by its `work_key`
                    property
    champion        the newest version tagged `champion=true`
    promote         tag the new champion first, then untag the others

Outputs at paths we choose: a job resource names no path for a named output that was not bound to
one at submission (a completed pipeline job's GET answers `"uri": null` for it in azure-ai-ml's
recorded sessions; jobs.download resolves such outputs through run history). So every pipeline
output is bound at submission to `azureml://datastores/workspaceblobstore/paths/autoretrain/jobs/
<job>/<output>/` (domain.job_output_path, the local workspace's layout too), on the workspace's own
store, where the cluster's identity writes and the function's reads. Completion reads and registers
from there, and never asks the service where an output went.

Models are kept by `azureml_models.ModelRegistry`: one version per work key (found again by its
`work_key` property; twins of a race archived), metrics as tags, the champion and gate tags.

The contract travels with the job as a uri_file on our datastore: the adapter uploads it to
`datasets` at `contracts/<sha256 prefix>/<file name>` (content-addressed, so the same contract is the same
blob and the same input). azure-ai-ml could upload a local path itself, but it does so to the
workspace's default store with a storage client of its own, which needs write access there and
one more set of credentials; our datastore is already readable by the cluster.

Every SDK error becomes a `WorkspaceError` with one line naming what failed (azureml_calls.py: the
bounded retry policy, the status mapping, the error translation). Throttling (429), server errors
(5xx) and timeouts are retried first; when they persist the error propagates, so Event Grid retries.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from azure.ai.ml import Input, MLClient, Output
from azure.ai.ml.constants import AssetTypes
from azure.ai.ml.entities import Data, PipelineJobSettings
from azure.ai.ml.entities import PipelineJob as SdkPipelineJob
from azure.ai.ml.exceptions import ValidationException
from azure.core.exceptions import (
    AzureError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.storage.blob import BlobServiceClient

from autoretrain.adapters.azureml_calls import (
    CALL_BUDGET_SECONDS,
    CALL_RETRIES,
    RETRY_AFTER_CAP_SECONDS,
    BoundedRetryPolicy,
    client_options,
    data_rejection,
    job_state,
    one_line,
    service_reason,
    translated,
)
from autoretrain.adapters.azureml_models import (
    CHAMPION_TAG,
    METRICS_PROPERTY,
    WORK_KEY_PROPERTY,
    ModelRegistry,
)
from autoretrain.adapters.storage import AzureBlobStore
from autoretrain.adapters.storage import client_options as storage_client_options
from autoretrain.datacontract import NO_CHAMPION_FILES, REPORT_FILE, mltable_text, rejection
from autoretrain.domain import (
    JOB_TAG,
    NO_CHAMPION_PATH,
    BlobRef,
    DataVersion,
    JobMode,
    JobState,
    JobStatus,
    Metrics,
    ModelVersion,
    PipelineJob,
    TrainingMember,
    WorkKey,
    job_output_path,
)
from autoretrain.domain.errors import (
    JobNotFoundError,
    WorkspaceError,
    WorkspaceRejectedError,
)
from autoretrain.domain.ports import BlobStore
from autoretrain.logs import log_event

# The call policy (azureml_calls) is re-exported: the adapter and its policy are one import for callers.
__all__ = [
    "CALL_BUDGET_SECONDS", "CALL_RETRIES", "CHAMPION_TAG", "CONTRACTS_PREFIX", "METRICS_PROPERTY",
    "RETRY_AFTER_CAP_SECONDS", "WORK_KEY_PROPERTY", "AzureMLWorkspace", "BoundedRetryPolicy", "client_options",
    "job_state", "service_reason",
]

log = logging.getLogger("autoretrain.adapters.azureml")

CONTRACTS_PREFIX = "contracts"
TRAINSETS_PREFIX = "trainsets"
MEMBERS_FILE = "members.json"  # beside a training set's MLTable: its members' data versions
# metrics.json and report.json are a few KiB; a larger one is not ours.
_OUTPUT_FILE_LIMIT = 1 << 20
# The workspace's own store (every workspace has it): jobs write their outputs there.
OUTPUTS_DATASTORE = "workspaceblobstore"
# The pipeline's outputs (ml/pipeline.yml) and their types: each bound to job_output_path at submission.
OUTPUTS: Mapping[str, str] = {"model": AssetTypes.MLFLOW_MODEL, "metrics": AssetTypes.URI_FOLDER,
                              "report": AssetTypes.URI_FOLDER}


def _store_client(client: MLClient) -> Callable[[str, str], BlobStore]:
    def make(account: str, endpoint: str) -> BlobStore:
        service = BlobServiceClient(
            f"https://{account}.blob.{endpoint}", credential=client._credential, **storage_client_options()
        )
        return AzureBlobStore(service, create_containers=False)

    return make


class AzureMLWorkspace:
    """The Workspace port on an Azure ML workspace, through one MLClient."""

    def __init__(
        self,
        client: MLClient,
        *,
        blobs: BlobStore,
        datastore: str,
        datasets_container: str,
        compute: str,
        contract: Path,
        experiment: str = "autoretrain",
        data_asset: str = "autoretrain-data",
        model_name: str = "autoretrain-model",
        pipeline_component: str = "autoretrain_pipeline",
        workspace_store: Callable[[str, str], BlobStore] | None = None,
        outputs_datastore: str = OUTPUTS_DATASTORE,
    ) -> None:
        self._client = client
        # (account name, endpoint suffix) -> a client of the workspace's own storage, where jobs write.
        self._store = workspace_store or _store_client(client)
        self._blobs = blobs
        self.datastore = datastore
        self.datasets_container = datasets_container
        self.compute = compute
        self._contract = contract
        self.experiment = experiment
        self.data_asset = data_asset
        self.model_name = model_name
        self.pipeline_component = pipeline_component
        self._models = ModelRegistry(client, model_name)
        self.outputs_datastore = outputs_datastore
        self._outputs: tuple[BlobStore, str] | None = None  # (store, container), found once

    # -- data ----------------------------------------------------------------------------------

    def _datastore_uri(self, blob_name: str) -> str:
        return f"azureml://datastores/{self.datastore}/paths/{blob_name}"

    def register_data(
        self, source: BlobRef, key: WorkKey, lineage: Mapping[str, str], content: bytes | None = None
    ) -> DataVersion:
        # `content` is not needed: the data version is the snapshot blob's URI.
        if source.container != self.datasets_container:
            raise WorkspaceError(
                f"cannot register {source.path}: datastore {self.datastore!r} reads container "
                f"{self.datasets_container!r} only."
            )
        uri = self._datastore_uri(source.name)
        asset = Data(
            name=self.data_asset,
            version=key.value,
            type=AssetTypes.URI_FILE,
            path=uri,
            description=f"{source.path} (eTag {source.etag})",
            tags=dict(lineage),
            properties=dict(lineage),
        )
        # The same name, version and path again is an update that changes nothing: a retry is a no-op.
        with translated(f"register data {self.data_asset}:{key} ({uri})"):
            self._client.data.create_or_update(asset)
        return DataVersion(name=self.data_asset, version=key.value, uri=uri)

    def register_training_set(self, key: WorkKey, members: Sequence[TrainingMember]) -> DataVersion:
        """An MLTable data asset version (Azure ML's own format for a set of files) that names the
        members' snapshots on the datastore; its MLTable file is uploaded under trainsets/<key>/ with
        members.json, the members' data versions. The paths come from the members themselves (each
        snapshot's blob), so a training set of 500 costs the same calls as one of 1."""
        name = f"{self.data_asset}-trainset"
        # The long form, as the service answers a datastore path: the `mltable` package that prep reads
        # the files with takes no other (it reads `azureml://datastores/...` as a local path).
        client = self._client
        workspace = (f"azureml://subscriptions/{client.subscription_id}/resourcegroups/{client.resource_group_name}"
                     f"/workspaces/{client.workspace_name}")
        files = [f"{workspace}/datastores/{self.datastore}/paths/{member.snapshot}" for member in members]
        folder = f"{TRAINSETS_PREFIX}/{key.value}"
        versions = [member.data_version for member in members]
        self._blobs.upload(self.datasets_container, f"{folder}/{MEMBERS_FILE}", json.dumps(versions).encode())
        self._blobs.upload(self.datasets_container, f"{folder}/MLTable", mltable_text(files).encode())
        uri = self._datastore_uri(f"{folder}/")
        asset = Data(
            name=name, version=key.value, type=AssetTypes.MLTABLE, path=uri,
            description=f"The {len(files)} data version(s) job {key.job_name} trains on",
            tags={"work_key": key.value}, properties={"members": str(len(members))},
        )
        with translated(f"register training set {name}:{key} ({uri})"):
            self._client.data.create_or_update(asset)
        return DataVersion(name=name, version=key.value, uri=uri)

    def training_set_members(self, training_set: str) -> tuple[str, ...]:
        _, _, version = training_set.rpartition(":")
        path = f"{TRAINSETS_PREFIX}/{version}/{MEMBERS_FILE}"
        data = self._blobs.read(self.datasets_container, path, 64 << 20)
        if data is None:
            raise WorkspaceRejectedError(
                f"training set {training_set}: no {self.datasets_container}/{path}; "
                "it was not registered by autoretrain."
            )
        return tuple(str(v) for v in json.loads(data))

    # -- jobs ----------------------------------------------------------------------------------

    def _existing_job(self, name: str) -> Any | None:
        try:
            return self._client.jobs.get(name)
        except ResourceNotFoundError:
            return None

    def submit(
        self, data: DataVersion, key: WorkKey, tags: Mapping[str, str], champion: ModelVersion | None = None,
        train_last: int = 0, new_files: int = 1, mode: JobMode = JobMode.TRAIN,
    ) -> PipelineJob:
        name = key.job_name
        with translated(f"submit {name}"):
            existing = self._existing_job(name)
            if existing is not None:
                return self._run(existing)
            component = self._component()
            contract = self._upload_contract()
            inputs: dict[str, Any] = {
                "data": Input(type=AssetTypes.MLTABLE, path=f"azureml:{data.name}:{data.version}"),
                "contract": Input(type=AssetTypes.URI_FILE, path=contract),
                "train_last": train_last,
                "new_files": new_files,
                "mode": mode.value,
                # Scored by evaluate on the same test rows as the new model; a first model's job binds
                # the "no champion yet" marker: no input of the published component is left unbound.
                "champion": Input(
                    type=AssetTypes.MLFLOW_MODEL,
                    path=f"azureml:{champion.name}:{champion.version}" if champion else self._no_champion(),
                ),
            }
            # Every output at a path of ours: completion reads them there, never asks where they went.
            outputs = {
                output: Output(type=kind, path=self._output_uri(name, output), mode="rw_mount")
                for output, kind in OUTPUTS.items()
            }
            job = SdkPipelineJob(
                name=name,
                display_name=name,
                description=(f"Retrain on {data.name}:{data.version}" if mode is JobMode.TRAIN
                             else f"Score the champion on {data.name}:{data.version}"),
                component=component,
                experiment_name=self.experiment,
                tags=dict(tags),
                inputs=inputs,
                outputs=outputs,
                settings=PipelineJobSettings(default_compute=self.compute),
            )
            try:
                created = self._client.jobs.create_or_update(job)
            except ResourceExistsError:
                # Another delivery created it between our get and our create: theirs is ours.
                created = self._client.jobs.get(name)
        return self._run(created)

    def _component(self) -> str:
        """The ARM id of the pipeline component's latest version (`autoretrain publish` registers it)."""
        try:
            component = self._client.components.get(self.pipeline_component, label="latest")
        except (ResourceNotFoundError, ValidationException) as exc:
            # No version at all: a 404 for the name, or (for label="latest") an empty list.
            raise WorkspaceError(
                f"pipeline component {self.pipeline_component!r} is not registered in the workspace; "
                "publish it with `autoretrain publish` (azd deploy's postdeploy hook runs it)."
            ) from exc
        return str(component.id)

    def _output_uri(self, job: str, output: str) -> str:
        return f"azureml://datastores/{self.outputs_datastore}/paths/{job_output_path(job, output)}/"

    def _no_champion(self) -> str:
        """The "no champion yet" marker folder on our datastore (uploaded again: the same bytes)."""
        for name, text in NO_CHAMPION_FILES.items():
            self._blobs.upload(self.datasets_container, f"{NO_CHAMPION_PATH}/{name}", text.encode())
        return self._datastore_uri(f"{NO_CHAMPION_PATH}/")

    def _upload_contract(self) -> str:
        data = self._contract.read_bytes()
        digest = hashlib.sha256(data).hexdigest()[:16]
        blob = f"{CONTRACTS_PREFIX}/{digest}/{self._contract.name}"
        self._blobs.upload(self.datasets_container, blob, data)
        return self._datastore_uri(blob)

    def _run(self, job: Any) -> PipelineJob:
        tags = {str(k): str(v) for k, v in (getattr(job, "tags", None) or {}).items()}
        return PipelineJob(
            name=str(job.name), experiment=str(job.experiment_name), status=job_state(job.status), tags=tags
        )

    def job_status(self, job: str) -> JobStatus:
        with translated(f"status of job {job}"):
            try:
                found = self._client.jobs.get(job)
            except ResourceNotFoundError as exc:
                raise JobNotFoundError(f"status of job {job} failed: {service_reason(exc)}") from exc
            state = job_state(found.status)
            if state is not JobState.FAILED:
                return JobStatus(name=job, state=state, log=found.studio_url)
            return self._failure(found)

    def jobs(self) -> Iterator[PipelineJob]:
        with translated("list jobs"):
            # The service filters by tag key, so a pass pages through our jobs only.
            for job in self._client.jobs.list(tag=JOB_TAG):
                tags = {str(k): str(v) for k, v in (getattr(job, "tags", None) or {}).items()}
                if job is not None and JOB_TAG in tags:
                    yield PipelineJob(str(job.name), str(job.experiment_name), job_state(job.status), tags)

    def _failure(self, job: Any) -> JobStatus:
        """The failed step of a failed pipeline job, its error and where to read its log.

        Run history's children listing (`runs/<job>/children`) carries each step's status, node name
        (`displayName`) and own error (`error.error.message`), as azure-ai-ml's recorded sessions show
        (tests/recordings/pipeline_job_failed_step_error.json); the job resource carries only
        `status: Failed`. azure-ai-ml's public `jobs.list(parent_job_name=...)` drops the error, so
        the listing is read through its run-history client as the service sends it."""
        failed = [child for child in self._children(str(job.name)) if job_state(child.status) is JobState.FAILED]
        step = failed[0] if failed else None
        error = getattr(getattr(getattr(step, "error", None), "error", None), "message", None)
        return JobStatus(
            name=str(job.name),
            state=JobState.FAILED,
            failed_step=str(step.display_name or step.run_id) if step else None,
            error=one_line(error, 500) if error else None,
            log=job.studio_url,
            rejected=self._rejection(str(job.name), error),
        )

    def _children(self, job: str) -> list[Any]:
        runs = self._client.jobs._runs_operations
        try:
            pages = runs._operation.get_child(
                runs._subscription_id, runs._resource_group_name, runs._workspace_name, job, cls=lambda objs: objs,
            )
            return [child for child in pages if child is not None]
        except (AzureError, AttributeError) as exc:
            # Without it the job still reads as failed, with no step named.
            log_event(log, logging.WARNING, "workspace.steps_unavailable", job=job, reason=service_reason(exc))
            return []

    def _rejection(self, job: str, error: str | None) -> str | None:
        """prep's reason when the new file broke the contract, from its report output (written before
        it exited). Only when there is no report: the error text, a wording the service does not
        promise, with a warning line."""
        report = self._read_output(job, "report", REPORT_FILE)
        if report is not None:
            try:
                return rejection(json.loads(report))
            except ValueError:
                return None
        guessed = data_rejection(error)
        if guessed:
            log_event(log, logging.WARNING, "workspace.rejection_from_error_text", job=job,
                      reason="no report output; the step's exit code in its error text says the data is at fault")
        return guessed

    def _outputs_store(self) -> tuple[BlobStore, str]:
        """A store of the datastore the outputs are bound to, and its container (looked up once)."""
        if self._outputs is None:
            store = self._client.datastores.get(self.outputs_datastore)
            client = self._store(str(store.account_name), str(getattr(store, "endpoint", None) or "core.windows.net"))
            self._outputs = (client, str(store.container_name))
        return self._outputs

    def _read_output(self, job: str, output: str, file: str) -> bytes | None:
        """One file of a job's output, at the path bound at submission; None when it is not there."""
        store, container = self._outputs_store()
        return store.read(container, f"{job_output_path(job, output)}/{file}", _OUTPUT_FILE_LIMIT)

    def job_metrics(self, job: str) -> Metrics:
        """evaluate's metrics.json, read at the path its `metrics` output was bound to at submission,
        with our own storage client and its bounded retries. (azure-ai-ml's jobs.download would ask run
        history where the output went, and its storage client retries for minutes.)"""
        action = f"read metrics of job {job}"
        with translated(action):
            data = self._read_output(job, "metrics", "metrics.json")
        if data is None:
            raise WorkspaceRejectedError(
                f"{action} failed: no metrics.json at {self._output_uri(job, 'metrics')}; the evaluate step "
                "wrote none (see the job's log)."
            )
        try:
            return Metrics.from_evaluate(json.loads(data))
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise WorkspaceError(
                f"job {job}: its metrics output has no readable metrics.json ({one_line(exc)})."
            ) from exc

    # -- models: the registry (azureml_models.py) -------------------------------------------------

    def register_model(self, job: str, key: WorkKey, metrics: Metrics, lineage: Mapping[str, str]) -> ModelVersion:
        action = f"register model {self.model_name} for {key} (job {job})"
        with translated(action):
            existing = self._models.existing(key)
            if existing is not None:
                return existing
            # The path the job's model output was bound to: not a job reference the service must resolve.
            mlmodel = self._read_output(job, "model", "MLmodel")
            if mlmodel is None:
                raise WorkspaceRejectedError(
                    f"{action} failed: no MLflow model at {self._output_uri(job, 'model')} (no MLmodel file); "
                    "the train step wrote none (see the job's log)."
                )
            return self._models.register(job, key, metrics, lineage, path=self._output_uri(job, "model"),
                                         mlmodel=mlmodel)

    def champion(self) -> ModelVersion | None:
        return self._models.champion()

    def record_decision(self, model: ModelVersion, decision: str, *, tag: str = "gate") -> None:
        self._models.record_decision(model, decision, tag=tag)

    def promote(self, model: ModelVersion, *, replacing: ModelVersion | None) -> ModelVersion | None:
        return self._models.promote(model, replacing=replacing)

    # -- lifecycle: jobs run in Azure ML, not in this process ------------------------------------

    def drain(self, timeout: float) -> bool:
        return True

    def close(self) -> None:
        pass
