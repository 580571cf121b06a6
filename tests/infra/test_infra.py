"""Offline checks of infra/: Bicep syntax, checkov, app-setting names, least privilege, no secrets.

Bicep cannot be compiled here, so the Bicep files are parsed with pycep-parser and scanned with
checkov, both installed in their own environment (.venv-iac, made by `make setup` from
requirements-iac.txt) and called as subprocesses.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from autoretrain.events import COMMITTED_APIS
from autoretrain.settings import SETTING_NAMES, Settings, WorkspaceKind

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
IAC_BIN = ROOT / ".venv-iac" / ("Scripts" if sys.platform == "win32" else "bin")
IAC_PYTHON = IAC_BIN / ("python.exe" if sys.platform == "win32" else "python")
CHECKOV = IAC_BIN / ("checkov.cmd" if sys.platform == "win32" else "checkov")
BICEP_JSON = Path(__file__).resolve().parent / "_bicep_json.py"
LOCAL_SETTINGS_EXAMPLE = ROOT / "local.settings.json.example"

# Names only a laptop sets: a connection string to Azurite, the local workspace folder, the local host.
LOCAL_ONLY = {"AUTORETRAIN_STORAGE", "AUTORETRAIN_HOME", "AUTORETRAIN_HOST_URL"}
# Names the Functions platform and the Azure SDKs read; allowed in Bicep beside SETTING_NAMES.
PLATFORM_NAME = re.compile(
    r"^(AzureWebJobsStorage__(accountName|credential|clientId)|APPLICATIONINSIGHTS_[A-Z_]+)$"
)

ROLE_NAMES = {
    "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1": "Storage Blob Data Reader",
    "ba92f5b4-2d11-453d-a403-e96b0029c9fe": "Storage Blob Data Contributor",
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
    "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": "Storage Table Data Contributor",
    "f6c7c914-8db3-469d-8ca1-694a8f32e121": "AzureML Data Scientist",
    "3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher",
    "7f951dda-4ed3-4680-a7ca-43fe172d538d": "AcrPull",
}
GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

# Each pattern is a way a secret gets into a template. Bicep comments are scanned too, except for the
# words "connection string", which comments use to explain why none is needed.
FORBIDDEN = {
    "listKeys(": re.compile(r"listKeys\s*\(", re.IGNORECASE),
    "AccountKey=": re.compile(r"AccountKey\s*=", re.IGNORECASE),
    "SharedAccessSignature": re.compile(r"SharedAccessSignature", re.IGNORECASE),
    "allowSharedKeyAccess: true": re.compile(r"allowSharedKeyAccess\s*:\s*true", re.IGNORECASE),
    "sas token": re.compile(r"\bsas_?token\b|\bsasToken\b", re.IGNORECASE),
}
CONNECTION_STRING = re.compile(r"connection[\s_-]?string", re.IGNORECASE)
# The one connection string allowed: Application Insights' names the resource and its ingestion
# endpoint and carries no secret (local auth is disabled; ingestion needs an Entra token).
ALLOWED_CONNECTION_STRING_LINE = (
    "APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsights.properties.ConnectionString"
)


def _require_iac_env() -> None:
    if not IAC_PYTHON.exists() or not CHECKOV.exists():
        pytest.fail(
            f"{ROOT / '.venv-iac'} is missing or incomplete; run `make setup` (it installs "
            "requirements-iac.txt: checkov and pycep-parser)."
        )


def _parse(paths: list[Path]) -> dict[str, dict[str, Any]]:
    _require_iac_env()
    proc = subprocess.run(
        [str(IAC_PYTHON), str(BICEP_JSON), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"pycep-parser failed to run:\n{proc.stderr}"
    return json.loads(proc.stdout)


def _bicep_files() -> list[Path]:
    return sorted(INFRA.rglob("*.bicep"))


@pytest.fixture(scope="module")
def trees() -> dict[str, dict[str, Any]]:
    """The parsed tree of every Bicep file under infra/, by path relative to infra/ ("modules/x.bicep")."""
    results = _parse(_bicep_files())
    broken = {path: r["error"] for path, r in results.items() if not r["ok"]}
    assert not broken, f"Bicep files that do not parse: {json.dumps(broken, indent=2)}"
    return {Path(path).relative_to(INFRA).as_posix(): r["tree"] for path, r in results.items()}


@pytest.fixture(scope="module")
def checkov_report() -> dict[str, Any]:
    """checkov's JSON report over infra/ (run once: it takes about half a minute)."""
    _require_iac_env()
    proc = subprocess.run(
        [
            str(CHECKOV),
            "--framework",
            "bicep",
            "--skip-download",
            "--compact",
            "-d",
            str(INFRA),
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(
            f"checkov printed no JSON (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )
    reports = report if isinstance(report, list) else [report]
    bicep = [r for r in reports if r.get("check_type") == "bicep"]
    assert len(bicep) == 1, (
        f"expected one bicep report from checkov, got {[r.get('check_type') for r in reports]}"
    )
    return bicep[0]


# --- helpers that read the parsed Bicep -------------------------------------------------------------


def _resources(tree: Mapping[str, Any], type_: str) -> dict[str, Mapping[str, Any]]:
    return {name: r for name, r in tree["resources"].items() if r["type"] == type_ and not r.get("existing")}


def _body(resource: Mapping[str, Any]) -> Mapping[str, Any]:
    """A resource's body (name, scope, properties), also for `[for ...]` loops and `if` conditions."""
    config = resource["config"]
    while "config" in config and ("loop_type" in config or "condition" in config):
        config = config["config"]
    return config


def _module_call(tree: Mapping[str, Any], path: str) -> Mapping[str, Any]:
    calls = [m for m in tree["modules"].values() if m["detail"]["path"] == path]
    assert len(calls) == 1, f"main.bicep should call {path} once, found {len(calls)}"
    return calls[0]


def _literal(tree: Mapping[str, Any], value: Any, *, depth: int = 0) -> str | None:
    """The string a Bicep value resolves to statically, or None for an expression known only at deploy.

    pycep-parser writes both a string literal and a bare identifier as a Python str; an identifier is
    told apart by being the name of a parameter or variable of the same file.
    """
    if not isinstance(value, str) or depth > 5:
        return None
    if value in tree.get("parameters", {}):
        return _literal(tree, tree["parameters"][value].get("default"), depth=depth + 1)
    if value in tree.get("variables", {}):
        return _literal(tree, tree["variables"][value]["value"], depth=depth + 1)
    if "${" in value:
        return None
    return value


def _app_settings(trees: Mapping[str, Mapping[str, Any]]) -> dict[str, str | None]:
    """The function app's settings as deployed: name -> static value (None where it is an expression).

    Follows what the `appsettings` config resource really receives: `union(...)` of the module's
    parameter (filled by main.bicep's module call) and of the module's own variables.
    """
    main, module = trees["main.bicep"], trees["modules/function-app.bicep"]
    configs = [
        r
        for r in _resources(module, "Microsoft.Web/sites/config").values()
        if r["config"]["name"] == "appsettings"
    ]
    assert len(configs) == 1, "function-app.bicep should have exactly one appsettings config resource"
    properties = configs[0]["config"]["properties"]
    if isinstance(properties, dict) and "function" in properties:
        assert properties["function"]["type"] == "union", f"unexpected appsettings expression: {properties}"
        parts = list(properties["function"]["parameters"].values())
    else:
        parts = [properties]
    call = _module_call(main, "modules/function-app.bicep")
    settings: dict[str, str | None] = {}
    for part in parts:
        if isinstance(part, str) and part in module["parameters"]:
            source, values = main, call["config"]["params"][part]
        elif isinstance(part, str) and part in module["variables"]:
            source, values = module, module["variables"][part]["value"]
        else:
            source, values = module, part
        assert isinstance(values, dict), f"cannot read app settings statically from {part!r}: {values!r}"
        for name, value in values.items():
            settings[name] = _literal(source, value)
    return settings


def _strip_bicep_comment(line: str) -> str:
    # Good enough for these files: '//' inside a string literal would be a URL, which we never use.
    return line.split("//", 1)[0]


def _secret_findings(path: str, text: str) -> list[str]:
    findings = []
    for number, line in enumerate(text.splitlines(), 1):
        for label, pattern in FORBIDDEN.items():
            if pattern.search(line):
                findings.append(f"{path}:{number}: {label}: {line.strip()}")
        code = _strip_bicep_comment(line) if path.endswith(".bicep") else line
        if CONNECTION_STRING.search(code) and code.strip() != ALLOWED_CONNECTION_STRING_LINE:
            findings.append(f"{path}:{number}: connection string: {line.strip()}")
    return findings


def _walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)


# --- syntax -----------------------------------------------------------------------------------------


class TestBicepSyntax:
    def test_every_bicep_file_parses(self, trees: dict[str, Any]) -> None:
        """pycep-parser reads every .bicep file under infra/, the entry points and each module."""
        assert {"main.bicep", "event-subscriptions.bicep"} <= trees.keys()
        assert sum(1 for path in trees if path.startswith("modules/")) >= 6

    def test_the_parser_rejects_broken_bicep(self, tmp_path: Path) -> None:
        """A file with a syntax error fails to parse, so a passing parse means something."""
        good = tmp_path / "good.bicep"
        good.write_text("param name string\noutput upper string = toUpper(name)\n")
        broken = tmp_path / "broken.bicep"
        broken.write_text(
            "resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {\n  name: 'x'\n"
        )
        results = _parse([good, broken])
        assert results[str(good)]["ok"] is True
        assert results[str(broken)]["ok"] is False
        assert "Unexpected" in results[str(broken)]["error"]

    def test_main_calls_only_modules_that_exist(self, trees: dict[str, Any]) -> None:
        """Every module path in main.bicep names a file that was parsed."""
        paths = {m["detail"]["path"] for m in trees["main.bicep"]["modules"].values()}
        assert paths and paths <= trees.keys(), f"missing modules: {paths - trees.keys()}"


# --- checkov ----------------------------------------------------------------------------------------


class TestCheckov:
    def test_no_failed_checks(self, checkov_report: dict[str, Any]) -> None:
        """checkov finds no failed check in infra/, and it did check something."""
        summary = checkov_report["summary"]
        failed = [
            f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
            for c in checkov_report["results"]["failed_checks"]
        ]
        assert summary["failed"] == 0, "checkov failed checks:\n" + "\n".join(failed)
        assert summary["parsing_errors"] == 0
        assert summary["passed"] > 0

    def test_every_skip_gives_a_reason(self, checkov_report: dict[str, Any]) -> None:
        """Each suppressed check carries its justification in the skip comment."""
        skipped = checkov_report["results"]["skipped_checks"]
        vague = [
            f"{c['check_id']} {c['resource']}"
            for c in skipped
            if len(c.get("check_result", {}).get("suppress_comment", "").strip()) < 30
        ]
        assert not vague, f"skips without a real reason: {vague}"

    def test_every_skip_comment_is_applied(self, checkov_report: dict[str, Any]) -> None:
        """No skip comment sits outside a resource, where checkov would silently ignore it."""
        comments = sum(len(re.findall(r"checkov:skip=", path.read_text())) for path in _bicep_files())
        assert comments == len(checkov_report["results"]["skipped_checks"])


# --- app settings -----------------------------------------------------------------------------------


class TestAppSettings:
    def test_bicep_sets_only_known_names(self, trees: dict[str, Any]) -> None:
        """Every setting in Bicep is one of SETTING_NAMES or a platform name (host storage, App Insights)."""
        unknown = [n for n in _app_settings(trees) if n not in SETTING_NAMES and not PLATFORM_NAME.match(n)]
        assert not unknown, f"app settings unknown to autoretrain.settings.SETTING_NAMES: {unknown}"

    def test_bicep_sets_every_name_but_the_local_ones(self, trees: dict[str, Any]) -> None:
        """Each AUTORETRAIN_* name is set in Azure, except the three that only make sense on a laptop."""
        in_bicep = set(_app_settings(trees))
        names = {n for n in SETTING_NAMES if n.startswith("AUTORETRAIN_")}
        assert names - in_bicep == LOCAL_ONLY
        assert "AZURE_CLIENT_ID" in in_bicep

    def test_bicep_sets_no_secret_and_no_local_setting(self, trees: dict[str, Any]) -> None:
        """No connection string or key in the settings: storage is reached by URI with the identity."""
        settings = _app_settings(trees)
        assert not LOCAL_ONLY & settings.keys()
        assert "AzureWebJobsStorage" not in settings
        assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
        for name, value in settings.items():
            assert value is None or not re.search(r"AccountKey|SharedAccessSignature|sig=", value), name

    def test_outputs_use_known_names(self, trees: dict[str, Any]) -> None:
        """The AUTORETRAIN_* outputs the hook reads are setting names too."""
        outputs = [n for n in trees["main.bicep"]["outputs"] if n.startswith("AUTORETRAIN_")]
        assert outputs and not [n for n in outputs if n not in SETTING_NAMES]

    def test_settings_accept_the_bicep_values(
        self, trees: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Settings.from_env reads the Azure settings as Bicep writes them (placeholders for expressions)."""
        settings = _app_settings(trees)
        contract = settings["AUTORETRAIN_CONTRACT"]
        assert contract and not Path(contract).is_absolute(), "the contract path is relative to the app root"
        # The app root on Azure: the contract file at the path Bicep names.
        (tmp_path / contract).parent.mkdir(parents=True)
        (tmp_path / contract).write_text("placeholder\n")
        monkeypatch.chdir(tmp_path)
        env = {
            name: value if value is not None else f"deploy-time-{i}"
            for i, (name, value) in enumerate(settings.items())
        }
        parsed = Settings.from_env(env)
        assert parsed.workspace is WorkspaceKind.AZUREML
        assert parsed.storage_connection is None
        assert parsed.blob_service_uri and parsed.table_service_uri
        assert (parsed.incoming_container, parsed.quarantine_container, parsed.datasets_container) == (
            "incoming",
            "quarantine",
            "datasets",
        )
        assert parsed.ledger_table == "autoretrainledger"
        assert parsed.pipeline_component == "autoretrain_pipeline"

    def test_local_example_uses_known_names(self) -> None:
        """local.settings.json.example names only SETTING_NAMES (plus the host's own settings)."""
        document = json.loads(LOCAL_SETTINGS_EXAMPLE.read_text())
        assert document["IsEncrypted"] is False
        values = document["Values"]
        assert values["FUNCTIONS_WORKER_RUNTIME"] == "python"
        host_names = {"FUNCTIONS_WORKER_RUNTIME", "AzureWebJobsStorage", "AzureWebJobsFeatureFlags"}
        unknown = [n for n in values if n not in SETTING_NAMES and n not in host_names]
        assert not unknown, f"names unknown to autoretrain.settings.SETTING_NAMES: {unknown}"
        assert values.keys() >= LOCAL_ONLY

    def test_settings_accept_the_local_example(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Settings.from_env reads the example file as it is (the local workspace, Azurite)."""
        values = json.loads(LOCAL_SETTINGS_EXAMPLE.read_text())["Values"]
        (tmp_path / values["AUTORETRAIN_CONTRACT"]).parent.mkdir(parents=True)
        (tmp_path / values["AUTORETRAIN_CONTRACT"]).write_text("placeholder\n")
        monkeypatch.chdir(tmp_path)
        parsed = Settings.from_env(values)
        assert parsed.workspace is WorkspaceKind.LOCAL
        assert parsed.storage_connection == "UseDevelopmentStorage=true"


# --- security ---------------------------------------------------------------------------------------


class TestNoSecrets:
    def test_the_scan_finds_what_it_looks_for(self) -> None:
        """The scanner flags each kind of secret, so a clean scan means something."""
        samples = [
            "x: listKeys(account.id, '2023-01-01').keys[0].value",
            "'AccountKey=abc'",
            "SharedAccessSignature=sv",
            "allowSharedKeyAccess: true",
            "AzureWebJobsStorage: 'DefaultEndpointsProtocol=https;connectionString'",
        ]
        for sample in samples:
            assert _secret_findings("sample.bicep", sample), sample
        assert not _secret_findings("sample.bicep", "  " + ALLOWED_CONNECTION_STRING_LINE)

    def test_nothing_under_infra_carries_a_secret(self) -> None:
        """No key listing, account key, SAS or connection string anywhere in infra/ (README aside)."""
        files = [
            p for p in INFRA.rglob("*") if p.is_file() and p.suffix in {".bicep", ".json", ".sh", ".ps1"}
        ]
        assert len(files) > 8
        findings = [f for p in files for f in _secret_findings(p.relative_to(ROOT).as_posix(), p.read_text())]
        assert not findings, "\n".join(findings)

    def test_every_storage_account_refuses_keys_and_plain_http(self, trees: dict[str, Any]) -> None:
        """Shared keys off, TLS 1.2, HTTPS only, no anonymous blob access on every account we create."""
        accounts = {
            f"{path}:{name}": r
            for path, tree in trees.items()
            for name, r in _resources(tree, "Microsoft.Storage/storageAccounts").items()
        }
        assert len(accounts) == 3, sorted(accounts)
        for name, account in accounts.items():
            props = account["config"]["properties"]
            assert (
                props["allowSharedKeyAccess"],
                props["allowBlobPublicAccess"],
                props["minimumTlsVersion"],
                props["supportsHttpsTrafficOnly"],
            ) == (False, False, "TLS1_2", True), name

    def test_customer_account_has_soft_delete_and_the_containers(self, trees: dict[str, Any]) -> None:
        """Blob and container soft delete are on; main.bicep asks for the four containers and the ledger."""
        storage = trees["modules/storage.bicep"]
        (blob_service,) = _resources(storage, "Microsoft.Storage/storageAccounts/blobServices").values()
        props = blob_service["config"]["properties"]
        assert props["deleteRetentionPolicy"]["enabled"] is True
        assert props["containerDeleteRetentionPolicy"]["enabled"] is True
        main = trees["main.bicep"]
        params = _module_call(main, "modules/storage.bicep")["config"]["params"]
        assert sorted(_literal(main, n) for n in params["containerNames"]) == [
            "datasets",
            "deadletter",
            "incoming",
            "quarantine",
        ]
        assert _literal(main, params["tableName"]) == "autoretrainledger"


# --- least privilege --------------------------------------------------------------------------------


class TestRoleAssignments:
    def _assignments(self, trees: dict[str, Any]) -> dict[str, Mapping[str, Any]]:
        return {
            f"{path}:{name}": r
            for path, tree in trees.items()
            for name, r in _resources(tree, "Microsoft.Authorization/roleAssignments").items()
        }

    def test_every_assignment_is_scoped_to_a_resource(self, trees: dict[str, Any]) -> None:
        """No role is granted on a whole resource group or subscription: each names its resource scope."""
        assignments = self._assignments(trees)
        assert len(assignments) >= 15
        unscoped = [name for name, r in assignments.items() if not _body(r).get("scope")]
        assert not unscoped, f"role assignments without a resource scope: {unscoped}"

    def test_only_the_expected_roles_are_granted(self, trees: dict[str, Any]) -> None:
        """Every role id in infra/ is one of the data-plane roles we mean (no Owner, no Contributor)."""
        used = {
            g for tree in trees.values() for v in _walk(tree) if isinstance(v, str) for g in GUID.findall(v)
        }
        assert used == set(ROLE_NAMES), f"unexpected role ids: {used - set(ROLE_NAMES)}"

    def test_customer_storage_roles_sit_on_containers_and_the_table(self, trees: dict[str, Any]) -> None:
        """Each role on the customer account is scoped to one container or to the ledger table."""
        roles = trees["modules/storage-roles.bicep"]
        existing = {name: r["type"] for name, r in roles["resources"].items() if r.get("existing")}
        scopes = {
            _body(r)["scope"]: existing.get(_body(r)["scope"])
            for r in _resources(roles, "Microsoft.Authorization/roleAssignments").values()
        }
        assert scopes == {
            "incoming": "Microsoft.Storage/storageAccounts/blobServices/containers",
            "quarantine": "Microsoft.Storage/storageAccounts/blobServices/containers",
            "datasets": "Microsoft.Storage/storageAccounts/blobServices/containers",
            "deadLetter": "Microsoft.Storage/storageAccounts/blobServices/containers",
            "ledger": "Microsoft.Storage/storageAccounts/tableServices/tables",
        }


# --- Event Grid ---------------------------------------------------------------------------------------


class TestEventSubscriptions:
    def _subscription(self, trees: dict[str, Any], name: str) -> Mapping[str, Any]:
        tree = trees["event-subscriptions.bicep"]
        subs = [
            r
            for r in _resources(tree, "Microsoft.EventGrid/systemTopics/eventSubscriptions").values()
            if r["config"]["name"] == name
        ]
        assert len(subs) == 1, f"one subscription named {name!r} expected"
        return subs[0]["config"]["properties"]

    def test_ingest_gets_committed_blobs_in_incoming_only(self, trees: dict[str, Any]) -> None:
        props = self._subscription(trees, "ingest")
        assert props["destination"]["endpointType"] == "AzureFunction"
        assert props["destination"]["properties"]["resourceId"].endswith("/functions/ingest")
        assert props["filter"]["includedEventTypes"] == ["Microsoft.Storage.BlobCreated"]
        assert (
            props["filter"]["subjectBeginsWith"]
            == "/blobServices/default/containers/${incomingContainerName}/"
        )
        (api,) = props["filter"]["advancedFilters"]
        # The same committed writes as the function accepts (events.COMMITTED_APIS), SftpCommit too.
        assert (api["operatorType"], api["key"], sorted(api["values"])) == (
            "StringIn", "data.api", sorted(COMMITTED_APIS),
        )

    def test_completion_gets_our_runs_completed_and_failed_or_canceled(self, trees: dict[str, Any]) -> None:
        """RunCompleted of runs with our tag; RunStatusChanged only for Failed and Canceled (which raise
        no RunCompleted). No runType filter: the function identifies runs by the tag and job name."""
        tree = trees["event-subscriptions.bicep"]
        assert tree["variables"]["ourRuns"]["value"] == {
            "operatorType": "IsNotNull", "key": "data.runTags.${runTagKey}",
        }
        completed = self._subscription(trees, "completion")
        failed = self._subscription(trees, "completion-failed")
        for props in (completed, failed):
            assert props["destination"]["properties"]["resourceId"].endswith("/functions/completion")
            assert props["deadLetterWithResourceIdentity"] == "deadLetter"
            assert "runType" not in str(props["filter"])
        assert completed["filter"]["includedEventTypes"] == ["Microsoft.MachineLearningServices.RunCompleted"]
        assert completed["filter"]["advancedFilters"] == ["ourRuns"]
        assert failed["filter"]["includedEventTypes"] == ["Microsoft.MachineLearningServices.RunStatusChanged"]
        ours, status = failed["filter"]["advancedFilters"]
        assert ours == "ourRuns"
        assert (status["operatorType"], status["key"], status["values"]) == (
            "StringIn", "data.runStatus", ["Failed", "Canceled"],
        )
        assert _literal(tree, "runTagKey") == "autoretrain"

    def test_both_retry_and_dead_letter_with_the_topic_identity(self, trees: dict[str, Any]) -> None:
        tree = trees["event-subscriptions.bicep"]
        dead_letter = tree["variables"]["deadLetter"]["value"]
        assert dead_letter["identity"] == {"type": "SystemAssigned"}
        assert dead_letter["deadLetterDestination"]["endpointType"] == "StorageBlob"
        assert _literal(tree, "deadLetterContainerName") == "deadletter"
        for name in ("ingest", "completion", "completion-failed"):
            props = self._subscription(trees, name)
            assert props["deadLetterWithResourceIdentity"] == "deadLetter"
            assert props["retryPolicy"] == "retryPolicy"


# --- azd ----------------------------------------------------------------------------------------------


class TestAzd:
    def test_azure_yaml_deploys_the_root_as_a_python_function(self) -> None:
        document = yaml.safe_load((ROOT / "azure.yaml").read_text())
        assert document["name"] == "autoretrain"
        assert document["services"] == {"api": {"project": ".", "language": "python", "host": "function"}}

    def test_hooks_exist(self) -> None:
        """Every hook script azure.yaml names is there."""
        hooks = yaml.safe_load((ROOT / "azure.yaml").read_text())["hooks"]
        scripts = [platform["run"] for hook in hooks.values() for platform in hook.values()]
        assert len(scripts) >= 2
        missing = [s for s in scripts if not (ROOT / s).is_file()]
        assert not missing, missing

    def test_hook_deploys_the_subscriptions_and_publishes_the_pipeline(self) -> None:
        for script in ("postdeploy.sh", "postdeploy.ps1"):
            text = (INFRA / "hooks" / script).read_text()
            assert "infra/event-subscriptions.bicep" in text, script
            assert "infra/hooks/publish_pipeline.py" in text, script

    def test_pipeline_version_follows_the_content_of_ml(self, tmp_path: Path) -> None:
        """The published component's version changes with any file under ml/ and only then."""
        sys.path.insert(0, str(INFRA / "hooks"))
        try:
            from publish_pipeline import content_version
        finally:
            sys.path.remove(str(INFRA / "hooks"))
        (tmp_path / "src").mkdir()
        (tmp_path / "pipeline.yml").write_text("type: pipeline\n")
        (tmp_path / "src" / "train.py").write_text("print(1)\n")
        first = content_version(tmp_path)
        assert content_version(tmp_path) == first
        (tmp_path / "src" / "train.py").write_text("print(2)\n")
        assert content_version(tmp_path) != first

    def test_parameters_use_azd_substitutions(self) -> None:
        params = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
        assert params["environmentName"]["value"] == "${AZURE_ENV_NAME}"
        assert params["location"]["value"] == "${AZURE_LOCATION}"
        assert params["principalId"]["value"] == "${AZURE_PRINCIPAL_ID}"

    def test_funcignore_keeps_tooling_out_of_the_package(self) -> None:
        lines = {line.strip().rstrip("/") for line in (ROOT / ".funcignore").read_text().splitlines()}
        assert {
            ".venv",
            ".venv-iac",
            "node_modules",
            ".autoretrain",
            "tests",
            "bench",
            "infra",
            ".git",
        } <= lines
