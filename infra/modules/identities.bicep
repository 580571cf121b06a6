// User-assigned identities, created first so that every role they need exists before the function app
// starts or the training cluster runs its first job.
param location string
param tags object
param functionIdentityName string
param computeIdentityName string

resource functionIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: functionIdentityName
  location: location
  tags: tags
}

resource computeIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: computeIdentityName
  location: location
  tags: tags
}

output functionIdentityId string = functionIdentity.id
output functionClientId string = functionIdentity.properties.clientId
output functionPrincipalId string = functionIdentity.properties.principalId
output computeIdentityId string = computeIdentity.id
output computePrincipalId string = computeIdentity.properties.principalId
