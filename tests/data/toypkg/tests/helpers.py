"""Files under a tests/ directory are skipped by path."""


def make_polygon(n):
    """Build a regular polygon with n vertices."""
    vertices = [(i, i * i) for i in range(n)]
    return vertices
