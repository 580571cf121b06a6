# azd postdeploy hook (Windows): the same steps as postdeploy.sh.
#   1. publishes ml/pipeline.yml as the registered pipeline component the function submits
#      (infra/hooks/publish_pipeline.py; the component version is a digest of ml/);
#   2. waits until the deployed app lists the `ingest` and `completion` functions;
#   3. deploys infra/event-subscriptions.bicep (Event Grid checks an AzureFunction endpoint when the
#      subscription is created, so this cannot be part of the first provisioning pass).
$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest

function Invoke-Az {
    & az @args
    if ($LASTEXITCODE -ne 0) { throw "az $($args -join ' ') failed with exit code $LASTEXITCODE" }
}

$names = 'AZURE_RESOURCE_GROUP', 'AZURE_FUNCTION_APP_NAME', 'AZURE_STORAGE_TOPIC_NAME', 'AZURE_WORKSPACE_TOPIC_NAME',
    'AZURE_DEADLETTER_CONTAINER', 'AUTORETRAIN_STORAGE_RESOURCE_ID', 'AUTORETRAIN_INCOMING_CONTAINER',
    'AUTORETRAIN_AZUREML_SUBSCRIPTION_ID', 'AUTORETRAIN_AZUREML_WORKSPACE', 'AUTORETRAIN_PIPELINE_COMPONENT'
foreach ($name in $names) {
    if (-not [Environment]::GetEnvironmentVariable($name)) {
        throw "postdeploy: $name is not set; run 'azd provision' first (it is an output of infra/main.bicep)."
    }
}
$rg = $env:AZURE_RESOURCE_GROUP
$app = $env:AZURE_FUNCTION_APP_NAME

# The project's Python has azure-ai-ml (make setup); otherwise the one on PATH, which then needs it.
$python = 'python'
foreach ($candidate in '.venv/Scripts/python.exe', '.venv/bin/python') {
    if (Test-Path $candidate) { $python = $candidate; break }
}
Write-Host "postdeploy: publishing ml/pipeline.yml as component '$env:AUTORETRAIN_PIPELINE_COMPONENT'"
& $python infra/hooks/publish_pipeline.py $env:AUTORETRAIN_AZUREML_SUBSCRIPTION_ID $rg `
    $env:AUTORETRAIN_AZUREML_WORKSPACE $env:AUTORETRAIN_PIPELINE_COMPONENT
if ($LASTEXITCODE -ne 0) { throw "postdeploy: publishing the pipeline failed (exit code $LASTEXITCODE)" }

# The host indexes the functions some seconds after the package lands.
foreach ($function in 'ingest', 'completion') {
    $attempt = 0
    while ($true) {
        az functionapp function show --resource-group $rg --name $app --function-name $function --output none 2>$null
        if ($LASTEXITCODE -eq 0) { break }
        $attempt++
        if ($attempt -ge 30) {
            throw "postdeploy: function '$function' is not listed on $app after 5 minutes; check the deployment logs, then run 'azd hooks run postdeploy'."
        }
        Write-Host "postdeploy: waiting for function '$function' ($attempt/30)"
        Start-Sleep -Seconds 10
    }
}

Write-Host 'postdeploy: deploying the Event Grid subscriptions'
Invoke-Az deployment group create --resource-group $rg `
    --name 'autoretrain-event-subscriptions' `
    --template-file infra/event-subscriptions.bicep `
    --parameters "functionAppName=$app" `
        "storageTopicName=$env:AZURE_STORAGE_TOPIC_NAME" `
        "workspaceTopicName=$env:AZURE_WORKSPACE_TOPIC_NAME" `
        "deadLetterAccountId=$env:AUTORETRAIN_STORAGE_RESOURCE_ID" `
        "deadLetterContainerName=$env:AZURE_DEADLETTER_CONTAINER" `
        "incomingContainerName=$env:AUTORETRAIN_INCOMING_CONTAINER" `
    --only-show-errors --output none

Write-Host "postdeploy: done; files dropped into '$env:AUTORETRAIN_INCOMING_CONTAINER' now start the loop"
