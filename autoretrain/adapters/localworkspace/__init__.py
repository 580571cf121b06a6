"""The embedded local workspace: the Workspace port on this machine, the default adapter.

    workspace.py    LocalWorkspace: the port, its SQLite catalogue and its job runner
    pipeline.py     ml/pipeline.yml as azure-ai-ml loads it, reduced to ordered steps
    warm.py         warm step runners: a fork of a process that has the heavy libraries imported
    tracking.py     the local MLflow store: a run per job, a child run per step, registered models
"""
