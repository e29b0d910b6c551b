"""``semcode compile``: write the pipeline's KFP YAML (src/semcode/pipeline/train_pipeline.yaml), for the KFP UI and API.

The YAML is committed; a test fails when it is stale. Container images come from src/semcode/components/images.py
(SEMCODE_IMAGE_REGISTRY / SEMCODE_IMAGE_TAG when set): compile with them unset for the committed file.

"Stale" compares the parsed YAML, not the text: the KFP compiler writes a header comment that lists the
parameter defaults, and a dict inside a list default (the GPU tolerations) comes out in a different key
order from one run to the next. For the same reason an up-to-date file is left untouched, so compiling
twice leaves no diff. The ``sdkVersion`` field (the KFP SDK that compiled the file) is left out of the
comparison: a patch release of the SDK does not change the pipeline, and the SDK's version is pinned by
requirements.lock, not by this file. Every other field counts: components, their code, parameters,
resources, images.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

# The committed, compiled pipeline: package data beside the pipeline function, so an installed semcode
# (`semcode submit`) has it too.
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "train_pipeline.yaml"


def load_pipeline() -> Any:
    """The pipeline function (semcode/pipeline/train_pipeline.py); imported late: it imports kfp."""
    from semcode.pipeline.train_pipeline import train_pipeline

    return train_pipeline


SDK_VERSION_FIELD = "sdkVersion"  # which KFP SDK compiled the file: not part of the pipeline


def pipeline_documents(path: str | Path) -> list[Any]:
    """The YAML documents of a compiled pipeline, without the compiling SDK's version."""
    documents = list(yaml.safe_load_all(Path(path).read_text()))
    for document in documents:
        if isinstance(document, dict):
            document.pop(SDK_VERSION_FIELD, None)
    return documents


def same_pipeline(a: str | Path, b: str | Path) -> bool:
    """Whether two compiled YAML files hold the same pipeline (comments and the SDK version aside)."""
    return pipeline_documents(a) == pipeline_documents(b)


def compile_pipeline(output: str | Path = DEFAULT_OUTPUT) -> bool:
    """Compile the pipeline into ``output``; returns False when ``output`` already held it (left as is)."""
    from kfp import compiler

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="semcode-compile-") as scratch:
        fresh = Path(scratch) / output.name
        compiler.Compiler().compile(load_pipeline(), str(fresh))
        if output.is_file() and same_pipeline(fresh, output):
            return False
        shutil.move(fresh, output)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="semcode compile",
        description="Compile the training pipeline to KFP YAML (upload it in the KFP UI, or use semcode submit).",
        epilog="examples:\n  semcode compile\n  semcode compile --output /tmp/train_pipeline.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--output",
        default=str(DEFAULT_OUTPUT),
        metavar="YAML",
        help=f"where to write it (default: {DEFAULT_OUTPUT})",
    )
    args = parser.parse_args(argv)
    written = compile_pipeline(args.output)
    print(f"{args.output}: {'written' if written else 'up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
