"""The embedded local workspace: the Workspace port on this machine, the default adapter.

    workspace.py    LocalWorkspace: the port, composed of the parts below
    catalog.py      the SQLite catalogue: data versions, training sets, jobs, steps, models
    runner.py       the job runner: a job's steps in order, its state, runs and events
    processes.py    a step's process (a warm fork or a subprocess), and stopping it
    events.py       the Azure ML run events a job sends when it changes state
    pipeline.py     ml/pipeline.yml as azure-ai-ml loads it, reduced to ordered steps; its templating
    warm.py         warm step runners: a fork of a process that has the heavy libraries imported
    tracking.py     the local MLflow store: a run per job, a child run per step, registered models
    tracker.py      the tracker process that makes tracking.py's MLflow calls
    channel.py      a helper process (warm runner, tracker) and its multiprocessing connection
"""
