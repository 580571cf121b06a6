"""No secret anywhere under infra/ (keys, SAS, connection strings), and storage accounts that refuse keys."""

from __future__ import annotations

import re
from typing import Any

from infra_trees import INFRA, ROOT, _literal, _module_call, _resources

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
