"""The adapters: each port on a real service, and the local stand-ins that run the same loop offline.

    ledger.py           Ledger on Azure Table Storage (Azurite locally)
    storage.py          BlobStore on Azure Blob Storage (Azurite locally)
    azureml.py          Workspace on Azure Machine Learning (azure-ai-ml), imported only for azureml mode;
    azureml_calls.py    its call policy: bounded retries, job statuses, errors as one line
    azureml_models.py   its model registry: one version per work key, champion and gate tags
    publish.py          registers ml/pipeline.yml as the pipeline component the Azure ML adapter submits
    eventgrid.py        Event Grid's delivery to a Functions host: retries, dead letters (the local
                        workspace's run events, the local Event Grid's blob events)
    localworkspace/     Workspace on this machine: the catalogue, the job runner, tracking

Chosen in one place, `autoretrain.bootstrap`.
"""
