"""`publish`: register ml/pipeline.yml and its steps in an Azure ML workspace."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from autoretrain.domain.errors import ConfigError
from autoretrain.settings import Settings

if TYPE_CHECKING:
    from azure.ai.ml import MLClient

__all__ = ["cmd_publish"]


def cmd_publish(
    settings: Settings, args: argparse.Namespace, *, ml_client: Callable[..., MLClient] | None = None
) -> int:
    """Register the pipeline in the settings' workspace. `ml_client(settings, **options)` builds the
    client (the options go to MLClient): by default `bootstrap.ml_client`, with the app's credential."""
    # Only the workspace's coordinates: AUTORETRAIN_WORKSPACE=azureml would also demand the app's storage
    # endpoints, datastore and compute, which publishing does not use (the deploy hook has no storage URIs).
    missing = [
        env_name
        for env_name, value in (
            ("AUTORETRAIN_AZUREML_SUBSCRIPTION_ID", settings.azureml_subscription_id),
            ("AUTORETRAIN_AZUREML_RESOURCE_GROUP", settings.azureml_resource_group),
            ("AUTORETRAIN_AZUREML_WORKSPACE", settings.azureml_workspace),
        )
        if not value
    ]
    if missing:
        raise ConfigError(
            f"publish registers the pipeline in an Azure ML workspace: set {', '.join(missing)} "
            "(`azd env get-values` prints them)."
        )
    from autoretrain.adapters.publish import publish
    from autoretrain.bootstrap import PIPELINE
    from autoretrain.bootstrap import ml_client as app_client

    # azure-ai-ml logs (to stderr, at INFO, set on import) a warning per experimental schema class it
    # loads and for the job-only keys (settings) a pipeline component leaves out, azure-identity every
    # credential it tried: noise here, where each line is a result and a failure is one line.
    for name in ("azure", "azure.ai.ml"):
        logging.getLogger(name).setLevel(logging.ERROR)
    client = (ml_client or app_client)(settings, show_progress=False)
    publish(client, pipeline=PIPELINE, name=settings.pipeline_component, out=sys.stdout, dry_run=args.dry_run)
    return 0
