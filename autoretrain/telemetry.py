"""Application Insights through OpenTelemetry, for the function app on Azure; nothing locally.

Azure Functions (host.json `"telemetryMode": "OpenTelemetry"`) exports the host's own telemetry,
and the Python worker exports the app's: with the app setting
`PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true` (infra/modules/function-app.bicep) the worker
calls azure-monitor-opentelemetry's `configure_azure_monitor()` itself before it imports
function_app.py, and attaches each invocation's trace context. `configure_telemetry()` is the app's
half: when `APPLICATIONINSIGHTS_CONNECTION_STRING` is set it configures the distro only if nobody
did yet (a worker without that setting, or a run outside the worker), so the telemetry is never
exported twice; then it turns on the span per invocation (`autoretrain.logs.enable_tracing`).

The exporter authenticates with Entra ID from `APPLICATIONINSIGHTS_AUTHENTICATION_STRING`
(`ClientId=<the user-assigned identity>;Authorization=AAD`); no key is ever set. Without a
connection string (local mode, tests) nothing is configured and OpenTelemetry is not imported.
"""

from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping

from autoretrain.logs import enable_tracing, install_redaction

__all__ = ["CONNECTION_STRING", "configure_telemetry"]

CONNECTION_STRING = "APPLICATIONINSIGHTS_CONNECTION_STRING"

log = logging.getLogger("autoretrain.telemetry")


def configure_telemetry(environ: MutableMapping[str, str] | None = None) -> bool:
    """Export logs and one span per invocation to Application Insights when its connection string
    is set; True when telemetry is on. Redaction is put on the root logger's handlers either way."""
    env = os.environ if environ is None else environ
    install_redaction()
    if not env.get(CONNECTION_STRING):
        return False
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        # Not configured by the Functions worker: do it here, once. The resource detector names the
        # function app (cloud_RoleName), as the worker's own setup does.
        from azure.monitor.opentelemetry import configure_azure_monitor

        env.setdefault("OTEL_EXPERIMENTAL_RESOURCE_DETECTORS", "azure_functions")
        configure_azure_monitor(connection_string=env[CONNECTION_STRING])
    # The Azure SDKs log every HTTP call at INFO; their calls are already dependencies of the span.
    logging.getLogger("azure").setLevel(logging.WARNING)
    enable_tracing()
    install_redaction()  # the OpenTelemetry handler is new
    return True
