"""Publish ml/pipeline.yml as the registered pipeline component the function app submits.

Run by the postdeploy hook with the project's Python (it needs azure-ai-ml and azure-identity, both
dependencies of the app). `az ml component create --file ml/pipeline.yml` cannot do this: the file is
a pipeline *job* (it also runs locally), and the component schema rejects its typed inputs. So the job
is loaded with azure-ai-ml and turned into its pipeline component, as Azure ML does on submission.

The version is a digest of everything under ml/, so publishing the same pipeline twice is a no-op and
any change to a YAML or a script gives a new version.

Usage: python infra/hooks/publish_pipeline.py SUBSCRIPTION_ID RESOURCE_GROUP WORKSPACE COMPONENT_NAME
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = ROOT / "ml" / "pipeline.yml"


def content_version(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def main(subscription_id: str, resource_group: str, workspace: str, name: str) -> None:
    from azure.ai.ml import MLClient, load_job
    from azure.ai.ml.entities import PipelineComponent
    from azure.core.exceptions import ResourceNotFoundError
    from azure.identity import DefaultAzureCredential

    client = MLClient(DefaultAzureCredential(), subscription_id, resource_group, workspace)
    version = content_version(PIPELINE.parent)
    try:
        client.components.get(name, version=version)
    except ResourceNotFoundError:
        component = load_job(PIPELINE)._to_component()
        if not isinstance(component, PipelineComponent):
            sys.exit(f"publish_pipeline: {PIPELINE} is not a pipeline job (type: pipeline).")
        component.name = name
        component.version = version
        # The job YAML cannot mark an input optional; the champion is absent for the first model.
        component.inputs["champion"].optional = True
        client.components.create_or_update(component)
        print(f"publish_pipeline: registered {name}:{version}")
    else:
        print(f"publish_pipeline: {name}:{version} is already registered")


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    main(*sys.argv[1:])
