"""``semcode compile``: write the pipelines' KFP YAML, for the KFP UI and API: the training pipeline
(src/semcode/pipeline/train_pipeline.yaml) and the index pipeline (index_pipeline.yaml beside it).

``semcode compile`` writes both; ``--pipeline`` picks one (``--output`` writes the training pipeline unless
``--pipeline index`` says otherwise). The YAML is committed; a test per pipeline fails when it is stale. Container images come from src/semcode/components/images.py
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

# The committed, compiled pipelines: package data beside the pipeline functions, so an installed semcode
# (`semcode submit`) has them too. <kind>: semcode/pipeline/<kind>_pipeline.py's <kind>_pipeline.
PIPELINES = ("train", "index")
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "train_pipeline.yaml"
INDEX_OUTPUT = Path(__file__).resolve().parent / "index_pipeline.yaml"
OUTPUTS = {"train": DEFAULT_OUTPUT, "index": INDEX_OUTPUT}


def load_pipeline(kind: str = "train") -> Any:
    """The pipeline function of ``kind`` (semcode/pipeline/<kind>_pipeline.py); imported late: it imports kfp."""
    if kind == "index":
        from semcode.pipeline.index_pipeline import index_pipeline

        return index_pipeline
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


def compile_pipeline(output: str | Path = DEFAULT_OUTPUT, kind: str = "train") -> bool:
    """Compile the pipeline of ``kind`` into ``output``; returns False when ``output`` already held it (left
    as is)."""
    from kfp import compiler

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="semcode-compile-") as scratch:
        fresh = Path(scratch) / output.name
        compiler.Compiler().compile(load_pipeline(kind), str(fresh))
        if output.is_file() and same_pipeline(fresh, output):
            return False
        shutil.move(fresh, output)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="semcode compile",
        description="Compile the training and index pipelines to KFP YAML (upload them in the KFP UI, or use "
        "semcode submit).",
        epilog="examples:\n  semcode compile\n  semcode compile --output /tmp/train_pipeline.yaml\n"
        "  semcode compile --pipeline index --output /tmp/index_pipeline.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--pipeline",
        choices=PIPELINES,
        default=None,
        help="compile only this one (default: both; with --output: train)",
    )
    parser.add_argument(
        "--output",
        default=None,
        metavar="YAML",
        help=f"where to write it (default: {DEFAULT_OUTPUT.name}, {INDEX_OUTPUT.name} in {DEFAULT_OUTPUT.parent})",
    )
    args = parser.parse_args(argv)
    kinds = [args.pipeline] if args.pipeline else (["train"] if args.output else list(PIPELINES))
    for kind in kinds:
        output = args.output or OUTPUTS[kind]
        written = compile_pipeline(output, kind)
        print(f"{output}: {'written' if written else 'up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
