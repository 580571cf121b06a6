// The two Event Grid system topics; their subscriptions are deployed after the code
// (../event-subscriptions.bicep). Each topic has its own identity to write dead letters with.
param location string
param tags object
param storageTopicName string
param storageAccountId string
param workspaceTopicName string
param workspaceId string

resource storageTopic 'Microsoft.EventGrid/systemTopics@2025-02-15' = {
  name: storageTopicName
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    source: storageAccountId
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

resource workspaceTopic 'Microsoft.EventGrid/systemTopics@2025-02-15' = {
  name: workspaceTopicName
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    source: workspaceId
    topicType: 'Microsoft.MachineLearningServices.Workspaces'
  }
}

output storageTopicName string = storageTopic.name
output storageTopicPrincipalId string = storageTopic.identity.principalId
output workspaceTopicName string = workspaceTopic.name
output workspaceTopicPrincipalId string = workspaceTopic.identity.principalId
