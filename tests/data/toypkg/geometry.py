"""Small geometry helpers."""

import math


def distance(a, b):
    """Return the Euclidean distance between two points.

    Both points are (x, y) tuples; this second paragraph is not part of the query.
    """

    dx = a[0] - b[0]
    dy = a[1] - b[1]
    return math.hypot(dx, dy)


def midpoint(a, b):
    """Compute the point halfway between two points."""
    x = (a[0] + b[0]) / 2
    y = (a[1] + b[1]) / 2
    return (x, y)


def area_of_circle(radius):
    # No docstring: this function goes to the corpus only.
    if radius < 0:
        raise ValueError("negative radius")
    return math.pi * radius**2


def identity(x):
    """Too short to be kept as a function."""
    return x


def latest_point(points):
    """Pick the point that was added most recently."""
    if not points:
        return None
    return points[-1]


class Polygon:
    """A closed polygon given by its vertices."""

    def __init__(self, vertices):
        self.vertices = list(vertices)
        self.closed = True

    def __len__(self):
        count = len(self.vertices)
        return count

    def perimeter(self):
        """Sum the lengths of all edges of the polygon."""
        total = 0.0
        for i, vertex in enumerate(self.vertices):
            total += distance(vertex, self.vertices[i - 1])
        return total

    @property
    def bounding_box(self):
        """The smallest axis-aligned box around the polygon."""
        xs = [v[0] for v in self.vertices]
        ys = [v[1] for v in self.vertices]
        return (min(xs), min(ys), max(xs), max(ys))

    async def fetch_vertices(self, source):
        """Load the vertices asynchronously from a source."""
        data = await source.read()
        self.vertices = [tuple(p) for p in data]
        return self.vertices

    def test_invariants(self):
        """Check that the polygon has at least three vertices."""
        assert len(self.vertices) >= 3
        return True

    def is_valid(self):
        """Valid?"""
        count = len(self.vertices)
        return count >= 3

    def interface_only(self):
        """A stub whose body is only this docstring."""


def outer():
    """A function with a nested function inside it."""

    def inner_helper(value):
        """Nested functions are not extracted."""
        doubled = value * 2
        return doubled

    return inner_helper(21)
