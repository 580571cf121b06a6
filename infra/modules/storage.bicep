// The customer's storage account: files land in `incoming`, bad ones are copied to `quarantine`, accepted
// ones are read by Azure ML from `datasets`, undeliverable events go to `deadletter`; the ledger table
// records each blob version's progress. Keys are off: every caller uses Entra ID.
param location string
param tags object
param name string
param containerNames array
param tableName string

@minValue(1)
param softDeleteDays int = 7

@allowed(['Standard_LRS', 'Standard_ZRS', 'Standard_GRS', 'Standard_GZRS'])
@description('Replication of the customer account.')
param skuName string = 'Standard_LRS'

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  //checkov:skip=CKV_AZURE_35:no virtual network in this deployment: Event Grid, Flex Consumption and the Azure ML cluster reach it over the public endpoint; access is Entra ID only (shared keys off) and RBAC-scoped
  //checkov:skip=CKV_AZURE_59:no virtual network in this deployment: Event Grid, Flex Consumption and the Azure ML cluster reach it over the public endpoint; access is Entra ID only (shared keys off) and RBAC-scoped
  //checkov:skip=CKV_AZURE_206:replication is the skuName parameter (Standard_LRS keeps the idle cost low; choose Standard_ZRS or Standard_GRS for production data)
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
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
      // Event Grid, the function app and Azure ML compute reach the account over its public endpoint.
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: softDeleteDays
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: softDeleteDays
    }
  }
}

resource containers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [
  for containerName in containerNames: {
    parent: blobService
    name: containerName
    properties: {
      publicAccess: 'None'
    }
  }
]

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource ledger 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = {
  parent: tableService
  name: tableName
}

output id string = account.id
output name string = account.name
output blobEndpoint string = account.properties.primaryEndpoints.blob
output tableEndpoint string = account.properties.primaryEndpoints.table
