"""The ``semcode`` command: one subcommand per stage plus the user-facing verbs.

Subcommands are imported lazily so that, for example, ``semcode search`` never imports torch.
Each subcommand's module has ``main(argv) -> int`` with its own parser, --help and an example. A full disk,
a read-only file system or a forbidden path that reaches ``main`` from any command is one line naming the
path (semcode.storage.command_error_line), never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

# name -> (module with main(argv), one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("semcode.pipeline.local", "run the whole job locally on the embedded default (or your sources)"),
    "ingest": ("semcode.stages.ingest", "extract, clean and split (query, code) pairs from sources"),
    "train-tokenizer": ("semcode.stages.train_tokenizer", "train a byte-level BPE tokenizer on a corpus"),
    "train-encoder": (
        "semcode.stages.train_encoder",
        "train the contrastive query/code encoder with DeepSpeed",
    ),
    "mine-hard-negatives": (
        "semcode.stages.mine_hard_negatives",
        "mine FAISS hard negatives for the train pairs with an encoder",
    ),
    "evaluate": ("semcode.stages.evaluate", "retrieval metrics of an encoder vs BM25 and baselines"),
    "train-decoder": (
        "semcode.stages.train_decoder",
        "train the decoder that writes code from the encoder's embeddings",
    ),
    "embed-corpus": ("semcode.stages.embed_corpus", "embed one shard of the corpus for build-index"),
    "build-index": (
        "semcode.stages.build_index",
        "embed the corpus (or take its shards) and build its FAISS index",
    ),
    "export-onnx": (
        "semcode.stages.export_onnx",
        "export the encoder to fp32 and int8 ONNX with parity checks",
    ),
    "gate": (
        "semcode.stages.gate",
        "assemble the release bundle and compare it with the registry's champion",
    ),
    "publish": (
        "semcode.stages.publish",
        "publish a validated bundle to the registry and move its latest pointer",
    ),
    "compile": (
        "semcode.pipeline.compile",
        "compile the training and index pipelines to KFP YAML (src/semcode/pipeline/*_pipeline.yaml)",
    ),
    "submit": (
        "semcode.pipeline.submit",
        "upload the pipeline, start a run on a KFP cluster, wait; fail when the run or gate fails",
    ),
    "index": (
        "semcode.stages.index",
        "make code searchable with an encoder you have (or minilm), no training; --update refreshes it",
    ),
    "search": ("semcode.serve.search", "search a release bundle's code with a natural-language query"),
    "serve": ("semcode.serve.app", "serve a bundle's code search as an HTTP JSON API"),
    "generate": ("semcode.serve.generate", "write code from a docstring or code with a bundle's decoder"),
    "completion": (
        "semcode.completion",
        'print a bash or zsh completion script: eval "$(semcode completion bash)"',
    ),
}

EPILOG = """examples:
  semcode run                                   # the whole job on this machine's Python
  semcode ingest --source python:stdlib --out runs/ingest
  semcode train-tokenizer --corpus runs/ingest/corpus --out runs/tokenizer
  semcode search runs/<run-id>/bundle "read a file line by line" -k 5
  semcode index --encoder minilm --source dir:./repo --out ./repo-index   # no training, any code
  semcode <command> --help                      # flags and an example for each command
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="semcode",
        description="Train natural-language-to-code search models end to end.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, summary) in COMMANDS.items():
        sub.add_parser(name, help=summary, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        code = dispatch(argv)
        sys.stdout.flush()  # inside the try: piped output is buffered and a closed pipe shows at the flush
        return code
    except BrokenPipeError:
        # The reader went away (`semcode search ... | head`): stop quietly with 128 + SIGPIPE, as Unix tools
        # do; stdout goes to /dev/null so the interpreter's own flush at exit cannot raise again (the recipe
        # in Python's signal module docs).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except (OSError, RuntimeError) as error:
        # A full disk, a read-only file system or a forbidden path, on any command and wherever it writes
        # (a cache, an index, a registry): one line naming the path, exit 2 as a stage's own (config.bad_input).
        # Any other error keeps its traceback: it is a bug to see.
        from semcode import storage
        from semcode.config import EXIT_BAD_INPUT

        line = storage.command_error_line(error)
        if line is None:
            raise
        command = f"semcode {argv[0]}" if argv and argv[0] in COMMANDS else "semcode"
        print(f"{command}: error: {line}", file=sys.stderr)
        return EXIT_BAD_INPUT


def dispatch(argv: list[str]) -> int:
    if argv and argv[0] in COMMANDS:
        module = importlib.import_module(COMMANDS[argv[0]][0])
        return int(module.main(argv[1:]) or 0)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from semcode import __version__

        print(__version__)
        return 0
    parser.print_help()
    return 0 if not argv else 2


if __name__ == "__main__":
    sys.exit(main())
