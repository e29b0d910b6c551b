"""Squares."""


@staticmethod
def square_area(side):
    """Compute the area of a square from its side."""
    if side < 0:
        raise ValueError("negative side")
    return side * side
