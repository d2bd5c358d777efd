"""The JSON management API (/api/v1)."""
