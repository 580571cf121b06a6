"""The postdeploy hooks: read as text (az calls, the settings they need, the bounded publish retry),
and postdeploy.sh run for real under /bin/sh with az, sleep and the venv's python stood in for."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from infra_hooks import _az_calls, _checked_names, _enclosing_loop, _env_reads, _hook, _hook_lines, _int_assignments
from infra_trees import HOOKS, INFRA

from autoretrain.settings import SETTING_NAMES

# How each hook may name azd's subscription to az.
SUBSCRIPTION_REFS = {"$AZURE_SUBSCRIPTION_ID", "${AZURE_SUBSCRIPTION_ID}", "$env:AZURE_SUBSCRIPTION_ID"}

# The settings `autoretrain.cli publish` reads.
PUBLISH_SETTINGS = (
    "AUTORETRAIN_AZUREML_SUBSCRIPTION_ID",
    "AUTORETRAIN_AZUREML_RESOURCE_GROUP",
    "AUTORETRAIN_AZUREML_WORKSPACE",
    "AUTORETRAIN_PIPELINE_COMPONENT",
)


class TestHooks:
    def test_every_az_call_names_azds_subscription(self) -> None:
        """Each az command in both hooks passes --subscription with azd's AZURE_SUBSCRIPTION_ID (az's default
        subscription may be another one), and each hook refuses to run without that variable."""
        for script, kind in HOOKS.items():
            _, lines = _hook(script)
            calls = _az_calls(lines)
            wrong = [f"{script}:{c.line}: az {c.args}" for c in calls if c.subscription not in SUBSCRIPTION_REFS]
            assert not wrong, "az calls without --subscription $AZURE_SUBSCRIPTION_ID:\n" + "\n".join(wrong)
            assert len(calls) >= 4, f"{script}: expected the hook's az calls, found {calls}"
            assert "AZURE_SUBSCRIPTION_ID" in _checked_names(lines, kind), script

    def test_the_az_scan_finds_what_it_looks_for(self) -> None:
        """The scan sees az in every command position and not inside messages, so a clean scan means something."""
        sh = _hook_lines(
            'az group list --output none\n'
            'if ! x=$(az account show \\\n    --subscription "$AZURE_SUBSCRIPTION_ID"); then\n'
            '  echo "run az extension add --name ml" >&2\nfi\n'
            'until az functionapp show --name a; do sleep 1; done\n',
            "sh",
        )
        assert [(c.args.split()[0], c.subscription) for c in _az_calls(sh)] == [
            ("group", None), ("account", "$AZURE_SUBSCRIPTION_ID"), ("functionapp", None),
        ]
        ps1 = _hook_lines(
            "$x = az ml workspace show `\n    --subscription $env:AZURE_SUBSCRIPTION_ID\n"
            "throw \"add it with 'az extension add --name ml'\"\n"
            "& az @args\n",
            "ps1",
        )
        assert [(c.args.split()[0], c.subscription) for c in _az_calls(ps1)] == [
            ("ml", "$env:AZURE_SUBSCRIPTION_ID"), ("@args", None),
        ]

    def test_publishing_is_retried_for_a_bounded_time(self) -> None:
        """The publish step runs in a loop that retries an authorization failure (new role assignments take
        minutes to apply) with one progress line per attempt, and gives up after at most ten minutes."""
        for script, kind in HOOKS.items():
            text, lines = _hook(script)
            index = next((i for i, line in enumerate(lines) if "autoretrain.cli publish" in line.code), None)
            assert index is not None, f"{script}: no `autoretrain.cli publish` step"
            loop = _enclosing_loop(lines, index, kind)
            assert loop, f"{script}: the publish step is not in a loop"
            body = "\n".join(line.resolved() for line in loop)
            numbers = _int_assignments(lines, kind)

            def value(token: str, numbers: dict[str, int] = numbers) -> int:
                return int(token) if token.isdigit() else numbers[token]

            bound = re.search(r"-(?:ge|gt)\s+\$?\{?(\w+)\}?", body)
            sleep = re.search(r"(?:\bsleep|Start-Sleep -Seconds)\s+\$?\{?(\w+)\}?", body)
            assert bound and sleep, f"{script}: no attempt bound or no wait in the publish loop"
            attempts, wait = value(bound.group(1)), value(sleep.group(1))
            assert attempts >= 2 and wait >= 5, (script, attempts, wait)
            assert attempts * wait <= 600, f"{script}: retries for {attempts * wait} s"
            assert re.search(r"exit 1" if kind == "sh" else r"\bthrow\b", body), script
            assert re.search(r"(?:echo|Write-Host) .*attempt", body), f"{script}: no progress line per attempt"
            # Retried only when the output reads as a 403.
            assert re.search(r"grep -Eqi|-match", body), script
            assert "403" in text and "authorizationfailed" in text.lower(), script

    def test_the_hooks_set_up_their_python_and_run_the_publish_command(self) -> None:
        """The hook runs `autoretrain.cli publish` with the project's .venv, sets that venv up when it is
        missing or lacks azure-ai-ml (or stops with one line saying what to run), and hands the command
        the settings it reads."""
        for script, kind in HOOKS.items():
            text, lines = _hook(script)
            assert "publish_pipeline.py" not in text, script
            python = re.search(r"\$?python\s*=\s*(?:if .*\{ )?'?(\.venv/[\w/.]+)", text)
            assert python, f"{script}: the hook does not use the project's .venv"
            (publish,) = [line for line in lines if "autoretrain.cli publish" in line.code]
            assert re.search(r"(\"\$python\"|& \$python) -m autoretrain\.cli publish", publish.text), script
            check = next(i for i, line in enumerate(lines) if "import azure.ai.ml" in line.text)
            setup = next(i for i, line in enumerate(lines) if "-m venv .venv" in line.code)
            install = next(i for i, line in enumerate(lines) if re.search(r"-m pip install .*-e \.", line.code))
            assert check < setup <= install < lines.index(publish), script
            assert re.search(r"run '.*-m venv \.venv.*pip install -e \.'", text), f"{script}: no one-line fix"
            checked, reads = _checked_names(lines, kind), _env_reads(text, kind)
            for name in PUBLISH_SETTINGS:
                assert name in SETTING_NAMES, name
                assigned = re.search(rf"^\s*(export )?{name}=|\$env:{name} = ", text, re.MULTILINE)
                assert name in checked or assigned, f"{script}: {name} is neither required nor set"
                assert name in reads or assigned, script
            if kind == "sh":
                exported = {w for line in lines if line.code.startswith("export ") for w in line.code.split()[1:]}
                assert set(PUBLISH_SETTINGS) <= exported, f"{script}: not exported: {set(PUBLISH_SETTINGS) - exported}"


def _run_sh_hook(tmp_path: Path, *, auth_mode: str = "Identity", publish: list[tuple[int, str]]) -> tuple[
    subprocess.CompletedProcess[str], list[str], int
]:
    """Run postdeploy.sh under /bin/sh in `tmp_path` with stand-ins for az, sleep and the venv's python:
    az logs its arguments and answers `auth_mode`; each publish answers the next (exit code, output)."""
    bin_dir, venv = tmp_path / "bin", tmp_path / ".venv" / "bin"
    bin_dir.mkdir()
    venv.mkdir(parents=True)
    log = tmp_path / "az.log"
    stubs = {
        bin_dir / "az": f"""#!/bin/sh
echo "$*" >> {log}
case "$*" in "ml workspace show"*) echo "{auth_mode}" ;; esac
exit 0
""",
        bin_dir / "sleep": "#!/bin/sh\nexit 0\n",
        venv / "python": f"""#!/bin/sh
[ "$1" = "-c" ] && exit 0
n=$(cat {tmp_path}/publish.count 2>/dev/null || echo 0); n=$((n + 1)); echo "$n" > {tmp_path}/publish.count
sed -n "${{n}}p" {tmp_path}/publish.out | tr '|' '\n'
exit "$(sed -n "${{n}}p" {tmp_path}/publish.codes)"
""",
    }
    for path, body in stubs.items():
        path.write_text(body)
        path.chmod(0o755)
    (tmp_path / "publish.out").write_text("".join(f"{out}\n" for _, out in publish))
    (tmp_path / "publish.codes").write_text("".join(f"{code}\n" for code, _ in publish))
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "AZURE_SUBSCRIPTION_ID": "sub-of-azd",
        "AZURE_RESOURCE_GROUP": "rg-test",
        "AZURE_FUNCTION_APP_NAME": "func-test",
        "AZURE_STORAGE_TOPIC_NAME": "evgt-storage",
        "AZURE_WORKSPACE_TOPIC_NAME": "evgt-ml",
        "AZURE_DEADLETTER_CONTAINER": "deadletter",
        "AUTORETRAIN_STORAGE_RESOURCE_ID": "/subscriptions/sub-of-azd/x",
        "AUTORETRAIN_INCOMING_CONTAINER": "incoming",
        "AUTORETRAIN_AZUREML_WORKSPACE": "mlw-test",
        "AUTORETRAIN_PIPELINE_COMPONENT": "autoretrain_pipeline",
    }
    proc = subprocess.run(
        ["/bin/sh", str(INFRA / "hooks" / "postdeploy.sh")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    calls = log.read_text().splitlines() if log.exists() else []
    count = tmp_path / "publish.count"
    return proc, calls, int(count.read_text()) if count.exists() else 0


@pytest.mark.skipif(not Path("/bin/sh").exists(), reason="needs a POSIX shell")
class TestShHookRuns:
    """postdeploy.sh run for real under /bin/sh, with az, sleep and the venv's python stood in for."""

    def test_a_403_is_retried_until_publishing_succeeds(self, tmp_path: Path) -> None:
        denied = "autoretrain: AuthorizationFailed: (403) does not have authorization to perform action"
        proc, calls, publishes = _run_sh_hook(tmp_path, publish=[(2, denied), (2, denied), (0, "registered")])
        assert proc.returncode == 0, proc.stderr
        assert publishes == 3
        assert [line for line in proc.stdout.splitlines() if "(attempt " in line] == [
            f"postdeploy: publishing ml/pipeline.yml as component 'autoretrain_pipeline' (attempt {n}/15)"
            for n in (1, 2, 3)
        ]
        assert calls and all("--subscription sub-of-azd" in call for call in calls), calls
        assert calls[-1].startswith("deployment group create")

    def test_any_other_publish_failure_stops_at_once(self, tmp_path: Path) -> None:
        proc, calls, publishes = _run_sh_hook(tmp_path, publish=[(2, "autoretrain: ml/pipeline.yml: bad input")])
        assert (proc.returncode, publishes) == (1, 1)
        assert proc.stderr.splitlines()[-1].startswith("postdeploy: publishing the pipeline failed")
        assert not any(call.startswith("deployment group create") for call in calls)

    def test_retries_end_after_the_bound(self, tmp_path: Path) -> None:
        proc, _, publishes = _run_sh_hook(tmp_path, publish=[(2, "HTTP 403 Forbidden")] * 20)
        assert (proc.returncode, publishes) == (1, 15)
        assert proc.stderr.splitlines()[-1].startswith("postdeploy: still not authorized")

    def test_a_workspace_on_access_keys_stops_the_hook(self, tmp_path: Path) -> None:
        proc, calls, publishes = _run_sh_hook(tmp_path, auth_mode="AccessKey", publish=[(0, "registered")])
        assert (proc.returncode, publishes) == (1, 0)
        (line,) = proc.stderr.splitlines()
        assert "'AccessKey', not its identity" in line and "systemDatastoresAuthMode: 'Identity'" in line
        assert calls == [
            "extension show --name ml --subscription sub-of-azd --only-show-errors --output none",
            "ml workspace show --name mlw-test --resource-group rg-test --subscription sub-of-azd "
            "--query system_datastores_auth_mode --output tsv --only-show-errors",
        ]
