// The function app on Flex Consumption (Python 3.11): its own storage for the host and the deployment
// package, reached with the user-assigned identity; no key or connection string in its settings.
param location string
param tags object

@description('The azure.yaml service deployed to this app. azd finds the app by this tag, so only the site carries it: azd before 1.23.4 stops `azd deploy` when more than one resource has it.')
param azdServiceName string

param name string
param planName string
param deploymentStorageAccountName string
param identityId string
param identityClientId string
param identityPrincipalId string
param applicationInsightsName string

@description('The app\'s own settings (AUTORETRAIN_*); the platform settings are added here.')
param appSettings object

@allowed([512, 2048, 4096])
param instanceMemoryMB int = 2048

@minValue(1)
param maximumInstanceCount int = 40

var blobDataOwner = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
var deploymentContainerName = 'app-package-${take(name, 32)}'

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource deploymentStorage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  //checkov:skip=CKV_AZURE_35:no virtual network in this deployment: Event Grid, Flex Consumption and the Azure ML cluster reach it over the public endpoint; access is Entra ID only (shared keys off) and RBAC-scoped
  //checkov:skip=CKV_AZURE_59:no virtual network in this deployment: Event Grid, Flex Consumption and the Azure ML cluster reach it over the public endpoint; access is Entra ID only (shared keys off) and RBAC-scoped
  //checkov:skip=CKV_AZURE_206:holds only the deployment package and host leases, rebuilt by the next azd deploy; LRS is enough
  //checkov:skip=CKV_AZURE_43:the name is 'st' + 'fn' + a lowercase uniqueString (17 chars of [a-z0-9]); checkov reads the parameter's identifier, not its value
  name: deploymentStorageAccountName
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

    resource deploymentContainer 'containers' = {
      name: deploymentContainerName
      properties: {
        publicAccess: 'None'
      }
    }
  }
}

// The host keeps its leases and timer state here and reads the deployment package (as the samples do).
resource hostStorageOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(deploymentStorage.id, identityPrincipalId, blobDataOwner)
  scope: deploymentStorage
  properties: {
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', blobDataOwner)
  }
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  //checkov:skip=CKV_AZURE_225:zone redundancy on Flex Consumption needs always-ready instances, which would end scale to zero; the work survives an outage through Event Grid retries and reconcile
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

var platformSettings = {
  AzureWebJobsStorage__accountName: deploymentStorage.name
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  // The connection string names the Application Insights resource and its ingestion endpoint; it carries
  // no secret, and with local auth disabled ingestion also needs the Entra token below.
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsights.properties.ConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  // host.json sets "telemetryMode": "OpenTelemetry"; with this the Python worker configures the Azure Monitor
  // OpenTelemetry distro itself (reading the two settings above: Entra auth as the user-assigned identity),
  // streams the app's logs and spans directly, and the host stops forwarding them (no duplicates).
  PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: 'true'
  // DefaultAzureCredential picks the user-assigned identity by this client id.
  AZURE_CLIENT_ID: identityClientId
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  //checkov:skip=CKV_AZURE_222:Event Grid delivers to the functions over the public endpoint (no virtual network here); the app has no HTTP-triggered functions
  //checkov:skip=CKV_AZURE_17:Event Grid does not present client certificates; the app has no HTTP-triggered functions
  //checkov:skip=CKV_AZURE_212:scale to zero is the point of Flex Consumption here; Event Grid retries while an instance starts
  //checkov:skip=CKV_AZURE_213:no HTTP endpoint to probe; the app only has Event Grid and timer triggers
  name: name
  location: location
  tags: union(tags, { 'azd-service-name': azdServiceName })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${deploymentStorage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }

  dependsOn: [
    hostStorageOwner
  ]
}

resource appSettingsConfig 'Microsoft.Web/sites/config@2024-04-01' = {
  //checkov:skip=CKV_AZURE_13:this resource holds the app settings only; checkov applies its web-app checks to every Microsoft.Web/sites/config resource, and the site itself (functionApp) is checked
  //checkov:skip=CKV_AZURE_63:this resource holds the app settings only; checkov applies its web-app checks to every Microsoft.Web/sites/config resource, and the site itself (functionApp) is checked
  //checkov:skip=CKV_AZURE_65:this resource holds the app settings only; checkov applies its web-app checks to every Microsoft.Web/sites/config resource, and the site itself (functionApp) is checked
  //checkov:skip=CKV_AZURE_66:this resource holds the app settings only; checkov applies its web-app checks to every Microsoft.Web/sites/config resource, and the site itself (functionApp) is checked
  //checkov:skip=CKV_AZURE_80:this resource holds the app settings only; checkov applies its web-app checks to every Microsoft.Web/sites/config resource, and the site itself (functionApp) is checked (no .NET here: Python 3.11)
  //checkov:skip=CKV_AZURE_88:this resource holds the app settings only; checkov applies its web-app checks to every Microsoft.Web/sites/config resource, and the site itself (functionApp) is checked (Flex Consumption has no Azure Files content share)
  //checkov:skip=CKV_AZURE_222:this resource holds the app settings only; checkov applies its web-app checks to every Microsoft.Web/sites/config resource, and the site itself (functionApp) is checked
  parent: functionApp
  name: 'appsettings'
  properties: union(appSettings, platformSettings)
}

// Deployments go through Entra ID (azd uses the deployment container), never basic-auth credentials.
resource ftpCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'scm'
  properties: {
    allow: false
  }
}

output id string = functionApp.id
output name string = functionApp.name
output defaultHostName string = functionApp.properties.defaultHostName
