"""The Azure Functions entry point: telemetry (Application Insights, only when its connection string
is set), then the app and its blueprints. Nothing else."""

import azure.functions as func

from autoretrain.telemetry import configure_telemetry
from functions.completion import bp as completion_bp
from functions.ingest import bp as ingest_bp
from functions.reconcile import bp as reconcile_bp

configure_telemetry()

app = func.FunctionApp()
app.register_functions(ingest_bp)
app.register_functions(completion_bp)
app.register_functions(reconcile_bp)
