// Second pass, deployed by the postdeploy hook once `azd deploy` has published the functions: Event Grid
// checks an AzureFunction endpoint when the subscription is created, so `ingest` and `completion` must
// exist by then. The topics, the dead-letter container and the topics' roles on it come from main.bicep.
targetScope = 'resourceGroup'

param functionAppName string
param storageTopicName string
param workspaceTopicName string
@description('Resource id of the customer storage account that holds the dead-letter container.')
param deadLetterAccountId string
param deadLetterContainerName string = 'deadletter'
param incomingContainerName string = 'incoming'

@description('Run tag that marks our pipeline runs; dot-free, as Event Grid filter keys must be.')
param runTagKey string = 'autoretrain'

@minValue(1)
@maxValue(30)
param maxDeliveryAttempts int = 30

@minValue(1)
@maxValue(1440)
param eventTimeToLiveInMinutes int = 1440

resource functionApp 'Microsoft.Web/sites@2024-04-01' existing = {
  name: functionAppName
}

resource storageTopic 'Microsoft.EventGrid/systemTopics@2025-02-15' existing = {
  name: storageTopicName
}

resource workspaceTopic 'Microsoft.EventGrid/systemTopics@2025-02-15' existing = {
  name: workspaceTopicName
}

var retryPolicy = {
  maxDeliveryAttempts: maxDeliveryAttempts
  eventTimeToLiveInMinutes: eventTimeToLiveInMinutes
}

// Written with the topic's own identity (Storage Blob Data Contributor on the container only).
var deadLetter = {
  identity: {
    type: 'SystemAssigned'
  }
  deadLetterDestination: {
    endpointType: 'StorageBlob'
    properties: {
      resourceId: deadLetterAccountId
      blobContainerName: deadLetterContainerName
    }
  }
}

resource ingestSubscription 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2025-02-15' = {
  parent: storageTopic
  name: 'ingest'
  properties: {
    destination: {
      endpointType: 'AzureFunction'
      properties: {
        resourceId: '${functionApp.id}/functions/ingest'
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
      }
    }
    eventDeliverySchema: 'EventGridSchema'
    filter: {
      includedEventTypes: [
        'Microsoft.Storage.BlobCreated'
      ]
      subjectBeginsWith: '/blobServices/default/containers/${incomingContainerName}/'
      isSubjectCaseSensitive: false
      // Only writes that leave a fully committed blob; the function checks `data.api` again.
      advancedFilters: [
        {
          operatorType: 'StringIn'
          key: 'data.api'
          values: [
            'PutBlob'
            'PutBlockList'
            'FlushWithClose'
            'CopyBlob'
            'SftpCommit'
          ]
        }
      ]
    }
    retryPolicy: retryPolicy
    deadLetterWithResourceIdentity: deadLetter
  }
}

// Our pipeline jobs are those with our run tag; the function checks the tag again and that the run
// is the job the tag names. runType is not filtered on: Microsoft does not document the value v2
// pipeline jobs send (the docs' sample has null).
var ourRuns = {
  operatorType: 'IsNotNull'
  key: 'data.runTags.${runTagKey}'
}

resource completionSubscription 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2025-02-15' = {
  parent: workspaceTopic
  name: 'completion'
  properties: {
    destination: {
      endpointType: 'AzureFunction'
      properties: {
        resourceId: '${functionApp.id}/functions/completion'
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
      }
    }
    eventDeliverySchema: 'EventGridSchema'
    filter: {
      includedEventTypes: [
        'Microsoft.MachineLearningServices.RunCompleted'
      ]
      advancedFilters: [
        ourRuns
      ]
    }
    retryPolicy: retryPolicy
    deadLetterWithResourceIdentity: deadLetter
  }
}

// Failed and canceled runs raise no RunCompleted, only RunStatusChanged; the other statuses are
// not delivered (a successful run's RunCompleted is enough).
resource completionFailedSubscription 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2025-02-15' = {
  parent: workspaceTopic
  name: 'completion-failed'
  properties: {
    destination: {
      endpointType: 'AzureFunction'
      properties: {
        resourceId: '${functionApp.id}/functions/completion'
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
      }
    }
    eventDeliverySchema: 'EventGridSchema'
    filter: {
      includedEventTypes: [
        'Microsoft.MachineLearningServices.RunStatusChanged'
      ]
      advancedFilters: [
        ourRuns
        {
          operatorType: 'StringIn'
          key: 'data.runStatus'
          values: [
            'Failed'
            'Canceled'
          ]
        }
      ]
    }
    retryPolicy: retryPolicy
    deadLetterWithResourceIdentity: deadLetter
  }
}

output ingestSubscriptionId string = ingestSubscription.id
output completionSubscriptionId string = completionSubscription.id
output completionFailedSubscriptionId string = completionFailedSubscription.id
