// Function App on the Flex Consumption plan (FC1, Linux), Python, system-assigned identity.
//
// Flex Consumption notes (why some familiar settings are absent):
// - The runtime is set in functionAppConfig.runtime; FUNCTIONS_WORKER_RUNTIME,
//   FUNCTIONS_EXTENSION_VERSION, linuxFxVersion and WEBSITE_RUN_FROM_PACKAGE are not used.
// - siteConfig.ftpsState is rejected on Flex Consumption sites (ARM error 51021,
//   "site configuration property (Site.SiteConfig.FtpsState) for Flex Consumption sites is
//   invalid") and Flex has no FTP deployment; FTP is shut with the basic publishing
//   credentials policies below instead.
// - Code is deployed as a package into a blob container, read with the app's own identity.

@description('Azure region.')
param location string

@description('Tags applied to every resource.')
param tags object = {}

@description('Function App name (globally unique host name <name>.azurewebsites.net).')
param name string

@description('Flex Consumption plan name.')
param planName string

@description('Storage account used for AzureWebJobsStorage and the deployment package.')
param storageAccountName string

@description('Blob container holding the deployment package.')
param deploymentContainerName string

@description('Application Insights component the app reports to.')
param appInsightsName string

@description('Python version (Flex Consumption supports 3.10 to 3.12 at the time of writing).')
@allowed([
  '3.10'
  '3.11'
  '3.12'
])
param pythonVersion string = '3.11'

@description('Upper bound on scale-out instances: caps cost if the endpoint is flooded.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Memory per instance.')
@allowed([
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('xboot app settings as [{ name, value }] (Location, KeyVaultUri, ...); appended to the platform settings set here.')
param appSettings array

resource hostStorage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  //checkov:skip=CKV_AZURE_225:Zone redundancy for Flex Consumption is available only in some regions; enable it (zoneRedundant) where the region supports it.
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

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    // Accepted checkov findings; reasons also listed in infra/README.md ("Checkov skips").
    //checkov:skip=CKV_AZURE_222:Devices enrol over the public internet: public network access is the service (callers need a function key).
    //checkov:skip=CKV_AZURE_78:FTP is off: basic publishing credentials (ftp, scm) are disabled below and Flex Consumption has no FTP deployment; siteConfig.ftpsState itself is rejected on Flex Consumption sites (ARM 51021).
    //checkov:skip=CKV_AZURE_17:Client certificates cannot be required: devices call this endpoint to obtain their first certificate.
    //checkov:skip=CKV_AZURE_212:Serverless scale-to-zero by design; the platform replaces failed instances. Set functionAppConfig.scaleAndConcurrency.alwaysReady to keep warm instances.
    serverFarmId: plan.id
    httpsOnly: true
    publicNetworkAccess: 'Enabled'
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      http20Enabled: true
      // GET /api/health: 200 while the CA, the data store and enrollment authorization work, else 503.
      healthCheckPath: '/api/health'
      // Identity-based host storage and telemetry: no account key, no instrumentation-key auth.
      appSettings: concat([
        {
          name: 'AzureWebJobsStorage__accountName'
          value: hostStorage.name
        }
        {
          name: 'AzureWebJobsStorage__credential'
          value: 'managedidentity'
        }
        {
          name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
          value: appInsights.properties.ConnectionString
        }
        {
          name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
          value: 'Authorization=AAD'
        }
      ], appSettings)
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${hostStorage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'SystemAssignedIdentity'
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: pythonVersion
      }
    }
  }
}

// No FTP and no basic-auth (publishing profile) deployments: deploy with Entra ID
// (`func azure functionapp publish`, `az functionapp deploy`).
resource ftpPolicy 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmPolicy 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'scm'
  properties: {
    allow: false
  }
}

output name string = functionApp.name
output id string = functionApp.id
output defaultHostName string = functionApp.properties.defaultHostName
output principalId string = functionApp.identity.principalId
