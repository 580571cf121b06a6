#!/bin/sh
# azd postdeploy hook: runs after `azd deploy` (and at the end of `azd up`), from the repository root,
# with the azd environment's values (main.bicep's outputs, AZURE_SUBSCRIPTION_ID) in the environment.
#   1. checks that the workspace's system datastores use its identity (its storage account takes no keys);
#   2. publishes ml/pipeline.yml as the registered pipeline component the function submits
#      (`autoretrain.cli publish`, run with the project's .venv, which it sets up when missing);
#   3. waits until the deployed app lists the `ingest` and `completion` functions;
#   4. deploys infra/event-subscriptions.bicep: Event Grid checks an AzureFunction endpoint when the
#      subscription is created, so this cannot be part of the first provisioning pass.
# Every az call names azd's subscription: az's own default subscription may be another one.
# Re-running it is safe: an unchanged pipeline is not registered again, the deployment is idempotent.
set -eu

for name in AZURE_SUBSCRIPTION_ID AZURE_RESOURCE_GROUP AZURE_FUNCTION_APP_NAME AZURE_STORAGE_TOPIC_NAME \
  AZURE_WORKSPACE_TOPIC_NAME AZURE_DEADLETTER_CONTAINER AUTORETRAIN_STORAGE_RESOURCE_ID \
  AUTORETRAIN_INCOMING_CONTAINER AUTORETRAIN_AZUREML_WORKSPACE AUTORETRAIN_PIPELINE_COMPONENT; do
  eval "value=\${$name:-}"
  if [ -z "$value" ]; then
    echo "postdeploy: $name is not set; run 'azd provision' first (azd sets it from infra/main.bicep)." >&2
    exit 1
  fi
done

# `autoretrain.cli publish` reads these (autoretrain/settings.py); main.bicep outputs them, and azd's own
# values stand in for an environment provisioned before those outputs existed.
AUTORETRAIN_AZUREML_SUBSCRIPTION_ID="${AUTORETRAIN_AZUREML_SUBSCRIPTION_ID:-$AZURE_SUBSCRIPTION_ID}"
AUTORETRAIN_AZUREML_RESOURCE_GROUP="${AUTORETRAIN_AZUREML_RESOURCE_GROUP:-$AZURE_RESOURCE_GROUP}"
export AUTORETRAIN_AZUREML_SUBSCRIPTION_ID AUTORETRAIN_AZUREML_RESOURCE_GROUP AUTORETRAIN_AZUREML_WORKSPACE \
  AUTORETRAIN_PIPELINE_COMPONENT

if ! command -v az >/dev/null 2>&1; then
  echo "postdeploy: the Azure CLI (az) is not on PATH; install it (https://aka.ms/installazurecli), run 'az login'," \
    "then 'azd hooks run postdeploy'." >&2
  exit 1
fi
if ! az extension show --name ml --subscription "$AZURE_SUBSCRIPTION_ID" --only-show-errors --output none \
    >/dev/null 2>&1; then
  echo "postdeploy: the Azure CLI 'ml' extension is missing; add it with 'az extension add --name ml'," \
    "then run 'azd hooks run postdeploy'." >&2
  exit 1
fi

# 1. The workspace storage account accepts no keys: its system datastores must use the workspace identity.
if ! auth_mode=$(az ml workspace show --name "$AUTORETRAIN_AZUREML_WORKSPACE" \
    --resource-group "$AZURE_RESOURCE_GROUP" --subscription "$AZURE_SUBSCRIPTION_ID" \
    --query system_datastores_auth_mode --output tsv --only-show-errors); then
  echo "postdeploy: cannot read workspace '$AUTORETRAIN_AZUREML_WORKSPACE' (az ml workspace show failed above);" \
    "check 'az login' and your access to subscription $AZURE_SUBSCRIPTION_ID." >&2
  exit 1
fi
case "$auth_mode" in
  [Ii][Dd][Ee][Nn][Tt][Ii][Tt][Yy]) ;;
  *)
    echo "postdeploy: workspace '$AUTORETRAIN_AZUREML_WORKSPACE' reaches its system datastores with" \
      "'${auth_mode:-no mode}', not its identity, and its storage account takes no keys; run 'azd provision'" \
      "(infra/modules/ml-workspace.bicep sets systemDatastoresAuthMode: 'Identity'), or, if no mode is" \
      "shown, 'az extension update --name ml'." >&2
    exit 1
    ;;
esac

# 2. The project's Python with azure-ai-ml; set up here when missing, as `make setup` would.
python=.venv/bin/python
if ! "$python" -c "import azure.ai.ml, autoretrain.cli" >/dev/null 2>&1; then
  echo "postdeploy: setting up .venv with the project and azure-ai-ml (a few minutes, once)"
  if ! { python3 -m venv .venv && "$python" -m pip install --quiet --upgrade pip \
      && "$python" -m pip install --quiet -e .; }; then
    echo "postdeploy: could not set up .venv; run 'python3 -m venv .venv && .venv/bin/python -m pip install -e .'" \
      "with Python 3.11 or later, then 'azd hooks run postdeploy'." >&2
    exit 1
  fi
fi

# Roles granted by this provisioning (AzureML Data Scientist, Blob Data Contributor on the workspace store)
# can take minutes to apply: an authorization failure is retried for up to 5 minutes, anything else is not.
publish_attempts=15
publish_wait=20
# How Azure ML (AuthorizationFailed) and Storage (AuthorizationPermissionMismatch) word a 403.
denied='(^|[^0-9])403([^0-9]|$)|forbidden|authorizationfailed|authorizationpermissionmismatch'
denied="$denied|does not have (authorization|permission)|not authorized to perform"
publish_log=$(mktemp)
trap 'rm -f "$publish_log"' EXIT
attempt=1
while :; do
  echo "postdeploy: publishing ml/pipeline.yml as component '$AUTORETRAIN_PIPELINE_COMPONENT'" \
    "(attempt $attempt/$publish_attempts)"
  if "$python" -m autoretrain.cli publish >"$publish_log" 2>&1; then
    cat "$publish_log"
    break
  fi
  cat "$publish_log" >&2
  if ! grep -Eqi "$denied" "$publish_log"; then
    echo "postdeploy: publishing the pipeline failed (output above); fix it, then run 'azd hooks run postdeploy'." >&2
    exit 1
  fi
  if [ "$attempt" -ge "$publish_attempts" ]; then
    echo "postdeploy: still not authorized to publish to '$AUTORETRAIN_AZUREML_WORKSPACE' after" \
      "$((publish_attempts * publish_wait)) s; check your roles on it (infra/README.md), then run" \
      "'azd hooks run postdeploy'." >&2
    exit 1
  fi
  echo "postdeploy: not authorized yet (new role assignments take a few minutes); retrying in ${publish_wait} s"
  attempt=$((attempt + 1))
  sleep "$publish_wait"
done

# 3. The host indexes the functions some seconds after the package lands.
for function in ingest completion; do
  attempt=0
  until az functionapp function show --subscription "$AZURE_SUBSCRIPTION_ID" --resource-group "$AZURE_RESOURCE_GROUP" \
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

# 4. The Event Grid subscriptions.
echo "postdeploy: deploying the Event Grid subscriptions"
az deployment group create --resource-group "$AZURE_RESOURCE_GROUP" --subscription "$AZURE_SUBSCRIPTION_ID" \
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
