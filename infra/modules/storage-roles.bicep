// Data-plane roles on the customer account, each scoped to the one container or table that needs it.
param storageAccountName string
param incomingContainerName string
param quarantineContainerName string
param datasetsContainerName string
param deadLetterContainerName string
param ledgerTableName string
param functionPrincipalId string
param computePrincipalId string
@description('Identities of the Event Grid system topics that write dead letters.')
param topicPrincipalIds array
param userPrincipalId string = ''
param userPrincipalType string = 'User'

var blobDataReader = '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'
var blobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
var tableDataContributor = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: account
  name: 'default'
}

resource incoming 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobService
  name: incomingContainerName
}

resource quarantine 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobService
  name: quarantineContainerName
}

resource datasets 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobService
  name: datasetsContainerName
}

resource deadLetter 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobService
  name: deadLetterContainerName
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' existing = {
  parent: account
  name: 'default'
}

resource ledger 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' existing = {
  parent: tableService
  name: ledgerTableName
}

// The function reads what customers drop and never changes it.
resource functionReadsIncoming 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(incoming.id, functionPrincipalId, blobDataReader)
  scope: incoming
  properties: {
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', blobDataReader)
  }
}

resource functionWritesQuarantine 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(quarantine.id, functionPrincipalId, blobDataContributor)
  scope: quarantine
  properties: {
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', blobDataContributor)
  }
}

resource functionWritesDatasets 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(datasets.id, functionPrincipalId, blobDataContributor)
  scope: datasets
  properties: {
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', blobDataContributor)
  }
}

resource functionWritesLedger 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(ledger.id, functionPrincipalId, tableDataContributor)
  scope: ledger
  properties: {
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', tableDataContributor)
  }
}

// Training jobs read the accepted data through the identity-based datastore.
resource computeReadsDatasets 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(datasets.id, computePrincipalId, blobDataReader)
  scope: datasets
  properties: {
    principalId: computePrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', blobDataReader)
  }
}

resource topicsWriteDeadLetters 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for principalId in topicPrincipalIds: {
    name: guid(deadLetter.id, principalId, blobDataContributor)
    scope: deadLetter
    properties: {
      principalId: principalId
      principalType: 'ServicePrincipal'
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', blobDataContributor)
    }
  }
]

// The person running azd may drop files into `incoming` to try the loop.
resource userWritesIncoming 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(userPrincipalId)) {
  name: guid(incoming.id, userPrincipalId, blobDataContributor)
  scope: incoming
  properties: {
    principalId: userPrincipalId
    principalType: userPrincipalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', blobDataContributor)
  }
}
