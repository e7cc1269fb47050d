"""The policy API (pydantic models, the source of the CRD schemas) and the pure decisions."""
