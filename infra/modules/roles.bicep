// Role assignments: what the Function App's system-assigned identity (and, optionally,
// a human operator) may do. Built-in role IDs are the same in every Azure tenant; each
// was checked against the Azure built-in roles reference.
//
// Key Vault roles depend on keyLocation, so the identity holds only what the selected
// Location reads: changing keyLocation redeploys both the `Location` app setting and
// these assignments, so they cannot drift apart.

@description('Object (principal) ID of the Function App system-assigned identity.')
param appPrincipalId string

@description('Where the CA key lives; selects the Key Vault roles.')
@allowed([
  'KeyVault'
  'KeyVaultKey'
  'Blob'
  'File'
  'AppSettings'
])
param keyLocation string

param storageAccountName string
param keyVaultName string
param appInsightsName string

@description('Optional: object ID of a user, group or service principal that administers xboot (imports the CA into Key Vault, uploads CA blobs, reads the audit log). Empty: no operator role assignments.')
param operatorPrincipalId string = ''

@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param operatorPrincipalType string = 'User'

// Built-in role definition IDs.
var keyVaultCertificateUserRoleId = 'db79e9a7-68ee-4b58-9aeb-b90e7c24fcba'
var keyVaultSecretsUserRoleId = '4633458b-17de-408a-b874-0445c86b69e6'
var keyVaultCryptoUserRoleId = '12338af0-0e69-4776-bea7-57ae8d297424'
var keyVaultCertificatesOfficerRoleId = 'a4417e6f-fecd-4de8-b567-7b0420556985'
var storageBlobDataContributorRoleId = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
var storageTableDataContributorRoleId = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
var monitoringMetricsPublisherRoleId = '3913510d-42f4-4e42-8a64-420c390055eb'

var usesKeyVault = contains([
  'KeyVault'
  'KeyVaultKey'
], keyLocation)
var hasOperator = !empty(operatorPrincipalId)

resource storageAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

// --- Function App identity -------------------------------------------------------

// Blobs: host storage (keys, locks), the deployment package, xboot-data (audit log,
// trust anchors, reports) and xboot-keys (CA files for Location Blob).
resource appBlobData 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storageAccount.id, appPrincipalId, storageBlobDataContributorRoleId)
  scope: storageAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributorRoleId)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    description: 'xboot Function App: host storage, deployment package, xboot-data and xboot-keys blobs'
  }
}

// Tables: the Functions host writes diagnostic events (for example start-up failures)
// to AzureWebJobsStorage tables. xboot keeps no table data.
resource appTableData 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storageAccount.id, appPrincipalId, storageTableDataContributorRoleId)
  scope: storageAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageTableDataContributorRoleId)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    description: 'xboot Function App: Functions host diagnostic events'
  }
}

// Telemetry with Entra ID auth (Application Insights has local auth disabled).
resource appTelemetry 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, appPrincipalId, monitoringMetricsPublisherRoleId)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisherRoleId)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    description: 'xboot Function App: send telemetry to Application Insights'
  }
}

// KeyVault and KeyVaultKey: read the CA certificate (public part and chain). This built-in
// role also reads secret values, which is why the vault should hold only xboot's CA.
resource appCertificateUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (usesKeyVault) {
  name: guid(vault.id, appPrincipalId, keyVaultCertificateUserRoleId)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultCertificateUserRoleId)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    description: 'xboot Function App: read the CA certificate'
  }
}

// KeyVault: the exportable CA key is read through the certificate's backing secret.
// (Certificate User covers getSecret too; this states the need explicitly.)
resource appSecretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (keyLocation == 'KeyVault') {
  name: guid(vault.id, appPrincipalId, keyVaultSecretsUserRoleId)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUserRoleId)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    description: 'xboot Function App: read the exportable CA key (Location KeyVault)'
  }
}

// KeyVaultKey: the key never leaves Key Vault; the app asks Key Vault to sign.
resource appCryptoUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (keyLocation == 'KeyVaultKey') {
  name: guid(vault.id, appPrincipalId, keyVaultCryptoUserRoleId)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultCryptoUserRoleId)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    description: 'xboot Function App: sign with the non-exportable CA key (Location KeyVaultKey)'
  }
}

// --- Optional operator -------------------------------------------------------------

// Import or create the CA certificate in the RBAC vault.
resource operatorCertificatesOfficer 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (hasOperator) {
  name: guid(vault.id, operatorPrincipalId, keyVaultCertificatesOfficerRoleId)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultCertificatesOfficerRoleId)
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
    description: 'xboot operator: import or create the CA certificate'
  }
}

// Upload ia.cer / ia.key for Location Blob and read the audit log (shared keys are off,
// so `az storage blob ... --auth-mode login` needs a data role).
resource operatorBlobData 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (hasOperator) {
  name: guid(storageAccount.id, operatorPrincipalId, storageBlobDataContributorRoleId)
  scope: storageAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributorRoleId)
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
    description: 'xboot operator: upload CA blobs, read xboot-data'
  }
}
