"""Exporting stored instances: zip archives with a DICOMDIR (PS3.10 File-sets)."""
