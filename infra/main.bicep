// autoretrain on Azure: customer storage, the function app, the Azure ML workspace and the Event Grid
// system topics. The two event subscriptions are deployed after the code (infra/event-subscriptions.bicep,
// run by infra/hooks/postdeploy.*): Event Grid checks that an AzureFunction endpoint exists when the
// subscription is created, and the functions only exist once `azd deploy` has published the app.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the azd environment; it seeds the unique names of all resources.')
param environmentName string

@minLength(1)
@description('Region of all resources (it must offer Flex Consumption and Azure ML).')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Object id of the person running azd; gets data-plane roles to try the loop and publish the pipeline. Empty to skip.')
param principalId string = ''

@allowed(['User', 'ServicePrincipal'])
@description('Kind of principal behind principalId (ServicePrincipal when azd runs in CI).')
param principalType string = 'User'

@description('VM size of the training cluster; small by default, it scales to 0 nodes when idle.')
param computeVmSize string = 'Standard_DS2_v2'

@minValue(1)
@description('Most nodes the training cluster may scale out to.')
param computeMaxNodes int = 2

@description('Azure ML experiment the pipeline jobs are filed under.')
param experimentName string = 'autoretrain'

@description('Name of the data asset each accepted file becomes a version of.')
param dataAssetName string = 'autoretrain-data'

@description('Name of the registered model each run produces a version of.')
param modelName string = 'autoretrain-model'

@description('Name of the registered pipeline component the hook publishes from ml/pipeline.yml.')
param pipelineComponentName string = 'autoretrain_pipeline'

var abbrs = loadJsonContent('abbreviations.json')
var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = { 'azd-env-name': environmentName }

var incomingContainerName = 'incoming'
var quarantineContainerName = 'quarantine'
var datasetsContainerName = 'datasets'
var deadLetterContainerName = 'deadletter'
var ledgerTableName = 'autoretrainledger'
var datastoreName = 'autoretrain_datasets'
var computeName = 'cpu-autoretrain'
var functionAppName = '${abbrs.webSitesFunctions}${resourceToken}'

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: '${abbrs.resourcesResourceGroups}${environmentName}'
  location: location
  tags: tags
}

module identities 'modules/identities.bicep' = {
  name: 'identities'
  scope: rg
  params: {
    location: location
    tags: tags
    functionIdentityName: '${abbrs.managedIdentityUserAssignedIdentities}func-${resourceToken}'
    computeIdentityName: '${abbrs.managedIdentityUserAssignedIdentities}compute-${resourceToken}'
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    location: location
    tags: tags
    logAnalyticsName: '${abbrs.operationalInsightsWorkspaces}${resourceToken}'
    applicationInsightsName: '${abbrs.insightsComponents}${resourceToken}'
    metricsPublisherPrincipalId: identities.outputs.functionPrincipalId
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    location: location
    tags: tags
    name: '${abbrs.storageStorageAccounts}${resourceToken}'
    containerNames: [incomingContainerName, quarantineContainerName, datasetsContainerName, deadLetterContainerName]
    tableName: ledgerTableName
  }
}

module mlWorkspace 'modules/ml-workspace.bicep' = {
  name: 'ml-workspace'
  scope: rg
  params: {
    location: location
    tags: tags
    workspaceName: '${abbrs.machineLearningServicesWorkspaces}${resourceToken}'
    storageAccountName: '${abbrs.storageStorageAccounts}ml${resourceToken}'
    keyVaultName: '${abbrs.keyVaultVaults}${resourceToken}'
    containerRegistryName: '${abbrs.containerRegistryRegistries}${resourceToken}'
    applicationInsightsId: monitoring.outputs.applicationInsightsId
    computeName: computeName
    computeVmSize: computeVmSize
    computeMaxNodes: computeMaxNodes
    computeIdentityId: identities.outputs.computeIdentityId
    computePrincipalId: identities.outputs.computePrincipalId
    functionPrincipalId: identities.outputs.functionPrincipalId
    datastoreName: datastoreName
    datastoreAccountName: storage.outputs.name
    datastoreContainerName: datasetsContainerName
    userPrincipalId: principalId
    userPrincipalType: principalType
  }
}

module functionApp 'modules/function-app.bicep' = {
  name: 'function-app'
  scope: rg
  params: {
    location: location
    tags: tags
    azdServiceName: 'api'
    name: functionAppName
    planName: '${abbrs.webServerFarms}${resourceToken}'
    deploymentStorageAccountName: '${abbrs.storageStorageAccounts}fn${resourceToken}'
    identityId: identities.outputs.functionIdentityId
    identityClientId: identities.outputs.functionClientId
    identityPrincipalId: identities.outputs.functionPrincipalId
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    appSettings: {
      AUTORETRAIN_WORKSPACE: 'azureml'
      AUTORETRAIN_CONTRACT: 'ml/contract.yaml'
      AUTORETRAIN_STORAGE__blobServiceUri: storage.outputs.blobEndpoint
      AUTORETRAIN_STORAGE__tableServiceUri: storage.outputs.tableEndpoint
      AUTORETRAIN_STORAGE_RESOURCE_ID: storage.outputs.id
      AUTORETRAIN_INCOMING_CONTAINER: incomingContainerName
      AUTORETRAIN_QUARANTINE_CONTAINER: quarantineContainerName
      AUTORETRAIN_DATASETS_CONTAINER: datasetsContainerName
      AUTORETRAIN_LEDGER_TABLE: ledgerTableName
      AUTORETRAIN_EXPERIMENT: experimentName
      AUTORETRAIN_DATA_ASSET: dataAssetName
      AUTORETRAIN_MODEL_NAME: modelName
      AUTORETRAIN_PIPELINE_COMPONENT: pipelineComponentName
      AUTORETRAIN_AZUREML_SUBSCRIPTION_ID: subscription().subscriptionId
      AUTORETRAIN_AZUREML_RESOURCE_GROUP: rg.name
      AUTORETRAIN_AZUREML_WORKSPACE: mlWorkspace.outputs.workspaceName
      AUTORETRAIN_AZUREML_DATASTORE: mlWorkspace.outputs.datastoreName
      AUTORETRAIN_AZUREML_COMPUTE: mlWorkspace.outputs.computeName
      // The reconcile timer reads its schedule from here (%AUTORETRAIN_RECONCILE_SCHEDULE%).
      AUTORETRAIN_RECONCILE_SCHEDULE: '0 */5 * * * *'
      AUTORETRAIN_RECONCILE_GRACE_SECONDS: '600'
      AUTORETRAIN_LEASE_SECONDS: '600'
    }
  }
}

module topics 'modules/event-grid-topics.bicep' = {
  name: 'event-grid-topics'
  scope: rg
  params: {
    location: location
    tags: tags
    storageTopicName: '${abbrs.eventGridSystemTopics}storage-${resourceToken}'
    storageAccountId: storage.outputs.id
    workspaceTopicName: '${abbrs.eventGridSystemTopics}ml-${resourceToken}'
    workspaceId: mlWorkspace.outputs.workspaceId
  }
}

// Data-plane roles on the customer account, each on the one container or table its holder needs.
module storageRoles 'modules/storage-roles.bicep' = {
  name: 'storage-roles'
  scope: rg
  params: {
    storageAccountName: storage.outputs.name
    incomingContainerName: incomingContainerName
    quarantineContainerName: quarantineContainerName
    datasetsContainerName: datasetsContainerName
    deadLetterContainerName: deadLetterContainerName
    ledgerTableName: ledgerTableName
    functionPrincipalId: identities.outputs.functionPrincipalId
    computePrincipalId: identities.outputs.computePrincipalId
    topicPrincipalIds: [topics.outputs.storageTopicPrincipalId, topics.outputs.workspaceTopicPrincipalId]
    userPrincipalId: principalId
    userPrincipalType: principalType
  }
}

// Read by azd (AZURE_*) and by the postdeploy hook; none of them is a secret.
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output AZURE_STORAGE_TOPIC_NAME string = topics.outputs.storageTopicName
output AZURE_WORKSPACE_TOPIC_NAME string = topics.outputs.workspaceTopicName
output AZURE_DEADLETTER_CONTAINER string = deadLetterContainerName
output AUTORETRAIN_STORAGE_RESOURCE_ID string = storage.outputs.id
output AUTORETRAIN_INCOMING_CONTAINER string = incomingContainerName
output AUTORETRAIN_PIPELINE_COMPONENT string = pipelineComponentName
output AUTORETRAIN_AZUREML_SUBSCRIPTION_ID string = subscription().subscriptionId
output AUTORETRAIN_AZUREML_RESOURCE_GROUP string = rg.name
output AUTORETRAIN_AZUREML_WORKSPACE string = mlWorkspace.outputs.workspaceName
output AUTORETRAIN_AZUREML_DATASTORE string = mlWorkspace.outputs.datastoreName
output AUTORETRAIN_AZUREML_COMPUTE string = mlWorkspace.outputs.computeName
