// The Azure ML workspace and what it runs on: its own storage (keys off; the workspace reaches it with
// its identity), a Key Vault in RBAC mode, a container registry for the pipeline's environment image,
// a CPU cluster that scales to 0 nodes, and an identity-based datastore on the customer's `datasets`.
param location string
param tags object
param workspaceName string
param storageAccountName string
param keyVaultName string
param containerRegistryName string
param applicationInsightsId string
param computeName string
param computeVmSize string
param computeMaxNodes int
param computeIdentityId string
param computePrincipalId string
param functionPrincipalId string
param datastoreName string
param datastoreAccountName string
param datastoreContainerName string
param userPrincipalId string = ''
param userPrincipalType string = 'User'

@description('Idle time before the cluster releases a node (ISO 8601).')
param computeIdleTimeBeforeScaleDown string = 'PT120S'

var azureMLDataScientist = 'f6c7c914-8db3-469d-8ca1-694a8f32e121'
var blobDataReader = '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'
var blobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
var acrPull = '7f951dda-4ed3-4680-a7ca-43fe172d538d'

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  //checkov:skip=CKV_AZURE_35:no virtual network in this deployment: Event Grid, Flex Consumption and the Azure ML cluster reach it over the public endpoint; access is Entra ID only (shared keys off) and RBAC-scoped
  //checkov:skip=CKV_AZURE_59:no virtual network in this deployment: Event Grid, Flex Consumption and the Azure ML cluster reach it over the public endpoint; access is Entra ID only (shared keys off) and RBAC-scoped
  //checkov:skip=CKV_AZURE_206:holds job snapshots and outputs that a rerun recreates; registered models are also tagged in the workspace; LRS keeps the idle cost low
  //checkov:skip=CKV_AZURE_43:the name is 'st' + 'ml' + a lowercase uniqueString (17 chars of [a-z0-9]); checkov reads the parameter's identifier, not its value
  name: storageAccountName
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }

  resource blobService 'blobServices' = {
    name: 'default'
    properties: {
      deleteRetentionPolicy: {
        enabled: true
        days: 7
      }
      containerDeleteRetentionPolicy: {
        enabled: true
        days: 7
      }
    }
  }
}

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  //checkov:skip=CKV_AZURE_109:no virtual network in this deployment; the vault is in RBAC mode and only the workspace's identity uses it
  //checkov:skip=CKV_AZURE_189:no virtual network in this deployment; the vault is in RBAC mode and only the workspace's identity uses it
  //checkov:skip=CKV_AZURE_110:the vault holds no secret of ours, and `azd down --purge` must be able to purge it so that the environment can be recreated under the same name
  //checkov:skip=CKV_AZURE_42:soft delete is on (7 days); purge protection is off for the reason given for CKV_AZURE_110
  name: keyVaultName
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 7
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

// Azure ML builds the pipeline's conda environment into an image and keeps it here; declared (Basic,
// no admin user) rather than left for the workspace to create on the first build, so that azd owns it
// and the cluster identity pulls from it with AcrPull instead of registry keys.
resource containerRegistry 'Microsoft.ContainerRegistry/registries@2023-07-01' = {
  //checkov:skip=CKV_AZURE_139:private networking needs the Premium tier and a virtual network; Basic keeps the idle cost at a few dollars a month and pulls need Entra ID (no admin user, no anonymous pull)
  //checkov:skip=CKV_AZURE_163:image scanning needs Defender for Containers (billed per image); the only image is Azure ML's build of ml/environment
  //checkov:skip=CKV_AZURE_166:quarantine needs the Premium tier; the only image is Azure ML's own build of ml/environment
  name: containerRegistryName
  location: location
  tags: tags
  sku: {
    name: 'Basic'
  }
  properties: {
    adminUserEnabled: false
    anonymousPullEnabled: false
    publicNetworkAccess: 'Enabled'
  }
}

// 2025-06-01: the first stable API version whose schema declares systemDatastoresAuthMode (2024-10-01 has
// no such property; the previews have it since 2022-12-01-preview, the enum since 2024-10-01-preview).
resource workspace 'Microsoft.MachineLearningServices/workspaces@2025-06-01' = {
  //checkov:skip=CKV_AZURE_243:a private endpoint needs a virtual network and private DNS zones, left out to keep the deployment small and cheap; access is Entra ID with RBAC on the workspace
  name: workspaceName
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  sku: {
    name: 'Basic'
    tier: 'Basic'
  }
  properties: {
    friendlyName: workspaceName
    description: 'autoretrain: retraining triggered by new data'
    storageAccount: storage.id
    keyVault: keyVault.id
    applicationInsights: applicationInsightsId
    containerRegistry: containerRegistry.id
    // The workspace's own datastores use its identity, as the storage account accepts no keys
    // (enum AccessKey | Identity | UserDelegationSAS; the postdeploy hook checks the result).
    systemDatastoresAuthMode: 'Identity'
    publicNetworkAccess: 'Enabled'
    v1LegacyMode: false
  }
}

resource compute 'Microsoft.MachineLearningServices/workspaces/computes@2024-10-01' = {
  parent: workspace
  name: computeName
  location: location
  tags: tags
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${computeIdentityId}': {}
    }
  }
  properties: {
    computeType: 'AmlCompute'
    description: 'Runs the autoretrain pipeline; 0 nodes when idle.'
    disableLocalAuth: true
    properties: {
      vmSize: computeVmSize
      vmPriority: 'Dedicated'
      osType: 'Linux'
      remoteLoginPortPublicAccess: 'Disabled'
      scaleSettings: {
        minNodeCount: 0
        maxNodeCount: computeMaxNodes
        nodeIdleTimeBeforeScaleDown: computeIdleTimeBeforeScaleDown
      }
    }
  }
}

// No credentials: jobs read `datasets` with the cluster's identity (Storage Blob Data Reader there).
resource datastore 'Microsoft.MachineLearningServices/workspaces/datastores@2024-10-01' = {
  parent: workspace
  name: datastoreName
  properties: {
    datastoreType: 'AzureBlob'
    description: 'Accepted customer files (the datasets container).'
    accountName: datastoreAccountName
    containerName: datastoreContainerName
    endpoint: environment().suffixes.storage
    protocol: 'https'
    credentials: {
      credentialsType: 'None'
    }
    serviceDataAccessAuthIdentity: 'None'
  }
}

// The function registers data and models and submits jobs.
resource functionDataScientist 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(workspace.id, functionPrincipalId, azureMLDataScientist)
  scope: workspace
  properties: {
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', azureMLDataScientist)
  }
}

// The function reads a job's outputs (metrics, prep's report, the model's MLmodel) where it bound them on the workspace store.
resource functionReadsWorkspaceStore 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, functionPrincipalId, blobDataReader)
  scope: storage
  properties: {
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', blobDataReader)
  }
}

// Jobs read their code snapshot and write their outputs (model, metrics, report) to the workspace store.
resource computeWritesWorkspaceStore 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, computePrincipalId, blobDataContributor)
  scope: storage
  properties: {
    principalId: computePrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', blobDataContributor)
  }
}

resource computePullsImages 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(containerRegistry.id, computePrincipalId, acrPull)
  scope: containerRegistry
  properties: {
    principalId: computePrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', acrPull)
  }
}

// The person running azd publishes the pipeline component (the hook uploads its code).
resource userDataScientist 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(userPrincipalId)) {
  name: guid(workspace.id, userPrincipalId, azureMLDataScientist)
  scope: workspace
  properties: {
    principalId: userPrincipalId
    principalType: userPrincipalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', azureMLDataScientist)
  }
}

resource userWritesWorkspaceStore 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(userPrincipalId)) {
  name: guid(storage.id, userPrincipalId, blobDataContributor)
  scope: storage
  properties: {
    principalId: userPrincipalId
    principalType: userPrincipalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', blobDataContributor)
  }
}

output workspaceId string = workspace.id
output workspaceName string = workspace.name
output computeName string = compute.name
output datastoreName string = datastore.name
