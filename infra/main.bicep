// xboot on Azure: Function App (Flex Consumption, Linux, Python 3.11) that signs device
// CSRs with an intermediate CA kept in Key Vault, plus its storage, Key Vault and monitoring.
//
//   az deployment group create -g <resource-group> -f infra/main.bicep -p infra/main.parameters.json
//
// Secure by default: no connection strings or keys in app settings (managed identity
// everywhere), storage shared keys off, Key Vault RBAC-only with purge protection,
// HTTPS only, TLS 1.2, no FTP or basic-auth publishing. See infra/README.md.

targetScope = 'resourceGroup'

// --- Parameters ----------------------------------------------------------------------

@description('Azure region for all resources; must offer the Flex Consumption plan (az functionapp list-flexconsumption-locations).')
param location string = resourceGroup().location

@description('Short name used in resource names (lowercase letters and digits).')
@minLength(3)
@maxLength(11)
param baseName string = 'xboot'

@description('Where the issuing CA certificate and key live (the app setting Location). KeyVault: certificate with exportable key (production default). KeyVaultKey: non-exportable key, signing happens in Key Vault. Blob: ia.cer / ia.key in the xboot-keys container. File, AppSettings: development only, supply CertificateFile / PrivateKeyFile through additionalAppSettings.')
@allowed([
  'KeyVault'
  'KeyVaultKey'
  'Blob'
  'File'
  'AppSettings'
])
param keyLocation string = 'KeyVault'

@description('Name of the CA certificate in Key Vault (Location KeyVault / KeyVaultKey).')
@minLength(1)
@maxLength(127)
param certificateName string = 'Intermediate'

@description('Validity of the device certificates xboot issues, in days.')
@minValue(1)
@maxValue(3650)
param certificateValidityDays int = 365

@description('Who may enroll (EnrollmentAuthorization): DeviceKey (DPS-derived keys), Token (one-time JWTs), Certificate (birth certificates). FunctionKey alone lets anyone holding the function key enroll any device: not offered here.')
@allowed([
  'DeviceKey'
  'Token'
  'Certificate'
  'DeviceKey,Certificate'
  'Token,Certificate'
  'DeviceKey,Token'
  'DeviceKey,Token,Certificate'
])
param enrollmentAuthorization string = 'DeviceKey,Certificate'

@description('Seconds the app keeps the loaded CA (and registration list) before reading them again.')
@minValue(0)
@maxValue(86400)
param signerCacheSeconds int = 300

@description('Key Vault SKU: premium for HSM-protected keys (Location KeyVaultKey with an RSA-HSM / EC-HSM key).')
@allowed([
  'standard'
  'premium'
])
param keyVaultSku string = 'standard'

@description('Storage replication (geo-redundant by default; Standard_LRS is enough for dev).')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
  'Standard_RAGRS'
  'Standard_RAGZRS'
])
param storageReplication string = 'Standard_GRS'

@description('Maximum Flex Consumption instances (caps cost if the endpoint is flooded).')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Memory per Flex Consumption instance.')
@allowed([
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Days Log Analytics keeps logs (Key Vault audit, blob access, telemetry).')
@minValue(30)
@maxValue(730)
param logRetentionInDays int = 90

@description('Optional object ID of the person, group or service principal that runs xboot: gets Key Vault Certificates Officer (import the CA) and Storage Blob Data Contributor (upload CA blobs, read the audit log). `az ad signed-in-user show --query id -o tsv` gives your own.')
param operatorPrincipalId string = ''

@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param operatorPrincipalType string = 'User'

@description('Extra app settings, e.g. { "RegistrationPolicy": "...", "AllowedRegistrationIds": "..." }, or CertificateFile / PrivateKeyFile for Location File / AppSettings. Do not repeat settings this template sets.')
param additionalAppSettings object = {}

@description('Tags applied to every resource.')
param tags object = {}

// --- Names ---------------------------------------------------------------------------

var token = uniqueString(subscription().id, resourceGroup().id, baseName)
var functionAppName = 'func-${baseName}-${token}'
var planName = 'plan-${baseName}-${token}'
var storageAccountName = take(toLower('st${replace(baseName, '-', '')}${token}'), 24)
var keyVaultName = take('kv-${baseName}-${token}', 24)
var logAnalyticsName = 'log-${baseName}-${token}'
var appInsightsName = 'appi-${baseName}-${token}'

var dataContainerName = 'xboot-data'
var keysContainerName = 'xboot-keys'
var deploymentContainerName = 'app-package'

// --- App settings that depend on keyLocation -----------------------------------------

var keyLocationSettings = {
  KeyVault: [
    {
      name: 'CertificateFile'
      value: certificateName
    }
  ]
  KeyVaultKey: [
    {
      name: 'CertificateFile'
      value: certificateName
    }
  ]
  Blob: [
    {
      name: 'CertificateFile'
      value: 'ia.cer'
    }
    {
      name: 'PrivateKeyFile'
      value: 'ia.key'
    }
  ]
  // Development only: the user supplies CertificateFile / PrivateKeyFile (paths for File,
  // PEM text for AppSettings) through additionalAppSettings.
  File: []
  AppSettings: []
}

var extraSettings = [for setting in items(additionalAppSettings): {
  name: setting.key
  value: string(setting.value)
}]

// --- Resources -----------------------------------------------------------------------

module monitoring 'modules/monitoring.bicep' = {
  name: 'xboot-monitoring'
  params: {
    location: location
    tags: tags
    logAnalyticsName: logAnalyticsName
    appInsightsName: appInsightsName
    retentionInDays: logRetentionInDays
  }
}

module storage 'modules/storage.bicep' = {
  name: 'xboot-storage'
  params: {
    location: location
    tags: tags
    name: storageAccountName
    replication: storageReplication
    containerNames: [
      dataContainerName
      keysContainerName
      deploymentContainerName
    ]
    logAnalyticsWorkspaceId: monitoring.outputs.workspaceId
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'xboot-keyvault'
  params: {
    location: location
    tags: tags
    name: keyVaultName
    vaultSku: keyVaultSku
    logAnalyticsWorkspaceId: monitoring.outputs.workspaceId
  }
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'xboot-functionapp'
  params: {
    location: location
    tags: tags
    name: functionAppName
    planName: planName
    storageAccountName: storage.outputs.name
    deploymentContainerName: deploymentContainerName
    appInsightsName: monitoring.outputs.appInsightsName
    pythonVersion: '3.11'
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    appSettings: concat([
      {
        name: 'Location'
        value: keyLocation
      }
      {
        name: 'KeyVaultUri'
        value: keyVault.outputs.uri
      }
      {
        name: 'BlobAccountUrl'
        value: storage.outputs.blobEndpoint
      }
      {
        name: 'BlobContainerName'
        value: keysContainerName
      }
      {
        name: 'DataStore'
        value: 'Blob'
      }
      {
        name: 'DataBlobAccountUrl'
        value: storage.outputs.blobEndpoint
      }
      {
        name: 'DataBlobContainer'
        value: dataContainerName
      }
      {
        name: 'SignerCacheSeconds'
        value: string(signerCacheSeconds)
      }
      {
        name: 'CertificateValidityDays'
        value: string(certificateValidityDays)
      }
      {
        name: 'EnrollmentAuthorization'
        value: enrollmentAuthorization
      }
    ], keyLocationSettings[keyLocation], extraSettings)
  }
}

module roles 'modules/roles.bicep' = {
  name: 'xboot-roles'
  params: {
    appPrincipalId: functionApp.outputs.principalId
    keyLocation: keyLocation
    storageAccountName: storage.outputs.name
    keyVaultName: keyVault.outputs.name
    appInsightsName: monitoring.outputs.appInsightsName
    operatorPrincipalId: operatorPrincipalId
    operatorPrincipalType: operatorPrincipalType
  }
}

// --- Outputs -------------------------------------------------------------------------

output functionAppName string = functionApp.outputs.name
output functionAppHostName string = functionApp.outputs.defaultHostName
output certificateUrl string = 'https://${functionApp.outputs.defaultHostName}/api/certificate'
output keyVaultName string = keyVault.outputs.name
output keyVaultUri string = keyVault.outputs.uri
output storageAccountName string = storage.outputs.name
output appInsightsName string = monitoring.outputs.appInsightsName
output keyLocation string = keyLocation
