"""Extraction in every supported language, on one small real-looking file per language.

Each file holds a documented function, a method with its class (receiver, impl), an undocumented
function, a test function and a function too short to keep.
"""

from __future__ import annotations

import pytest

from semcode.data import extract, languages

# language -> (file name, source, documented function, its query, method, its query, rejects)
FIXTURES: dict[str, tuple[str, str, str, str, str, str, dict[str, int]]] = {
    "python": (
        "geo.py",
        '''def distance(a, b):
    """Return the Euclidean distance between two points.

    Both points are (x, y) tuples.
    """
    dx = a[0] - b[0]
    dy = a[1] - b[1]
    return (dx * dx + dy * dy) ** 0.5


class Polygon:
    def perimeter(self, scale):
        """Return the perimeter of the polygon in meters.
        :param scale: the map scale
        """
        total = sum(self.sides)
        return total * scale


def undocumented(x):
    y = x + 1
    return y


def test_distance():
    """Check the distance of two equal points."""
    assert distance((0, 0), (0, 0)) == 0
    assert distance((1, 0), (0, 0)) == 1


def short():
    """Too short to keep as a function."""
    return 1
''',
        "distance",
        "Return the Euclidean distance between two points.",
        "Polygon.perimeter",
        "Return the perimeter of the polygon in meters.",
        {"test_name": 1, "too_short": 1},
    ),
    "go": (
        "geo.go",
        """// Package geo has geometry helpers.
package geo

import "math"

// Distance returns the Euclidean distance between two points.
//
// It is symmetric.
func Distance(a, b Point) float64 {
	dx := a.X - b.X
	dy := a.Y - b.Y
	return math.Hypot(dx, dy)
}

// Scale multiplies both coordinates of the point by a factor.
//go:noinline
func (p *Point) Scale(factor float64) {
	p.X *= factor
	p.Y *= factor
}

func undocumented(x int) int {
	y := x + 1
	return y
}

// TestDistance checks the distance of two equal points.
func TestDistance(t *testing.T) {
	if Distance(Point{}, Point{}) != 0 {
		t.Fail()
	}
}

// Short is too short to keep as a function.
func Short() int { return 1 }
""",
        "Distance",
        "Distance returns the Euclidean distance between two points.",
        "Point.Scale",
        "Scale multiplies both coordinates of the point by a factor.",
        {"test_name": 1, "too_short": 1},
    ),
    "java": (
        "Polygon.java",
        """package geo;

/** A polygon with straight sides. */
public class Polygon {
    /**
     * Returns the distance between two {@link Point points}.
     *
     * @param a the first point
     * @return the distance
     */
    public static double distance(Point a, Point b) {
        double dx = a.x - b.x;
        return Math.abs(dx);
    }

    /**
     * Returns the perimeter of the polygon in meters.
     * @param scale the map scale
     * @throws IllegalStateException when empty
     */
    @Override
    public double perimeter(double scale) {
        double total = 0;
        return total * scale;
    }

    public int undocumented(int x) {
        int y = x + 1;
        return y;
    }

    /** Checks the perimeter of a square polygon. */
    @Test
    public void checksPerimeter() {
        assertEquals(4.0, square().perimeter(1), 0.0);
        return;
    }

    /** Short method returning one. */
    int one() { return 1; }
}
""",
        "Polygon.distance",
        "Returns the distance between two Point points.",
        "Polygon.perimeter",
        "Returns the perimeter of the polygon in meters.",
        {"test_name": 1, "too_short": 1},
    ),
    "javascript": (
        "geo.js",
        """/**
 * Returns the Euclidean distance between two points.
 * @param {Point} a the first point
 */
export function distance(a, b) {
  const dx = a.x - b.x;
  const dy = a.y - b.y;
  return Math.hypot(dx, dy);
}

class Polygon {
  /** Computes the perimeter of the polygon in meters. */
  perimeter(scale) {
    let total = 0;
    return total * scale;
  }
}

const undocumented = (x) => {
  const y = x + 1;
  return y;
};

/** Checks the distance of two equal points. */
function testDistance() {
  assert(distance(p, p) === 0);
  return true;
}

/** Too short to keep as a function. */
function short() { return 1; }
""",
        "distance",
        "Returns the Euclidean distance between two points.",
        "Polygon.perimeter",
        "Computes the perimeter of the polygon in meters.",
        {"test_name": 1, "too_short": 1},
    ),
    "typescript": (
        "geo.ts",
        """/**
 * Returns the Euclidean distance between two points.
 * @param a - the first point
 */
export function distance(a: Point, b: Point): number {
  const dx = a.x - b.x;
  const dy = a.y - b.y;
  return Math.hypot(dx, dy);
}

export class Polygon {
  /** Computes the perimeter of the polygon in meters. */
  @memoize()
  perimeter(scale: number): number {
    let total = 0;
    return total * scale;
  }
}

function undocumented(x: number): number {
  const y = x + 1;
  return y;
}

/** Checks the distance of two equal points. */
function testDistance(): boolean {
  assert(distance(p, p) === 0);
  return true;
}

/** Too short to keep as a function. */
function short(): number { return 1; }
""",
        "distance",
        "Returns the Euclidean distance between two points.",
        "Polygon.perimeter",
        "Computes the perimeter of the polygon in meters.",
        {"test_name": 1, "too_short": 1},
    ),
    "ruby": (
        "geo.rb",
        """module Geo
  # Returns the Euclidean distance between two points.
  #
  # @param a [Point] the first point
  def self.distance(a, b)
    dx = a.x - b.x
    Math.sqrt(dx * dx)
  end

  class Polygon
    # Returns the perimeter of the polygon
    # in meters.
    # @param scale [Float] the map scale
    def perimeter(scale)
      total = 0
      total * scale
    end

    def undocumented(x)
      y = x + 1
      y
    end

    # Checks the perimeter of a square polygon.
    def test_perimeter
      assert_equal 4, square.perimeter(1)
    end

    # Too short to keep as a method.
    def short; 1; end
  end
end
""",
        "Geo.distance",
        "Returns the Euclidean distance between two points.",
        "Polygon.perimeter",
        "Returns the perimeter of the polygon in meters.",
        {"test_name": 1, "too_short": 1},
    ),
    "php": (
        "Geo.php",
        """<?php
namespace Geo;

/**
 * Returns the Euclidean distance between two points.
 *
 * @param array $a first point
 */
function distance($a, $b) {
    $dx = $a[0] - $b[0];
    return $dx;
}

class Polygon {
    /**
     * Computes the perimeter of the polygon in meters.
     * @return float
     */
    public function perimeter($scale) {
        $total = 0;
        return $total * $scale;
    }

    public function undocumented($x) {
        $y = $x + 1;
        return $y;
    }

    /** Checks the perimeter of a square polygon. */
    public function testPerimeter() {
        $this->assertSame(4, square()->perimeter(1));
        return;
    }

    /** Too short to keep as a method. */
    public function short() { return 1; }
}
""",
        "distance",
        "Returns the Euclidean distance between two points.",
        "Polygon.perimeter",
        "Computes the perimeter of the polygon in meters.",
        {"test_name": 1, "too_short": 1},
    ),
    "rust": (
        "geo.rs",
        """//! Geometry helpers: this is the module's doc, not a function's.

/// Returns the Euclidean distance between two points.
///
/// More text.
#[inline]
pub fn distance(a: Point, b: Point) -> f64 {
    let dx = a.x - b.x;
    (dx * dx).sqrt()
}

impl<T> Shape for Point<T> {
    /// Scales the point by a factor in place.
    fn scale(&mut self, factor: f64) {
        self.x *= factor;
        self.y *= factor;
    }
}

fn undocumented(x: i32) -> i32 {
    let y = x + 1;
    y
}

/// Checks the distance of two equal points.
#[test]
fn zero_distance() {
    let p = Point::default();
    assert_eq!(distance(p, p), 0.0);
}

/// Too short to keep as a function.
fn short() -> i32 { 1 }
""",
        "distance",
        "Returns the Euclidean distance between two points.",
        "Point.scale",
        "Scales the point by a factor in place.",
        {"test_name": 1, "too_short": 1},
    ),
    "c": (
        "geo.c",
        """#include <math.h>

/**
 * Returns the Euclidean distance between two points.
 * @param a first point
 */
double distance(struct point a, struct point b) {
    double dx = a.x - b.x;
    return sqrt(dx * dx);
}

// Allocates a new point with the given
// coordinates on the heap.
struct point *point_new(double x, double y) {
    struct point *p = malloc(sizeof *p);
    return p;
}

static int undocumented(int x) {
    int y = x + 1;
    return y;
}

/* Checks the distance of two equal points. */
void test_distance(void) {
    assert(distance(p, p) == 0);
    return;
}

/* Too short to keep as a function. */
int short_one(void) { return 1; }
""",
        "distance",
        "Returns the Euclidean distance between two points.",
        "point_new",
        "Allocates a new point with the given coordinates on the heap.",
        {"test_name": 1, "too_short": 1},
    ),
    "cpp": (
        "geo.cpp",
        """namespace geo {

/// Returns the perimeter of the polygon in meters.
double Polygon::perimeter(double scale) const {
    double total = 0;
    return total * scale;
}

class Shape {
 public:
  /** Returns the area of the shape in square meters. */
  double area() const {
    double a = 1;
    return a;
  }
};

int undocumented(int x) {
    int y = x + 1;
    return y;
}

// Checks the area of a unit shape.
void TestArea() {
    assert(Shape().area() == 1);
    return;
}

/* Too short to keep as a function. */
int short_one() { return 1; }
}
""",
        "Polygon.perimeter",
        "Returns the perimeter of the polygon in meters.",
        "Shape.area",
        "Returns the area of the shape in square meters.",
        {"test_name": 1, "too_short": 1},
    ),
}


def extracted(language: str) -> tuple[dict[str, extract.Function], dict[str, int]]:
    name, source, *_ = FIXTURES[language]
    assert languages.language_of_path(f"src/{name}") == language
    functions, rejects = extract.extract_functions(source, language=language, path=name)
    return {f.func_name: f for f in functions}, dict(rejects)


def test_every_language_has_a_fixture():
    assert set(FIXTURES) == set(languages.LANGUAGES)


@pytest.mark.parametrize("language", list(FIXTURES))
def test_documented_function_method_and_rejects(language: str):
    _, source, function, query, method, method_query, rejects = FIXTURES[language]
    by_name, found_rejects = extracted(language)
    assert set(by_name) == {function, method, next(n for n in by_name if "undocumented" in n)}
    assert found_rejects == rejects
    for name, expected in ((function, query), (method, method_query)):
        row = by_name[name]
        assert row.query == expected and row.language == language
        # the doc comment is gone from the code, and the code is the function's own source text
        assert expected.split()[1] not in row.code.split("\n", 1)[0]
        assert row.docstring and not any(line in row.code for line in row.docstring.splitlines() if line)
        assert row.code.splitlines()[-1].strip() in source.splitlines()[row.end_line - 1]
    undocumented = next(f for n, f in by_name.items() if "undocumented" in n)
    assert undocumented.query == "" and undocumented.docstring == ""
    assert not undocumented.code.startswith((" ", "\t"))  # methods are dedented


def test_tags_markers_and_directives_are_not_in_the_query():
    go, _ = extracted("go")
    assert "noinline" not in go["Point.Scale"].docstring  # a //go: directive is not documentation
    java, _ = extracted("java")
    assert "@param" in java["Polygon.perimeter"].docstring and "@" not in java["Polygon.perimeter"].query
    assert java["Polygon.perimeter"].code.startswith("@Override\npublic double perimeter")
    rust, _ = extracted("rust")
    assert "module's doc" not in rust["distance"].docstring  # `//!` documents the module
    assert rust["distance"].code.startswith("#[inline]\npub fn distance")
    ts, _ = extracted("typescript")
    assert ts["Polygon.perimeter"].code.startswith("@memoize()\nperimeter(scale: number)")
    assert ts["distance"].code.startswith("export function distance")
    python, _ = extracted("python")
    assert python["Polygon.perimeter"].query == "Return the perimeter of the polygon in meters."
    assert '"""' not in python["Polygon.perimeter"].code


def test_line_numbers_include_decorators_and_exclude_doc_comments():
    java, _ = extracted("java")
    perimeter = java["Polygon.perimeter"]
    lines = FIXTURES["java"][1].splitlines()
    assert lines[perimeter.start_line - 1].strip() == "@Override"
    assert lines[perimeter.end_line - 1].strip() == "}"


def test_tsx_uses_the_tsx_grammar():
    source = (
        "/** Renders a greeting for the given user name. */\n"
        "export function Greeting(props: { name: string }) {\n"
        "  const text = `Hello ${props.name}`;\n"
        '  return <div className="greeting">{text}</div>;\n'
        "}\n"
    )
    (function,), _ = extract.extract_functions(source, language="typescript", path="ui/Greeting.tsx")
    assert function.func_name == "Greeting" and function.query.startswith("Renders a greeting")
    with pytest.raises(SyntaxError):  # the same file is not TypeScript without JSX
        extract.extract_functions(source.replace("export ", ""), language="typescript", path="Greeting.ts")


def test_javascript_functions_assigned_to_names():
    source = (
        "/**\n * Send a response body to the client.\n *\n * @public\n */\n\n"
        "res.send = function send(body) {\n  this.end(body);\n  return this;\n};\n\n"
        "/** Parse the accept header of a request. */\n"
        "Request.prototype.accepts = function () {\n  const a = accepts(this);\n  return a.types();\n};\n"
    )
    functions, _ = extract.extract_functions(source, language="javascript", path="lib/response.js")
    assert {f.func_name: f.query for f in functions} == {
        "res.send": "Send a response body to the client.",  # a blank line after a /** */ block is fine
        "Request.accepts": "Parse the accept header of a request.",
    }


def test_files_that_do_not_parse_and_files_partly_broken():
    with pytest.raises(SyntaxError):
        extract.extract_functions("func {{{ not go at all\n", language="go")
    with pytest.raises(SyntaxError):
        extract.extract_functions("def broken(:\n    return 1\n", language="python")
    partly = (
        "// Adds two numbers and returns the sum of both.\n"
        "func Add(a, b int) int {\n\tsum := a + b\n\treturn sum\n}\n\n"
        "func Broken( {\n\treturn\n}\n"
    )
    functions, _ = extract.extract_functions(partly, language="go")
    assert [f.func_name for f in functions] == ["Add"]


def test_rust_functions_inside_a_tests_module_are_tests():
    source = (
        "#[cfg(test)]\nmod tests {\n    /// A helper that builds a point for the tests.\n"
        "    fn helper() -> Point {\n        let p = Point::default();\n        p\n    }\n}\n"
    )
    functions, rejects = extract.extract_functions(source, language="rust")
    assert functions == [] and rejects == {"test_name": 1}


def test_constructors_are_skipped():
    source = (
        "class Point {\n  /** Makes a point from both coordinates. */\n"
        "  constructor(x, y) {\n    this.x = x;\n    this.y = y;\n  }\n}\n"
    )
    functions, rejects = extract.extract_functions(source, language="javascript")
    assert functions == [] and rejects == {"dunder": 1}


def test_language_of_path_and_check_languages():
    assert languages.language_of_path("a/b.PY") == "python"
    assert languages.language_of_path("x.tsx") == "typescript"
    assert languages.language_of_path("x.h") == "c" and languages.language_of_path("x.hpp") == "cpp"
    assert languages.language_of_path("x.mjs") == "javascript"
    assert languages.language_of_path("README.md") is None
    assert languages.check_languages(["Go", "java", "go"]) == ("go", "java")
    with pytest.raises(ValueError, match="unknown language 'cobol'; supported: python, go, java"):
        languages.check_languages(["cobol"])


def test_generated_and_vendored_paths():
    assert extract.is_vendored_path("vendor/github.com/x/y.go")
    assert extract.is_vendored_path("web/node_modules/lodash/index.js")
    assert not extract.is_vendored_path("src/vendors.go")
    assert extract.is_vendored_path("pip/_vendor/requests/api.py")
    assert extract.is_vendored_path("botocore/vendored/six.py")
    assert extract.is_vendored_path("sklearn/externals/_packaging/version.py")
    assert not extract.is_vendored_path("mypkg/_vendor.py")
    for path in ("dist/app.min.js", "proto/api_pb2.py", "api/api.pb.go", "src/Schema.generated.ts"):
        assert extract.is_generated_path(path), path
    assert not extract.is_generated_path("src/generator.py")
    assert extract.is_generated_source("// Code generated by protoc-gen-go. DO NOT EDIT.\npackage api\n")
    assert not extract.is_generated_source("package api\n// Code is generated elsewhere\n")
    assert extract.is_test_path("spec/app_spec.rb", ("spec",)) and not extract.is_test_path("spec/app.rb")
