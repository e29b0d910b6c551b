"""The per-file checks semcode.bundle.validate_bundle runs on a bundle's files, which are data from someone
else and are checked where they are opened: the ONNX files' signature (``onnx_problems``) and their external
data, which must stay inside the bundle (``external_data_problems``); the index and its metadata
(``index_problems``) and its vectors, which must be finite (``vector_problems``); the tokenizer probe
(``tokenizer.json``'s regexes run in a child process under a time limit: ``TokenizerWorker``,
``probe_tokenizer``; ``semcode serve`` keeps a TokenizerWorker for its queries).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from semcode import storage
from semcode.contract import INPUT_NAMES, META_COLUMNS, META_COLUMNS_ADDED, OUTPUT_NAME, TOKENIZER_FILE

# The tokenizer probe: tokenizer.json runs in a child process, one text at a time under a time limit, so a
# pre-tokenizer regex that backtracks without end (it is user-supplied data, and HF tokenizers runs it in
# Rust, holding the GIL) can be stopped by killing the child, and one that gives up (Oniguruma's retry limit:
# tokenizers then panics, a BaseException) or a text it cannot encode is reported instead of raised.
TOKENIZER_SECONDS = 2.0  # the longest one text may take to tokenize (a normal one takes microseconds)
TOKENIZER_START_SECONDS = 60.0  # starting the child: a Python, tokenizers and the tokenizer.json
TOKENIZER_PROBE_CHARS = 1000  # as long as the longest query serve accepts by default
# What makes a backtracking regex blow up: long runs of one character class, or of two alternating ones,
# ending in a character that makes the match fail at the end.
TOKENIZER_PROBES = tuple(
    unit * (TOKENIZER_PROBE_CHARS // len(unit)) + end
    for unit in ("a", "aA", "1", " ", "_", "a ", "ab1_", ".", "'", "\u00e9", "\t", "a\n", "a.", "a-")
    for end in ("", "!")
)
_TOKENIZER_WORKER = """
import json, sys
from tokenizers import Tokenizer
tokenizer = Tokenizer.from_file(sys.argv[1])
sys.stdout.write("ready\\n")
sys.stdout.flush()
for line in sys.stdin:
    try:
        tokenizer.encode(json.loads(line))
        answer = ""
    except BaseException as error:
        answer = (f"{type(error).__name__}: {error}".strip().splitlines() or ["?"])[0][:300]
    sys.stdout.write(json.dumps(answer) + "\\n")
    sys.stdout.flush()
"""


class TokenizerWorker:
    """A bundle's tokenizer.json in a child process: ``check(texts)`` tokenizes each text there, within
    ``seconds``, and returns for each None (fine) or why not (the tokenizer raised or panicked on it, its
    process died, or it ran out of time: the process is then killed and a fresh one started). The calling
    thread never hangs on, and never dies of, a text. ``prefix`` is prepended as the encoder prepends it.
    Not thread-safe: one caller at a time (serve's batcher)."""

    def __init__(
        self, tokenizer_path: str | os.PathLike[str], prefix: str = "", seconds: float = TOKENIZER_SECONDS
    ):
        self.path, self.prefix, self.seconds = str(tokenizer_path), prefix, seconds
        self.process: Any = None
        self.restarts = 0
        self._buffer = b""
        self._start()

    def _start(self) -> None:

        env = {**os.environ, "RUST_BACKTRACE": "0", "PYTHONIOENCODING": "utf-8"}
        self.process = subprocess.Popen(
            [sys.executable, "-c", _TOKENIZER_WORKER, self.path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # a panic's message and backtrace; the answer says what happened
            env=env,
        )
        self._buffer = b""
        if self._read_line(TOKENIZER_START_SECONDS) != "ready":
            code = self.process.poll()
            self.close()
            raise RuntimeError(f"{self.path}: the tokenizer process did not start (exit {code})")

    def _read_line(self, seconds: float) -> str | None:
        """The child's next line, or None when it sent none within ``seconds`` or closed its output."""

        deadline = time.monotonic() + seconds
        fd = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode("utf-8", "replace")

    def check(self, texts: Iterable[str]) -> list[str | None]:
        """For each text, None or why it cannot be tokenized. The texts go to the child together (up to
        about 32 KB at a time, well inside a pipe's buffer) and each answer must come within ``seconds`` of
        the one before; after a text that runs out of time or kills the child, the rest are sent again to a
        fresh one."""
        waiting = [
            json.dumps(self.prefix + text).encode() + b"\n" for text in texts
        ]  # ASCII: \\ud800 escaped
        results: list[str | None] = []
        while waiting:
            size, count = 0, 0
            while count < len(waiting) and (count == 0 or size + len(waiting[count]) <= 32768):
                size, count = size + len(waiting[count]), count + 1
            chunk, waiting = waiting[:count], waiting[count:]
            try:
                self.process.stdin.write(b"".join(chunk))
                self.process.stdin.flush()
            except OSError:  # the child is gone: every answer below is missing, the first text is blamed
                pass
            for done in range(len(chunk)):
                answer = self._read_line(self.seconds)
                if answer is not None:
                    results.append(json.loads(answer) or None)
                    continue
                results.append(self._restart())
                waiting = chunk[done + 1 :] + waiting
                break
        return results

    def check_one(self, text: str) -> str | None:
        return self.check([text])[0]

    def _restart(self) -> str:
        """Kill the child (stuck, or dead already), start a fresh one; why the text it was on failed."""
        died = self.process.poll()
        self.close()
        self.restarts += 1
        self._start()
        if died is None:
            return f"the tokenizer did not finish within {self.seconds:g} s (stopped)"
        return f"the tokenizer process died on it (exit {died})"

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.process is not None:
            self.process.wait()
            for stream in (self.process.stdin, self.process.stdout):
                with contextlib.suppress(OSError):
                    stream.close()


def probe_tokenizer(
    tokenizer_path: str | os.PathLike[str], prefix: str = "", seconds: float = TOKENIZER_SECONDS
) -> list[str]:
    """Problems found by tokenizing TOKENIZER_PROBES (long runs that make a backtracking pre-tokenizer regex
    blow up) in a TokenizerWorker, each within ``seconds``: at most one, naming the probe."""
    try:
        worker = TokenizerWorker(tokenizer_path, prefix, seconds)
    except RuntimeError as error:
        return [f"{TOKENIZER_FILE}: {error}"]
    try:
        for text in TOKENIZER_PROBES:
            problem = worker.check_one(text)
            if problem is not None:
                shown = f"{text[:8]!r} x {len(text)} chars"
                return [
                    f"{TOKENIZER_FILE}: tokenizing a test text ({shown}) failed: {problem}; a pre-tokenizer "
                    "regex that backtracks without bound would let one query stall or crash search"
                ]
        return []
    finally:
        worker.close()


def external_data_problems(model: Any, path: Path) -> list[str]:
    """One problem per tensor of an ONNX model whose external data (``location``) is not a file inside the
    folder of ``path`` (the bundle): ONNX Runtime would open it wherever it points."""
    import onnx

    def tensors(graph: Any) -> Iterable[Any]:
        yield from graph.initializer
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.TENSOR:
                    yield attribute.t
                yield from attribute.tensors
                if attribute.type == onnx.AttributeProto.GRAPH:
                    yield from tensors(attribute.g)
                for subgraph in attribute.graphs:
                    yield from tensors(subgraph)

    problems = []
    for tensor in tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
        try:
            storage.contained_join(
                path.parent, location, f"{path.name}: tensor {tensor.name!r} external data"
            )
        except ValueError as error:
            problems.append(str(error))
            continue
        if not (path.parent / location).is_file():
            problems.append(f"{path.name}: tensor {tensor.name!r} external data {location!r} is missing")
    return sorted(set(problems))


VECTOR_CHECK_BATCH = 65536  # vectors reconstructed at a time when checking an index for NaN


def vector_problems(index_path: Path, index_file: str) -> list[str]:
    """A problem when a stored vector holds NaN or infinity (dense search silently never returns it, and
    hybrid fuses NaN); an index type that cannot give its vectors back is not checked."""
    import numpy as np

    from semcode.index import load_index

    index = load_index(index_path)
    bad, first = 0, None
    for start in range(0, int(index.ntotal), VECTOR_CHECK_BATCH):
        count = min(VECTOR_CHECK_BATCH, int(index.ntotal) - start)
        try:
            vectors = index.reconstruct_n(start, count)  # [count, dim]
        except RuntimeError:  # e.g. an IVF index without a direct map
            return []
        rows = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
        bad += len(rows)
        if first is None and len(rows):
            first = start + int(rows[0])
    if bad:
        return [
            f"{index_file}: {bad} vector(s) hold NaN or infinity (the first: id {first}); rebuild the index"
        ]
    return []


def onnx_problems(path: Path, dim: int | None) -> list[str]:
    """Problems with an ONNX file's signature: int64 input_ids/attention_mask [batch, seq] -> float32 [batch, dim]."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # any parse failure is a broken file, whatever onnx raises
        return [f"{path.name}: cannot be read as ONNX ({type(error).__name__}: {error})"]
    problems = external_data_problems(model, path)

    def describe(value: Any) -> tuple[int, list]:
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim]
        return tensor.elem_type, dims

    inputs = [value.name for value in model.graph.input]
    if sorted(inputs) != sorted(INPUT_NAMES):
        problems.append(f"{path.name}: inputs are {inputs}, the contract says {list(INPUT_NAMES)}")
    for value in model.graph.input:
        if value.name not in INPUT_NAMES:
            continue
        elem_type, dims = describe(value)
        if elem_type != onnx.TensorProto.INT64:
            problems.append(
                f"{path.name}: input {value.name} is {onnx.TensorProto.DataType.Name(elem_type)}, expected INT64"
            )
        if len(dims) != 2 or any(isinstance(d, int) for d in dims):
            problems.append(
                f"{path.name}: input {value.name} has shape {dims}, expected dynamic [batch, seq]"
            )
    outputs = [value.name for value in model.graph.output]
    if outputs != [OUTPUT_NAME]:
        problems.append(f"{path.name}: outputs are {outputs}, the contract says ['{OUTPUT_NAME}']")
    else:
        elem_type, dims = describe(model.graph.output[0])
        if elem_type != onnx.TensorProto.FLOAT:
            problems.append(
                f"{path.name}: output {OUTPUT_NAME} is {onnx.TensorProto.DataType.Name(elem_type)}, expected FLOAT"
            )
        if len(dims) != 2 or isinstance(dims[0], int) or (dim is not None and dims[1] != dim):
            problems.append(f"{path.name}: output {OUTPUT_NAME} has shape {dims}, expected [batch, {dim}]")
    return problems


def index_problems(
    bundle_dir: Path, index_file: str, meta_file: str, dim: int | None
) -> tuple[list[str], dict]:
    import pyarrow.parquet as pq

    from semcode.index import load_index

    problems: list[str] = []
    info: dict[str, Any] = {}
    index_path, meta_path = bundle_dir / index_file, bundle_dir / meta_file
    if not index_path.is_file() or not meta_path.is_file():
        return problems, info  # reported as missing files
    try:
        index = load_index(index_path)  # memory-mapped: a big index is not read in just to count it
        info.update(ntotal=int(index.ntotal), dim=int(index.d))
    except RuntimeError as error:
        problems.append(f"{index_file}: cannot be read by FAISS ({str(error).splitlines()[0]})")
    try:
        meta = pq.ParquetFile(meta_path)
        info["meta_rows"] = meta.metadata.num_rows
        required = [c for c in META_COLUMNS if c not in META_COLUMNS_ADDED]
        missing = [c for c in required if c not in meta.schema_arrow.names]
        if missing:
            problems.append(f"{meta_file}: no column(s) {missing}; it has {meta.schema_arrow.names}")
    except Exception as error:  # pyarrow raises several types for a broken file
        problems.append(f"{meta_file}: cannot be read as Parquet ({type(error).__name__}: {error})")
    if "ntotal" in info and "meta_rows" in info and info["ntotal"] != info["meta_rows"]:
        problems.append(
            f"{index_file} holds {info['ntotal']} vectors but {meta_file} has {info['meta_rows']} rows: "
            "FAISS id i must be row i"
        )
    if "dim" in info and dim is not None and info["dim"] != dim:
        problems.append(f"{index_file} has dimension {info['dim']}, bundle.json says dim {dim}")
    return problems, info
