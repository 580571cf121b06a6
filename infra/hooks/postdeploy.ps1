# azd postdeploy hook (Windows): the same steps as postdeploy.sh.
#   1. checks that the workspace's system datastores use its identity (its storage account takes no keys);
#   2. publishes ml/pipeline.yml as the registered pipeline component the function submits
#      (`autoretrain.cli publish`, run with the project's .venv, which it sets up when missing);
#   3. waits until the deployed app lists the `ingest` and `completion` functions;
#   4. deploys infra/event-subscriptions.bicep (Event Grid checks an AzureFunction endpoint when the
#      subscription is created, so this cannot be part of the first provisioning pass).
# Every az call names azd's subscription: az's own default subscription may be another one.
$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest

$names = 'AZURE_SUBSCRIPTION_ID', 'AZURE_RESOURCE_GROUP', 'AZURE_FUNCTION_APP_NAME', 'AZURE_STORAGE_TOPIC_NAME',
    'AZURE_WORKSPACE_TOPIC_NAME', 'AZURE_DEADLETTER_CONTAINER', 'AUTORETRAIN_STORAGE_RESOURCE_ID',
    'AUTORETRAIN_INCOMING_CONTAINER', 'AUTORETRAIN_AZUREML_WORKSPACE', 'AUTORETRAIN_PIPELINE_COMPONENT'
foreach ($name in $names) {
    if (-not [Environment]::GetEnvironmentVariable($name)) {
        throw "postdeploy: $name is not set; run 'azd provision' first (azd sets it from infra/main.bicep)."
    }
}
$rg = $env:AZURE_RESOURCE_GROUP
$app = $env:AZURE_FUNCTION_APP_NAME
$workspace = $env:AUTORETRAIN_AZUREML_WORKSPACE

# `autoretrain.cli publish` reads these (autoretrain/settings.py); main.bicep outputs them, and azd's own
# values stand in for an environment provisioned before those outputs existed.
if (-not $env:AUTORETRAIN_AZUREML_SUBSCRIPTION_ID) { $env:AUTORETRAIN_AZUREML_SUBSCRIPTION_ID = $env:AZURE_SUBSCRIPTION_ID }
if (-not $env:AUTORETRAIN_AZUREML_RESOURCE_GROUP) { $env:AUTORETRAIN_AZUREML_RESOURCE_GROUP = $env:AZURE_RESOURCE_GROUP }

if (-not (Get-Command az -ErrorAction SilentlyContinue)) {
    throw "postdeploy: the Azure CLI (az) is not on PATH; install it (https://aka.ms/installazurecli), run 'az login', then 'azd hooks run postdeploy'."
}
az extension show --name ml --subscription $env:AZURE_SUBSCRIPTION_ID --only-show-errors --output none 2>$null
if ($LASTEXITCODE -ne 0) {
    throw "postdeploy: the Azure CLI 'ml' extension is missing; add it with 'az extension add --name ml', then run 'azd hooks run postdeploy'."
}

# 1. The workspace storage account accepts no keys: its system datastores must use the workspace identity.
$authMode = az ml workspace show --name $workspace --resource-group $rg --subscription $env:AZURE_SUBSCRIPTION_ID `
    --query system_datastores_auth_mode --output tsv --only-show-errors
if ($LASTEXITCODE -ne 0) {
    throw "postdeploy: cannot read workspace '$workspace' (az ml workspace show failed above); check 'az login' and your access to subscription $env:AZURE_SUBSCRIPTION_ID."
}
$authMode = "$authMode".Trim()
if ($authMode -ne 'identity') {
    $shown = if ($authMode) { $authMode } else { 'no mode' }
    throw "postdeploy: workspace '$workspace' reaches its system datastores with '$shown', not its identity, and its storage account takes no keys; run 'azd provision' (infra/modules/ml-workspace.bicep sets systemDatastoresAuthMode: 'Identity'), or, if no mode is shown, 'az extension update --name ml'."
}

# 2. The project's Python with azure-ai-ml; set up here when missing, as `make setup` would.
$onWindows = [Environment]::OSVersion.Platform -eq 'Win32NT'
$python = if ($onWindows) { '.venv/Scripts/python.exe' } else { '.venv/bin/python' }
$ready = $false
if (Test-Path $python) {
    & $python -c 'import azure.ai.ml, autoretrain.cli' 2>$null
    $ready = $LASTEXITCODE -eq 0
}
if (-not $ready) {
    Write-Host 'postdeploy: setting up .venv with the project and azure-ai-ml (a few minutes, once)'
    $base = if (Get-Command python -ErrorAction SilentlyContinue) { 'python' } else { 'python3' }
    & $base -m venv .venv
    if ($LASTEXITCODE -eq 0) { & $python -m pip install --quiet --upgrade pip }
    if ($LASTEXITCODE -eq 0) { & $python -m pip install --quiet -e . }
    if ($LASTEXITCODE -ne 0) {
        throw "postdeploy: could not set up .venv; run 'python -m venv .venv; $python -m pip install -e .' with Python 3.11 or later, then 'azd hooks run postdeploy'."
    }
}

# Roles granted by this provisioning (AzureML Data Scientist, Blob Data Contributor on the workspace store)
# can take minutes to apply: an authorization failure is retried for up to 5 minutes, anything else is not.
$publishAttempts = 15
$publishWait = 20
# How Azure ML (AuthorizationFailed) and Storage (AuthorizationPermissionMismatch) word a 403.
$denied = '(^|[^0-9])403([^0-9]|$)|forbidden|authorizationfailed|authorizationpermissionmismatch|does not have (authorization|permission)|not authorized to perform'
for ($attempt = 1; ; $attempt++) {
    Write-Host "postdeploy: publishing ml/pipeline.yml as component '$env:AUTORETRAIN_PIPELINE_COMPONENT' (attempt $attempt/$publishAttempts)"
    $output = & $python -m autoretrain.cli publish 2>&1 | ForEach-Object { "$_" }
    $exitCode = $LASTEXITCODE
    $output | Write-Host
    if ($exitCode -eq 0) { break }
    if (-not (($output -join "`n") -match $denied)) {
        throw "postdeploy: publishing the pipeline failed (output above); fix it, then run 'azd hooks run postdeploy'."
    }
    if ($attempt -ge $publishAttempts) {
        throw "postdeploy: still not authorized to publish to '$workspace' after $($publishAttempts * $publishWait) s; check your roles on it (infra/README.md), then run 'azd hooks run postdeploy'."
    }
    Write-Host "postdeploy: not authorized yet (new role assignments take a few minutes); retrying in $publishWait s"
    Start-Sleep -Seconds $publishWait
}

# 3. The host indexes the functions some seconds after the package lands.
foreach ($function in 'ingest', 'completion') {
    $attempt = 0
    while ($true) {
        az functionapp function show --subscription $env:AZURE_SUBSCRIPTION_ID --resource-group $rg --name $app `
            --function-name $function --output none 2>$null
        if ($LASTEXITCODE -eq 0) { break }
        $attempt++
        if ($attempt -ge 30) {
            throw "postdeploy: function '$function' is not listed on $app after 5 minutes; check the deployment logs, then run 'azd hooks run postdeploy'."
        }
        Write-Host "postdeploy: waiting for function '$function' ($attempt/30)"
        Start-Sleep -Seconds 10
    }
}

# 4. The Event Grid subscriptions.
Write-Host 'postdeploy: deploying the Event Grid subscriptions'
az deployment group create --resource-group $rg --subscription $env:AZURE_SUBSCRIPTION_ID `
    --name 'autoretrain-event-subscriptions' `
    --template-file infra/event-subscriptions.bicep `
    --parameters "functionAppName=$app" `
        "storageTopicName=$env:AZURE_STORAGE_TOPIC_NAME" `
        "workspaceTopicName=$env:AZURE_WORKSPACE_TOPIC_NAME" `
        "deadLetterAccountId=$env:AUTORETRAIN_STORAGE_RESOURCE_ID" `
        "deadLetterContainerName=$env:AZURE_DEADLETTER_CONTAINER" `
        "incomingContainerName=$env:AUTORETRAIN_INCOMING_CONTAINER" `
    --only-show-errors --output none
if ($LASTEXITCODE -ne 0) { throw "postdeploy: deploying the Event Grid subscriptions failed (exit code $LASTEXITCODE)." }

Write-Host "postdeploy: done; files dropped into '$env:AUTORETRAIN_INCOMING_CONTAINER' now start the loop"
