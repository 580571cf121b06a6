"""A fake of Azure ML's REST API for the real azure-ai-ml SDK, offline.

`FakeAzureML` answers the REST calls the SDK makes (ARM, workspace discovery, run history) with
bodies shaped like the service's, keeps what was created, and records every request, so tests assert
on the bodies the SDK really sends. It is mounted under azure-core's `RequestsTransport`, the
transport MLClient is given (`ml_client`); the retry policy and error mapping above it are the SDK's
own.
"""

from __future__ import annotations

import base64
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
    children: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    run_errors: dict[str, str] = field(default_factory=dict)
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
            ("GET", history + r"/runs/([^/]+)/details", self._details),
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
            return 404, _error("UserError", f"Could not find datastore {name} (not served by the fake).")
        return 200, {
            "id": f"{WS_ID}/datastores/{name}", "name": name, "systemData": SYSTEM,
            "properties": {
                "datastoreType": "AzureBlob", "accountName": self.store_account,
                "containerName": self.store_container, "endpoint": "core.windows.net", "protocol": "https",
                "credentials": {"credentialsType": "None"}, "isDefault": name == "workspaceblobstore",
            },
        }

    def _workspace(self, _sent: Sent) -> Answer:
        return 200, {
            "id": WS_ID, "name": WS, "location": "westeurope",
            "properties": {"discoveryUrl": f"{API}/discovery", "workspaceId": "ws-guid"},
        }

    def _put_data(self, sent: Sent, name: str, version: str) -> Answer:
        previous = self.data.get((name, version))
        if previous and previous["properties"]["dataUri"] != sent.body["properties"]["dataUri"]:
            return 400, _error("UserError", "Asset paths cannot be updated.")
        self.data[(name, version)] = {
            "id": f"{WS_ID}/data/{name}/versions/{version}", "name": version,
            "properties": sent.body["properties"], "systemData": SYSTEM,
        }
        return (200 if previous else 201), self.data[(name, version)]

    def _get_data(self, _sent: Sent, name: str, version: str) -> Answer:
        if (name, version) not in self.data:
            return 404, _error("UserError", f"Could not find asset with name {name} and version {version}.")
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
            return 404, _error("UserError", f"Could not find job {name}.")
        return 200, self.jobs[name]

    def _put_job(self, sent: Sent, name: str) -> Answer:
        if name in self.jobs:
            return 409, _error("UserError", "A job with this name already exists.")
        properties = {**sent.body["properties"], "status": "NotStarted", "services": {
            "Studio": {"jobServiceType": "Studio", "endpoint": f"https://ml.azure.com/runs/{name}?wsid={WS_ID}"},
        }}
        self.jobs[name] = {"id": f"{WS_ID}/jobs/{name}", "name": name, "properties": properties, "systemData": SYSTEM}
        return 201, self.jobs[name]

    def finish(self, name: str, status: str) -> None:
        """The job ends. A completed one's outputs now name where its steps wrote them, as the service
        answers: a path on the default datastore under the producing step's run id."""
        properties = self.jobs[name]["properties"]
        properties["status"] = status
        if status == "Completed":
            # The job was submitted without outputs: they come from its pipeline component.
            declared = yaml.safe_load((ROOT / "ml" / "pipeline.yml").read_text())["outputs"]
            outputs = properties.setdefault("outputs", {}) or {}
            properties["outputs"] = outputs
            for output_name, output in declared.items():
                outputs.setdefault(output_name, {"jobOutputType": output["type"], "mode": "ReadWriteMount"})
                outputs[output_name]["uri"] = (
                    f"azureml://datastores/workspaceblobstore/paths/azureml/{name}-step/{output_name}/"
                )

    def _children(self, _sent: Sent, run_id: str) -> Answer:
        return 200, {"value": self.children.get(run_id, []), "continuationToken": None}

    def _details(self, _sent: Sent, run_id: str) -> Answer:
        error = self.run_errors.get(run_id)
        details: dict[str, Any] = {"runId": run_id, "status": "Failed" if error else "Completed"}
        if error:
            details["error"] = {"error": {"code": "UserError", "message": error}}
        return 200, details

    def _versions_of(self, name: str) -> list[dict[str, Any]]:
        return [m for key, m in sorted(self.models.items(), key=lambda kv: int(kv[0])) if m["_name"] == name]

    def _model_container(self, _sent: Sent, name: str) -> Answer:
        versions = self._versions_of(name)
        if not versions:
            return 404, _error("UserError", f"Could not find model container {name}.")
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
            return 404, _error("UserError", f"Could not find model {name}:{version}.")
        return 200, self._public(model)

    def _put_model(self, sent: Sent, name: str, version: str) -> Answer:
        properties = dict(sent.body["properties"])
        previous = self.models.get(version)
        if previous and previous["properties"]["modelUri"] != properties["modelUri"]:
            return 400, _error("UserError", "Asset paths cannot be updated.")
        if previous is None and properties["modelUri"].startswith("azureml://jobs/"):
            # (Kept for models registered from a job reference; the adapter registers the path the
            # job's output names.)
            # The service resolves a job output to where the job wrote it.
            job = properties["modelUri"].split("/")[3]
            properties["modelUri"] = (
                f"azureml://subscriptions/{SUB}/resourcegroups/{RG}/workspaces/{WS}/datastores/"
                f"workspaceblobstore/paths/azureml/{job}/model/"
            )
            properties["jobName"] = job
        properties.setdefault("flavors", {"python_function": {"data": {"loader_module": "mlflow.sklearn"}}})
        self.models[version] = {
            "_name": name, "id": f"{WS_ID}/models/{name}/versions/{version}", "name": version,
            "properties": properties, "systemData": SYSTEM,
        }
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
