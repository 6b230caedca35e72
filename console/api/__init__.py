"""The console's REST API (served under ``/api``, described at ``/openapi.json``): one module per page."""
