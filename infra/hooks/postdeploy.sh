#!/bin/sh
# azd postdeploy hook: runs after `azd deploy` (and at the end of `azd up`), from the repository root,
# with the azd environment's values (main.bicep's outputs) in the environment.
#   1. publishes ml/pipeline.yml as the registered pipeline component the function submits
#      (infra/hooks/publish_pipeline.py; the component version is a digest of ml/);
#   2. waits until the deployed app lists the `ingest` and `completion` functions;
#   3. deploys infra/event-subscriptions.bicep: Event Grid checks an AzureFunction endpoint when the
#      subscription is created, so this cannot be part of the first provisioning pass.
# Re-running it is safe: an unchanged pipeline is not registered again, the deployment is idempotent.
set -eu

for name in AZURE_RESOURCE_GROUP AZURE_FUNCTION_APP_NAME AZURE_STORAGE_TOPIC_NAME AZURE_WORKSPACE_TOPIC_NAME \
  AZURE_DEADLETTER_CONTAINER AUTORETRAIN_STORAGE_RESOURCE_ID AUTORETRAIN_INCOMING_CONTAINER \
  AUTORETRAIN_AZUREML_SUBSCRIPTION_ID AUTORETRAIN_AZUREML_WORKSPACE AUTORETRAIN_PIPELINE_COMPONENT; do
  eval "value=\${$name:-}"
  if [ -z "$value" ]; then
    echo "postdeploy: $name is not set; run 'azd provision' first (it is an output of infra/main.bicep)." >&2
    exit 1
  fi
done

# The project's Python has azure-ai-ml (make setup); otherwise the one on PATH, which then needs it.
python=python3
if [ -x .venv/bin/python ]; then python=.venv/bin/python; fi
echo "postdeploy: publishing ml/pipeline.yml as component '$AUTORETRAIN_PIPELINE_COMPONENT'"
"$python" infra/hooks/publish_pipeline.py "$AUTORETRAIN_AZUREML_SUBSCRIPTION_ID" "$AZURE_RESOURCE_GROUP" \
  "$AUTORETRAIN_AZUREML_WORKSPACE" "$AUTORETRAIN_PIPELINE_COMPONENT"

# The host indexes the functions some seconds after the package lands.
for function in ingest completion; do
  attempt=0
  until az functionapp function show --resource-group "$AZURE_RESOURCE_GROUP" \
      --name "$AZURE_FUNCTION_APP_NAME" --function-name "$function" --output none >/dev/null 2>&1; do
    attempt=$((attempt + 1))
    if [ "$attempt" -ge 30 ]; then
      echo "postdeploy: function '$function' is not listed on $AZURE_FUNCTION_APP_NAME after 5 minutes;" \
        "check the deployment logs, then run 'azd hooks run postdeploy'." >&2
      exit 1
    fi
    echo "postdeploy: waiting for function '$function' ($attempt/30)"
    sleep 10
  done
done

echo "postdeploy: deploying the Event Grid subscriptions"
az deployment group create --resource-group "$AZURE_RESOURCE_GROUP" \
  --name "autoretrain-event-subscriptions" \
  --template-file infra/event-subscriptions.bicep \
  --parameters functionAppName="$AZURE_FUNCTION_APP_NAME" \
    storageTopicName="$AZURE_STORAGE_TOPIC_NAME" \
    workspaceTopicName="$AZURE_WORKSPACE_TOPIC_NAME" \
    deadLetterAccountId="$AUTORETRAIN_STORAGE_RESOURCE_ID" \
    deadLetterContainerName="$AZURE_DEADLETTER_CONTAINER" \
    incomingContainerName="$AUTORETRAIN_INCOMING_CONTAINER" \
  --only-show-errors --output none

echo "postdeploy: done; files dropped into '$AUTORETRAIN_INCOMING_CONTAINER' now start the loop"
