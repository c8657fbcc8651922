"""xboot: X.509 bootstrap for IoT devices, and signed-report ingestion, on Azure Functions."""

__version__ = "0.1.0"
