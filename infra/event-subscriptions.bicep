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
          ]
        }
      ]
    }
    retryPolicy: retryPolicy
    deadLetterWithResourceIdentity: deadLetter
  }
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
      // Failed and canceled runs raise only RunStatusChanged, so both types are needed.
      includedEventTypes: [
        'Microsoft.MachineLearningServices.RunCompleted'
        'Microsoft.MachineLearningServices.RunStatusChanged'
      ]
      // Our pipeline runs only: step runs and other experiments' runs are not delivered (and the
      // function checks again).
      advancedFilters: [
        {
          operatorType: 'IsNotNull'
          key: 'data.runTags.${runTagKey}'
        }
        {
          operatorType: 'StringIn'
          key: 'data.runType'
          values: [
            'azureml.PipelineRun'
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
