"""A toy package: real Python files for the ingest tests."""


def version_string(major, minor):
    """Format a version number as a dotted string."""
    parts = [str(major), str(minor)]
    return ".".join(parts)
