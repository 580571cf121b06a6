"""`autoretrain publish` end to end: the real azure-ai-ml SDK against the fake Azure ML REST API
(`unit/fake_azureml.py`), with the code snapshot really uploaded, to a container SAS on Azurite.

The fake answers `startPendingUpload` as the service does, with a SAS URI of a fresh container; here
the container is on Azurite, so the SDK's own upload runs and the test reads back what it wrote.
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from azure.ai.ml import MLClient
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas
from fake_azureml import ARM, RG, ROOT, SUB, SYSTEM, WS, WS_ID, Answer, FakeAzureML, FakeCredential, Sent, _error

from autoretrain import cli
from autoretrain.adapters.publish import component_version, pipeline_version, publish
from autoretrain.cli.publish import cmd_publish
from autoretrain.domain.errors import ConfigError, PublishError, WorkspaceError
from autoretrain.settings import Settings

pytestmark = pytest.mark.integration

PIPELINE = ROOT / "ml" / "pipeline.yml"
NAME = "autoretrain_pipeline"
STEPS = {"prep": "autoretrain_prep", "train": "autoretrain_train", "evaluate": "autoretrain_evaluate"}
SNAPSHOT = "code_with_additional_includes"  # the folder azure-ai-ml uploads a code with includes as
# The API versions azure-ai-ml 1.35 calls these operations with.
COMPONENTS_API, CODES_API, ENVIRONMENTS_API, WORKSPACE_API = (
    "2024-01-01-preview", "2023-04-01", "2023-04-01-preview", "2024-10-01-preview",
)


@dataclass(eq=False)
class PublishService(FakeAzureML):
    """FakeAzureML with the routes publishing takes: component versions by name and version; code
    versions, listed by content hash regardless of name (as the REST API documents `hash`); the
    pending upload, answered with a SAS of a fresh container on `storage`; environment versions."""

    storage: BlobServiceClient | None = None
    components: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    codes: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    environments: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    uploads: list[str] = field(default_factory=list)
    """the containers handed out by startPendingUpload, in order"""

    def _routes(self) -> list[tuple[str, str, Any]]:
        ws = re.escape(ARM + WS_ID)
        return [
            ("GET", ws + r"/components/([^/]+)/versions/([^/]+)", self._get_component),
            ("PUT", ws + r"/components/([^/]+)/versions/([^/]+)", self._put_component),
            ("GET", ws + r"/codes/([^/]+)/versions", self._list_codes),
            ("GET", ws + r"/codes/([^/]+)/versions/([^/]+)", self._get_code),
            ("PUT", ws + r"/codes/([^/]+)/versions/([^/]+)", self._put_code),
            ("POST", ws + r"/codes/([^/]+)/versions/([^/]+)/startPendingUpload", self._start_pending_upload),
            ("PUT", ws + r"/environments/([^/]+)/versions/([^/]+)", self._put_environment),
            *super()._routes(),
        ]

    def _version(self, kind: str, name: str, version: str, properties: dict[str, Any]) -> dict[str, Any]:
        return {"id": f"{WS_ID}/{kind}/{name}/versions/{version}", "name": version, "properties": properties,
                "systemData": SYSTEM}

    def _get_component(self, _sent: Sent, name: str, version: str) -> Answer:
        if (name, version) not in self.components:
            return 404, _error("UserError", f"Could not find component {name} with version {version}.")
        return 200, self.components[(name, version)]

    def _put_component(self, sent: Sent, name: str, version: str) -> Answer:
        self.components[(name, version)] = self._version("components", name, version, sent.body["properties"])
        return 201, self.components[(name, version)]

    def _list_codes(self, sent: Sent, _name: str) -> Answer:
        wanted = parse_qs(urlsplit(sent.url).query).get("hash", [None])[0]
        found = [c for c in self.codes.values() if c["properties"]["properties"].get("hash_sha256") == wanted]
        return 200, {"value": found}

    def _get_code(self, _sent: Sent, name: str, version: str) -> Answer:
        if (name, version) not in self.codes:
            return 404, _error("UserError", f"Could not find code {name} with version {version}.")
        return 200, self.codes[(name, version)]

    def _put_code(self, sent: Sent, name: str, version: str) -> Answer:
        self.codes[(name, version)] = self._version("codes", name, version, sent.body["properties"])
        return 201, self.codes[(name, version)]

    def _put_environment(self, sent: Sent, name: str, version: str) -> Answer:
        self.environments[(name, version)] = self._version("environments", name, version, sent.body["properties"])
        return 201, self.environments[(name, version)]

    def _start_pending_upload(self, _sent: Sent, _name: str, _version: str) -> Answer:
        assert self.storage is not None
        container = f"snapshot-{uuid.uuid4().hex}"
        self.storage.create_container(container)
        self.uploads.append(container)
        sas = generate_container_sas(
            self.storage.account_name, container, account_key=self.storage.credential.account_key,
            permission=ContainerSasPermissions(read=True, add=True, create=True, write=True, list=True),
            expiry=datetime.now(UTC) + timedelta(hours=1),
        )
        url = f"{self.storage.url.rstrip('/')}/{container}"
        return 200, {
            "pendingUploadId": uuid.uuid4().hex, "pendingUploadType": "TemporaryBlobReference",
            "blobReferenceForConsumption": {
                "blobUri": url, "storageAccountArmId": f"/subscriptions/{SUB}/storage",
                "credential": {"credentialType": "SAS", "sasUri": f"{url}?{sas}"},
            },
        }


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def storage(azurite: str) -> BlobServiceClient:
    return BlobServiceClient.from_connection_string(azurite)


@pytest.fixture
def service(storage: BlobServiceClient) -> Iterator[PublishService]:
    fake = PublishService(storage=storage)
    yield fake
    for container in fake.uploads:
        storage.delete_container(container)


def ml_client(service: PublishService, **options: Any) -> MLClient:
    """An MLClient whose every request goes to `service`; `options` as the CLI gives MLClient."""
    session = requests.Session()
    session.mount("https://", service)
    return MLClient(FakeCredential(), SUB, RG, WS, transport=RequestsTransport(session=session, session_owner=False),
                    **options)


@pytest.fixture
def client(service: PublishService) -> MLClient:
    return ml_client(service)


@dataclass
class FakeClients:
    """The CLI's client factory, given to `cmd_publish`: clients that talk to the fake service; it
    records the settings and options each was built with."""

    service: PublishService
    built: list[tuple[Settings, dict[str, Any]]] = field(default_factory=list)

    def __call__(self, settings: Settings, **options: Any) -> MLClient:
        self.built.append((settings, options))
        return ml_client(self.service, **options)

    def publish(self, *argv: str) -> int:
        """`autoretrain publish [argv]` with this factory, on the settings in the environment."""
        args = argparse.Namespace(dry_run="--dry-run" in argv)
        return cmd_publish(Settings.from_env(), args, ml_client=self)


@pytest.fixture
def quiet_azure_logs() -> Iterator[None]:
    """The CLI turns azure's loggers down for its run; put them back for the other tests."""
    levels = {name: logging.getLogger(name).level for name in ("azure", "azure.ai.ml")}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture
def ml_copy(tmp_path: Path) -> Path:
    """A copy of ml/ and of the include its components name (../../autoretrain/datacontract.py)."""
    shutil.copytree(ROOT / "ml", tmp_path / "ml", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "autoretrain").mkdir()
    shutil.copy2(ROOT / "autoretrain" / "datacontract.py", tmp_path / "autoretrain" / "datacontract.py")
    return tmp_path / "ml"


def run(client: MLClient, pipeline: Path = PIPELINE, **kwargs: Any) -> tuple[list[str], list[str]]:
    out = StringIO()
    refs = publish(client, pipeline=pipeline, name=NAME, out=out, **kwargs)
    return refs, out.getvalue().splitlines()


def expected_refs(ml: Path) -> list[str]:
    steps = {node: f"{name}:{component_version(ml / 'components' / f'{node}.yml')}" for node, name in STEPS.items()}
    return [*steps.values(), f"{NAME}:{pipeline_version(ml / 'pipeline.yml', steps)}"]


def calls(service: PublishService) -> list[tuple[str, str, str]]:
    """(method, path under the workspace with code names as *, api-version) of every request."""
    result = []
    for sent in service.sent:
        path = sent.path.removeprefix(ARM + WS_ID)
        path = re.sub(r"/codes/[^/]+/", "/codes/*/", path)
        result.append((sent.method, path, parse_qs(urlsplit(sent.url).query)["api-version"][0]))
    return result


def code_files() -> dict[str, bytes]:
    """The step's code snapshot as it should be uploaded: ml/src (its .amlignore leaves out
    __pycache__ and *.pyc) and the additional include, at the snapshot's root."""
    src = ROOT / "ml" / "src"
    files = {
        f"{SNAPSHOT}/{p.relative_to(src).as_posix()}": p.read_bytes()
        for p in src.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }
    files[f"{SNAPSHOT}/datacontract.py"] = (ROOT / "autoretrain" / "datacontract.py").read_bytes()
    return files


# -- tests ---------------------------------------------------------------------------------------


class TestPublish:
    def test_registers_the_three_steps_then_the_pipeline_in_these_calls(
        self, client: MLClient, service: PublishService
    ) -> None:
        """Each step: looked up by name and version, its code snapshot listed by hash, uploaded once
        (the steps share it), its environment and itself PUT; then the pipeline, looked up and PUT."""
        refs, lines = run(client)

        assert refs == expected_refs(ROOT / "ml")
        assert lines == [f"registered {ref}" for ref in refs]
        prep, train, evaluate, pipeline = (f"/components/{ref.replace(':', '/versions/')}" for ref in refs)
        env = "/environments/CliV2AnonymousEnvironment/versions/"
        [env_version] = {version for _, version in service.environments}
        first_step = [
            ("GET", prep, COMPONENTS_API),
            ("GET", "/codes/*/versions", CODES_API),
            ("POST", "/codes/*/versions/1/startPendingUpload", CODES_API),
            ("PUT", "/codes/*/versions/1", CODES_API),
            ("PUT", env + env_version, ENVIRONMENTS_API),
            ("PUT", prep, COMPONENTS_API),
        ]
        # The next steps' snapshot has the same hash: found by it, not uploaded again.
        next_steps = [
            call
            for step in (train, evaluate)
            for call in [
                ("GET", step, COMPONENTS_API),
                ("GET", "/codes/*/versions", CODES_API),
                ("GET", "/codes/*/versions/1", CODES_API),
                ("PUT", env + env_version, ENVIRONMENTS_API),
                ("PUT", step, COMPONENTS_API),
            ]
        ]
        # The workspace GET is the SDK keying its cache of resolved components; the steps are ARM ids.
        the_pipeline = [
            ("GET", pipeline, COMPONENTS_API), ("GET", "", WORKSPACE_API), ("PUT", pipeline, COMPONENTS_API),
        ]
        assert calls(service) == first_step + next_steps + the_pipeline
        listing = service.requests_to("GET", r"/codes/[^/]+/versions$")[0]
        assert parse_qs(urlsplit(listing.url).query)["hashVersion"] == ["202208"]

    def test_the_snapshot_uploaded_is_the_steps_code_and_its_include(
        self, client: MLClient, service: PublishService, storage: BlobServiceClient
    ) -> None:
        """One container from startPendingUpload holds exactly ml/src and datacontract.py; the code
        version points at it."""
        run(client)

        [container] = service.uploads
        blobs = storage.get_container_client(container)
        uploaded = {b.name: blobs.download_blob(b.name).readall() for b in blobs.list_blobs()}
        assert uploaded == code_files()
        [(code_name, code_version)] = service.codes
        [put_code] = service.requests_to("PUT", r"/codes/[^/]+/versions/[^/]+$")
        assert put_code.body["properties"]["codeUri"] == f"{storage.url.rstrip('/')}/{container}/{SNAPSHOT}"
        assert put_code.body["properties"]["isAnonymous"] is True
        assert put_code.path.endswith(f"/codes/{code_name}/versions/{code_version}")

    def test_the_step_components_run_the_uploaded_code_at_their_digest_versions(
        self, client: MLClient, service: PublishService
    ) -> None:
        refs, _ = run(client)

        [code_id] = [code["id"] for code in service.codes.values()]
        for (node, name), ref in zip(STEPS.items(), refs, strict=False):
            version = ref.split(":")[1]
            assert version == component_version(ROOT / "ml" / "components" / f"{node}.yml")
            [put] = service.requests_to("PUT", f"/components/{name}/versions/{version}$")
            spec = put.body["properties"]["componentSpec"]
            assert (spec["name"], spec["version"], spec["type"]) == (name, version, "command")
            assert put.body["properties"]["isAnonymous"] is False
            assert spec["code"] == f"azureml:{code_id}"
            assert spec["environment"].startswith(f"azureml:{WS_ID}/environments/CliV2AnonymousEnvironment/versions/")
            assert spec["command"].startswith(f"python {node}.py")

    def test_the_pipeline_component_runs_the_registered_steps_with_every_input_required(
        self, client: MLClient, service: PublishService
    ) -> None:
        """A named (not anonymous) pipeline component whose nodes are the registered step versions,
        by ARM id, not inline copies; every input required (the app binds each, champion included),
        typed as the job YAML types them."""
        refs, _ = run(client)

        name, version = refs[-1].split(":")
        [put] = service.requests_to("PUT", f"/components/{name}/versions/{version}$")
        properties = put.body["properties"]
        spec = properties["componentSpec"]
        assert properties["isAnonymous"] is False
        assert (spec["name"], spec["version"], spec["type"]) == (NAME, version, "pipeline")
        assert spec["description"].startswith("Retrain on a training set")
        nodes = {node: job["componentId"] for node, job in spec["jobs"].items()}
        assert nodes == {
            node: f"{WS_ID}/components/{ref.replace(':', '/versions/')}" for node, ref in zip(STEPS, refs, strict=False)
        }
        assert all("component" not in job for job in spec["jobs"].values())
        assert spec["inputs"]["champion"] == {"type": "mlflow_model"}
        assert {n: i["type"] for n, i in spec["inputs"].items()} == {
            "data": "mltable", "contract": "uri_file", "train_last": "integer", "new_files": "integer",
            "champion": "mlflow_model", "mode": "string",
        }
        assert not any(i.get("optional") for i in spec["inputs"].values())
        assert set(spec["outputs"]) == {"model", "metrics", "report"}
        assert spec["jobs"]["evaluate"]["inputs"]["champion"]["value"] == "${{parent.inputs.champion}}"

    def test_publishing_again_registers_nothing(self, client: MLClient, service: PublishService) -> None:
        """Same content, same versions: four lookups, no PUT, no upload."""
        first, _ = run(client)
        service.sent.clear()

        again, lines = run(client)

        assert again == first
        assert lines == [f"already registered {ref}" for ref in first]
        assert [(m, p) for m, p, _ in calls(service)] == [
            ("GET", f"/components/{ref.replace(':', '/versions/')}") for ref in first
        ]
        assert len(service.uploads) == 1

    def test_a_changed_script_gives_new_versions_to_the_steps_that_ship_it(
        self, client: MLClient, service: PublishService, ml_copy: Path, storage: BlobServiceClient
    ) -> None:
        """ml/src is every step's code, so a change there is a new version of all three (and of the
        pipeline), with a new snapshot; a change to one component's YAML is a new version of it alone."""
        first, _ = run(client, ml_copy / "pipeline.yml")
        assert first == expected_refs(ROOT / "ml")  # the copy is the same content

        train_py = ml_copy / "src" / "train.py"
        train_py.write_text(train_py.read_text() + "# changed\n")
        second, lines = run(client, ml_copy / "pipeline.yml")

        assert all(a != b for a, b in zip(first, second, strict=True))
        assert lines == [f"registered {ref}" for ref in second]
        assert len(service.uploads) == 2
        blobs = storage.get_container_client(service.uploads[-1])
        assert blobs.download_blob(f"{SNAPSHOT}/train.py").readall().endswith(b"# changed\n")

        train_yml = ml_copy / "components" / "train.yml"
        train_yml.write_text(train_yml.read_text().replace("Fit a scikit-learn", "Fit a sklearn"))
        third, lines = run(client, ml_copy / "pipeline.yml")

        prep, train, evaluate, pipeline = third
        assert (prep, evaluate) == (second[0], second[2])
        assert train != second[1] and pipeline != second[3]
        assert lines == [f"already registered {prep}", f"registered {train}", f"already registered {evaluate}",
                         f"registered {pipeline}"]
        assert len(service.uploads) == 2  # the same snapshot as before: found by its hash

    def test_dry_run_looks_up_and_registers_nothing(self, client: MLClient, service: PublishService) -> None:
        refs, lines = run(client, dry_run=True)

        assert refs == expected_refs(ROOT / "ml")
        assert lines == [f"would register {ref}" for ref in refs]
        assert {m for m, _, _ in calls(service)} == {"GET"} and len(service.sent) == 4


class TestVersions:
    def test_a_component_version_follows_every_file_it_is_made_of(self, ml_copy: Path) -> None:
        """YAML, code folder, include and conda file each change it; __pycache__ does not."""
        prep = ml_copy / "components" / "prep.yml"
        versions = [component_version(prep)]
        assert component_version(prep) == versions[0]
        (ml_copy / "src" / "__pycache__").mkdir()
        (ml_copy / "src" / "__pycache__" / "prep.cpython-311.pyc").write_bytes(b"\0bytecode")
        assert component_version(prep) == versions[0]

        for path in (prep, ml_copy / "src" / "prep.py", ml_copy.parent / "autoretrain" / "datacontract.py",
                     ml_copy / "environment" / "conda.yaml"):
            path.write_text(path.read_text() + "\n# changed\n")
            versions.append(component_version(prep))
        (ml_copy / "src" / "new.py").write_text("")
        versions.append(component_version(prep))

        assert len(set(versions)) == len(versions)
        assert all(re.fullmatch(r"[0-9a-f]{16}", v) for v in versions)

    def test_the_pipeline_version_follows_its_yaml_and_its_steps(self, ml_copy: Path) -> None:
        pipeline = ml_copy / "pipeline.yml"
        steps = {"prep": "autoretrain_prep:1", "train": "autoretrain_train:1", "evaluate": "autoretrain_evaluate:1"}
        first = pipeline_version(pipeline, steps)

        assert pipeline_version(pipeline, dict(reversed(steps.items()))) == first
        assert pipeline_version(pipeline, {**steps, "train": "autoretrain_train:2"}) != first
        pipeline.write_text(pipeline.read_text().replace("display_name: autoretrain", "display_name: retrain"))
        assert pipeline_version(pipeline, steps) != first

    def test_a_step_without_a_component_file_is_one_line(self, ml_copy: Path, client: MLClient,
                                                         service: PublishService) -> None:
        (ml_copy / "components" / "train.yml").unlink()

        with pytest.raises(PublishError) as caught:
            run(client, ml_copy / "pipeline.yml")

        assert "train.yml" in str(caught.value) and "\n" not in str(caught.value)
        assert service.requests_to("PUT", "/components/") == []


class TestCli:
    @pytest.fixture
    def workspace_env(self, monkeypatch: pytest.MonkeyPatch, clean_env: None) -> None:
        """What the deploy hook exports; AUTORETRAIN_WORKSPACE is left at its default (local)."""
        monkeypatch.setenv("AUTORETRAIN_AZUREML_SUBSCRIPTION_ID", SUB)
        monkeypatch.setenv("AUTORETRAIN_AZUREML_RESOURCE_GROUP", RG)
        monkeypatch.setenv("AUTORETRAIN_AZUREML_WORKSPACE", WS)
        monkeypatch.setenv("AUTORETRAIN_PIPELINE_COMPONENT", "team_pipeline")

    @pytest.fixture
    def fake(self, service: PublishService) -> FakeClients:
        return FakeClients(service)

    def test_publish_registers_the_settings_pipeline_component(
        self, workspace_env: None, fake: FakeClients, service: PublishService,
        capsys: pytest.CaptureFixture[str], quiet_azure_logs: None,
    ) -> None:
        assert fake.publish() == 0

        out = capsys.readouterr().out.splitlines()
        assert [line.split(":")[0] for line in out] == [
            "registered autoretrain_prep", "registered autoretrain_train", "registered autoretrain_evaluate",
            "registered team_pipeline",
        ]
        [(settings, options)] = fake.built
        assert (settings.azureml_subscription_id, settings.azureml_resource_group, settings.azureml_workspace) == (
            SUB, RG, WS,
        )
        assert options == {"show_progress": False}
        assert [k for k in service.components if k[0] == "team_pipeline"]

    def test_a_403_on_the_component_put_is_one_line(
        self, workspace_env: None, fake: FakeClients, service: PublishService,
        capsys: pytest.CaptureFixture[str], quiet_azure_logs: None,
    ) -> None:
        """One line, which `autoretrain` prints as `autoretrain: <line>` and exits 2 (as the test below
        shows for a missing setting); nothing else is written."""
        denied = (
            "The client 'me@example.com' with object id 'u-1' does not have authorization to perform action "
            "'Microsoft.MachineLearningServices/workspaces/components/versions/write'."
        )
        service.queued.append(("PUT", r"/components/autoretrain_prep/versions/",
                               (403, _error("AuthorizationFailed", denied))))

        with pytest.raises(WorkspaceError) as caught:
            fake.publish()

        captured = capsys.readouterr()
        assert captured.out == ""
        # azure-ai-ml prints a colour reset and blank lines to stderr after any upload, progress or not.
        assert [line for line in captured.err.splitlines() if line.strip() not in ("", "\x1b[39m")] == []
        [line] = str(caught.value).splitlines()
        version = component_version(ROOT / "ml" / "components" / "prep.yml")
        assert line.startswith(f"register component autoretrain_prep:{version} failed: HTTP 403: ")
        assert "does not have authorization" in line and "AzureML Data Scientist" in line
        assert service.sent[-1].method == "PUT" and "/components/autoretrain_prep/" in service.sent[-1].path

    def test_without_the_workspace_it_refuses_in_one_line(
        self, clean_env: None, fake: FakeClients, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setenv("AUTORETRAIN_AZUREML_WORKSPACE", "mlw-autoretrain")

        assert cli.main(["publish"]) == 2

        [line] = capsys.readouterr().err.splitlines()
        assert line.startswith("autoretrain: publish registers the pipeline in an Azure ML workspace: set ")
        assert "AUTORETRAIN_AZUREML_SUBSCRIPTION_ID, AUTORETRAIN_AZUREML_RESOURCE_GROUP " in line
        assert "AUTORETRAIN_AZUREML_WORKSPACE" not in line
        # The same refusal, before any client is built.
        with pytest.raises(ConfigError) as refused:
            fake.publish()
        assert f"autoretrain: {refused.value}" == line
        assert fake.built == []
