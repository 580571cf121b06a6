"""A fake of Azure ML's REST API for the real azure-ai-ml SDK, offline, answering in recorded shapes.

`FakeAzureML` answers the REST calls the SDK makes (ARM, workspace discovery, run history), keeps
what was created, and records every request, so tests assert on the bodies the SDK really sends. It
is mounted under azure-core's `RequestsTransport`, the transport MLClient is given (`ml_client`); the
retry policy and error mapping above it are the SDK's own.

Each answer starts from a response body recorded against the real service (tests/recordings/, taken
from azure-ai-ml's recorded e2e sessions; `recorded()`), with only our names and the values we sent
put in. So the fake fills in no field the service was not seen to fill in:
- a data version's `dataUri` comes back in the long `azureml://subscriptions/...` form, and its
  `name` is the version (data_versions_uri_file_mltable.json);
- a job's PUT answers `NotStarted` and echoes the outputs bound to a path (pipeline_job_create_put,
  pipeline_job_output_with_path); a completed job names no `uri` for an output submitted without
  one (pipeline_job_completed_unbound_outputs);
- a failed step's error is in run history's children listing (pipeline_job_failed_step_error);
- a model version echoes `flavors` and `modelUri` as sent (model_versions_put_get_list);
- a missing resource is the recorded 404 body (error_bodies.json).
"""

from __future__ import annotations

import base64
import copy
import io
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import requests
import yaml
from azure.ai.ml import MLClient
from azure.core.credentials import AccessToken
from azure.core.pipeline.transport import RequestsTransport
from requests.adapters import BaseAdapter
from urllib3 import HTTPResponse

ROOT = Path(__file__).resolve().parents[1]
SUB, RG, WS = "00000000-1111-2222-3333-444444444444", "rg-autoretrain", "mlw-autoretrain"
WS_ID = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.MachineLearningServices/workspaces/{WS}"
ARM = "https://management.azure.com"
API = "https://westeurope.api.azureml.ms"
DATASTORE, COMPUTE, COMPONENT = "autoretrain_datasets", "cpu-cluster", "autoretrain_pipeline"
COMPONENT_VERSION = "0123456789abcdef"


RECORDINGS = ROOT / "tests" / "recordings"


def recorded(file: str, entry: int) -> dict[str, Any]:
    """Entry `entry` of a recording in tests/recordings/ (method, uri, status, bodies), a fresh copy."""
    return copy.deepcopy(json.loads((RECORDINGS / file).read_text())["entries"][entry])


def _long_uri(uri: str) -> str:
    """A datastore URI as the service answers it: the long form, `resourcegroups` in lower case."""
    short = "azureml://datastores/"
    if not uri.startswith(short):
        return uri
    return f"azureml://subscriptions/{SUB}/resourcegroups/{RG}/workspaces/{WS}/datastores/" + uri[len(short):]


def _not_found(code: str, message: str) -> Answer:
    """The recorded 404: a generic message, the specific one in `details` (error_bodies.json)."""
    body = recorded("error_bodies.json", 0)["response_body"]
    body["error"]["details"][0].update(code=code, message=message)
    return 404, body, {"x-ms-response-type": "error"}


# -- the fake service ----------------------------------------------------------------------------


def _jwt(claims: dict[str, str]) -> str:
    def part(data: dict[str, str]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


class FakeCredential:
    """A token credential whose tokens are JWT-shaped: pipeline submission decodes `aud`."""

    def get_token(self, *scopes: str, **_: Any) -> AccessToken:
        audience = scopes[0].removesuffix("/.default") if scopes else ARM
        token = _jwt({"aud": audience, "tid": "tenant-1", "oid": "function-identity"})
        return AccessToken(token, int(time.time()) + 3600)


@dataclass
class Sent:
    method: str
    url: str
    body: Any

    @property
    def path(self) -> str:
        return self.url.split("?", 1)[0]


Answer = tuple[int, Any] | tuple[int, Any, dict[str, str]]
SYSTEM = {"createdAt": "2026-11-25T12:00:00Z", "createdBy": "function-identity", "createdByType": "Application"}


@dataclass
class FakeAzureML(BaseAdapter):
    """Azure ML's REST API, as much of it as the adapter touches, kept in dicts."""

    sent: list[Sent] = field(default_factory=list)
    data: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Run history's children listing per pipeline job: `child()` builds one in the recorded shape.
    children: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Canned answers that go first, per (method, path regex): to inject 409, 429, 503... They carry
    # Retry-After 0.01: azure-core reads 0 as "none given" and backs off for seconds instead.
    queued: list[tuple[str, str, Answer]] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    def __hash__(self) -> int:
        return id(self)

    # requests' adapter interface
    def send(self, request: requests.PreparedRequest, **_: Any) -> requests.Response:  # type: ignore[override]
        raw = request.body.decode() if isinstance(request.body, bytes) else request.body
        body = json.loads(raw) if raw else None
        sent = Sent(str(request.method), str(request.url), body)
        self.sent.append(sent)
        answer = self._answer(sent)
        if isinstance(answer, BaseException):
            raise answer  # what the network did instead of answering (a timeout, a reset)
        status, payload, headers = (*answer, {}) if len(answer) == 2 else answer  # type: ignore[misc]
        content = json.dumps(payload).encode() if payload is not None else b""
        response = requests.Response()
        response.status_code = status
        response.headers.update({"Content-Type": "application/json", "x-ms-request-id": "req-1", **headers})
        response.raw = HTTPResponse(body=io.BytesIO(content), status=status, preload_content=False)
        response._content = content
        response.url = sent.url
        response.request = request
        return response

    def close(self) -> None:
        pass

    def requests_to(self, method: str, pattern: str) -> list[Sent]:
        return [s for s in self.sent if s.method == method and re.search(pattern, s.path)]

    def _answer(self, sent: Sent) -> Answer:
        for i, (method, pattern, answer) in enumerate(self.queued):
            if method == sent.method and re.search(pattern, sent.path):
                del self.queued[i]
                return answer
        for method, pattern, handler in self._routes():
            match = re.fullmatch(pattern, sent.path)
            if method == sent.method and match:
                return handler(sent, *match.groups())
        return 400, _error("UnexpectedRequest", f"the fake service has no route for {sent.method} {sent.path}")

    def _routes(self) -> list[tuple[str, str, Callable[..., Answer]]]:
        ws = re.escape(ARM + WS_ID)
        history = re.escape(f"{API}/history/v1.0{WS_ID}")
        return [
            ("GET", ws, self._workspace),
            ("GET", re.escape(API) + "/discovery", lambda _s: (200, {"api": API, "history": API})),
            ("PUT", ws + r"/data/([^/]+)/versions/([^/]+)", self._put_data),
            ("GET", ws + r"/data/([^/]+)/versions/([^/]+)", self._get_data),
            ("GET", ws + r"/components/([^/]+)/versions", self._list_components),
            ("GET", ws + r"/jobs", self._list_jobs),
            ("GET", ws + r"/jobs/([^/]+)", self._get_job),
            ("PUT", ws + r"/jobs/([^/]+)", self._put_job),
            ("GET", history + r"/runs/([^/]+)/children", self._children),
            ("GET", ws + r"/models/([^/]+)", self._model_container),
            ("GET", ws + r"/models/([^/]+)/versions", self._list_models),
            ("GET", ws + r"/models/([^/]+)/versions/([^/]+)", self._get_model),
            ("PUT", ws + r"/models/([^/]+)/versions/([^/]+)", self._put_model),
            ("GET", ws + r"/datastores/([^/]+)", self._datastore),
        ]

    # The workspace's own store, where jobs write their outputs (identity-based: no credentials).
    store_account, store_container = "stmlwautoretrain", "azureml-blobstore-ws-guid"

    def _datastore(self, _sent: Sent, name: str) -> Answer:
        # Only the workspace store, whose account a test can serve from Azurite. For our datasets
        # datastore the SDK would read a registered MLTable back through it to validate it (and fetch
        # the MLTable schema from azuremlschemas.azureedge.net); it skips that when it cannot, as here.
        if name != "workspaceblobstore":
            return _not_found("DatastoreNotFound", f"Datastore {name} not found (not served by the fake).")
        body = recorded("datastore_get.json", 0)["response_body"]
        body["id"] = f"{WS_ID}/datastores/{name}"
        body["properties"].update(accountName=self.store_account, containerName=self.store_container,
                                  subscriptionId=SUB, resourceGroup=RG)
        return 200, body

    def _workspace(self, _sent: Sent) -> Answer:
        return 200, {
            "id": WS_ID, "name": WS, "location": "westeurope",
            "properties": {"discoveryUrl": f"{API}/discovery", "workspaceId": "ws-guid"},
        }

    def _put_data(self, sent: Sent, name: str, version: str) -> Answer:
        previous = self.data.get((name, version))
        sent_props = sent.body["properties"]
        uri = _long_uri(sent_props["dataUri"])
        if previous and previous["properties"]["dataUri"] != uri:
            # Not in any recording: azure-ai-ml's own ASSET_PATH_ERROR text (AZURE-FACTS).
            return 400, _error("UserError", "Asset paths cannot be updated.")
        # The recorded answer (uri_file or mltable), with what was sent; the path in its long form.
        body = recorded("data_versions_uri_file_mltable.json", 2 if sent_props["dataType"] == "mltable" else 0)
        answer = body["response_body"]
        answer.update(id=f"{WS_ID}/data/{name}/versions/{version}", name=version)
        answer["properties"].update(
            description=sent_props.get("description"), tags=sent_props.get("tags") or {},
            properties=sent_props.get("properties") or {}, dataType=sent_props["dataType"], dataUri=uri,
        )
        self.data[(name, version)] = answer
        return (200 if previous else 201), answer

    def _get_data(self, _sent: Sent, name: str, version: str) -> Answer:
        if (name, version) not in self.data:
            return _not_found("DataVersionNotFound", f"Data version {name}:{version} not found.")
        return 200, self.data[(name, version)]

    def _list_components(self, _sent: Sent, name: str) -> Answer:
        if name != COMPONENT:
            return 200, {"value": []}
        pipeline = yaml.safe_load((ROOT / "ml" / "pipeline.yml").read_text())
        spec = {
            "name": COMPONENT, "version": COMPONENT_VERSION, "type": "pipeline",
            "display_name": pipeline["display_name"],
            "inputs": {n: {"type": i["type"] if isinstance(i, dict) else "integer"}
                       for n, i in pipeline["inputs"].items()},
            "outputs": {n: {"type": o["type"]} for n, o in pipeline["outputs"].items()},
            "jobs": {},
        }
        return 200, {"value": [{
            "id": f"{WS_ID}/components/{COMPONENT}/versions/{COMPONENT_VERSION}", "name": COMPONENT_VERSION,
            "properties": {"componentSpec": spec, "isAnonymous": False, "isArchived": False}, "systemData": SYSTEM,
        }]}

    def _list_jobs(self, sent: Sent) -> Answer:
        query = parse_qs(sent.url.split("?", 1)[1]) if "?" in sent.url else {}
        tag = (query.get("tag") or [None])[0]
        jobs = [j for j in self.jobs.values() if tag is None or tag in (j["properties"].get("tags") or {})]
        return 200, {"value": jobs, "nextLink": None}

    def _get_job(self, _sent: Sent, name: str) -> Answer:
        if name not in self.jobs:
            return _not_found("JobNotFound", f"Job {name} not found.")
        return 200, self.jobs[name]

    def _put_job(self, sent: Sent, name: str) -> Answer:
        if name in self.jobs:
            # Not in any recording: the service's refusal as AZURE-FACTS words it (the SDK maps 409).
            return 409, _error("UserError", "A job with this name already exists.")
        # The recorded create answer: NotStarted, the Studio link, what was sent echoed (an input or
        # output gains its mode; `inputs: {}` comes back null).
        answer = recorded("pipeline_job_create_put.json", 0)["response_body"]
        sent_props = sent.body["properties"]
        properties = answer["properties"]
        for key in ("description", "tags", "displayName", "experimentName", "componentId", "jobType", "settings",
                    "jobs"):
            if key in sent_props:
                properties[key] = sent_props[key]
        properties["inputs"] = {n: {"description": None, **i} for n, i in (sent_props.get("inputs") or {}).items()} \
            or None
        properties["outputs"] = {
            n: {"description": None, "assetName": None, "assetVersion": None, "pathOnCompute": None,
                "autoDeleteSetting": None, "mode": "ReadWriteMount", **o}
            for n, o in (sent_props.get("outputs") or {}).items()
        }
        studio = properties["services"]["Studio"]
        studio["endpoint"] = f"https://ml.azure.com/runs/{name}?wsid=/subscriptions/{SUB}/resourcegroups/{RG}/workspaces/{WS}"
        properties["services"]["Tracking"]["endpoint"] = f"azureml://westeurope.api.azureml.ms/mlflow/v1.0{WS_ID}?"
        properties["computeId"] = f"{WS_ID}/computes/{COMPUTE}"
        answer.update(id=f"{WS_ID}/jobs/{name}", name=name)
        self.jobs[name] = answer
        return 201, answer

    def finish(self, name: str, status: str) -> None:
        """The job ends. Its outputs stay as submitted: an output bound to a path keeps that path, and
        a declared output that was not bound names no path (`uri: null`), as a completed job's GET
        answers in the recording."""
        properties = self.jobs[name]["properties"]
        properties["status"] = status
        outputs = properties["outputs"]
        declared = yaml.safe_load((ROOT / "ml" / "pipeline.yml").read_text())["outputs"]
        unbound = recorded("pipeline_job_completed_unbound_outputs.json", 0)["response_body"]
        template = unbound["properties"]["outputs"]["job_out_path_1"]
        for output_name, output in declared.items():
            outputs.setdefault(output_name, {**template, "jobOutputType": output["type"]})

    def child(self, job: str, step: str, status: str, error: str | None = None) -> dict[str, Any]:
        """One step run of `job` as run history lists it (the recorded shape); added to its children."""
        listing = recorded("pipeline_job_failed_step_error.json", 2)["response_body"]
        entry = listing["value"][0]
        entry.update(runId=f"{job}-{step}-run", rootRunId=job, parentRunId=job, displayName=step, status=status)
        if error is None:
            entry["error"] = None
        else:
            entry["error"]["error"]["message"] = error
        self.children.setdefault(job, []).append(entry)
        return entry

    def _children(self, _sent: Sent, run_id: str) -> Answer:
        return 200, {"value": self.children.get(run_id, []), "continuationToken": None}

    def _versions_of(self, name: str) -> list[dict[str, Any]]:
        return [m for key, m in sorted(self.models.items(), key=lambda kv: int(kv[0])) if m["_name"] == name]

    def _model_container(self, _sent: Sent, name: str) -> Answer:
        versions = self._versions_of(name)
        if not versions:
            return _not_found("ModelNotFound", f"Model container with name: {name} not found.")
        return 200, {"id": f"{WS_ID}/models/{name}", "name": name,
                     "properties": {"latestVersion": str(len(versions)), "nextVersion": str(len(versions) + 1)}}

    def _public(self, model: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in model.items() if k != "_name"}

    def _list_models(self, sent: Sent, name: str) -> Answer:
        query = parse_qs(sent.url.split("?", 1)[1]) if "?" in sent.url else {}
        active = query.get("listViewType", ["ActiveOnly"])[0] == "ActiveOnly"
        versions = [m for m in self._versions_of(name) if not (active and m["properties"].get("isArchived"))]
        return 200, {"value": [self._public(m) for m in reversed(versions)]}

    def _get_model(self, _sent: Sent, name: str, version: str) -> Answer:
        model = self.models.get(version)
        if model is None or model["_name"] != name:
            return _not_found("ModelNotFound", f"Model {name}:{version} not found.")
        return 200, self._public(model)

    def _put_model(self, sent: Sent, name: str, version: str) -> Answer:
        sent_props = dict(sent.body["properties"])
        # As recorded: the long-form modelUri with `resourcegroups` re-cased, flavors as sent.
        uri = _long_uri(sent_props["modelUri"]).replace("/resourcegroups/", "/resourceGroups/")
        previous = self.models.get(version)
        if previous and previous["properties"]["modelUri"] != uri:
            # Not in any recording: azure-ai-ml's own ASSET_PATH_ERROR text (AZURE-FACTS).
            return 400, _error("UserError", "Asset paths cannot be updated.")
        answer = recorded("model_versions_put_get_list.json", 1)["response_body"]
        answer.update(id=f"{WS_ID}/models/{name}/versions/{version}", name=version)
        properties = answer["properties"]
        for key in ("description", "tags", "properties", "isArchived", "flavors", "modelType", "stage"):
            properties[key] = sent_props.get(key, properties[key] if key == "stage" else None)
        properties.update(modelUri=uri, jobName=sent_props.get("jobName"))
        self.models[version] = {"_name": name, **answer}
        return (200 if previous else 201), self._public(self.models[version])


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


class SleepRecordingTransport(RequestsTransport):
    """The SDK's own transport, except that the retry policy's waits are recorded, not slept."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.slept: list[float] = []

    def sleep(self, duration: float) -> None:
        self.slept.append(duration)


def ml_client(service: FakeAzureML, **options: Any) -> MLClient:
    """An MLClient whose every request goes to `service`; `options` as the app gives MLClient. Its
    transport (`client.fake_transport`) records the retry waits instead of sleeping them."""
    session = requests.Session()
    session.mount("https://", service)
    transport = SleepRecordingTransport(session=session, session_owner=False)
    client = MLClient(FakeCredential(), SUB, RG, WS, transport=transport, **options)
    client.fake_transport = transport  # type: ignore[attr-defined]
    return client
