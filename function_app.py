"""The Azure Functions entry point: builds the app and registers the blueprints. Nothing else."""

import azure.functions as func

from functions.completion import bp as completion_bp
from functions.ingest import bp as ingest_bp
from functions.reconcile import bp as reconcile_bp

app = func.FunctionApp()
app.register_functions(ingest_bp)
app.register_functions(completion_bp)
app.register_functions(reconcile_bp)
