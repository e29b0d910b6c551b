"""semcode serve and search under faults (issue 31), on the tiny real bundle: one bad query fails alone, never
its batch; a tokenizer that panics or backtracks without end costs one query (and a catastrophic one fails the
load); a batcher that stops (the index file changed under the server) turns /readyz to 503 and ends the process
with status 1; partial connections are closed; SIGTERM stops the server in bounded time; the CLI refuses a
query that is not UTF-8 and prints no terminal control sequences from the index.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from bundle_fixture import TinyRun, assemble_tiny_bundle, cached_tiny_run, restamp
from fastapi.testclient import TestClient

from semcode import bundle_checks
from semcode.serve import search
from semcode.serve.app import MicroBatcher, QueryError, ServeConfig, bundle_loader, create_app
from semcode.serve.searcher import Hit, Searcher

READY_TIMEOUT_S = 60.0
# A pre-tokenizer regex that backtracks: fine on the load-time probes (no runs of "q"), slow on runs of "q"
# that end without a "Z". One run of 40 makes Oniguruma give up (tokenizers panics) in ~0.2 s; 40 runs of 23
# stay under its limit each and take seconds in all.
SLOW_REGEX = "(q+q+)+Z"
PANICS = "q" * 40 + "!"
HANGS = ("q" * 23 + " ") * 40
CATASTROPHIC_REGEX = "(a+)+$"  # blows up on the probes' long run of "a": refused at load


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    return cached_tiny_run(tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run: TinyRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return assemble_tiny_bundle(tiny_run, tmp_path_factory.mktemp("faults_bundle") / "bundle")


@pytest.fixture(scope="session")
def alone(tiny_bundle: Path) -> dict[str, int]:
    """What each of ``queries()`` finds first when searched alone: answered in a batch, or next to a bad
    query, it must find the same (the tiny encoder is untrained: which function that is does not matter)."""
    searcher = Searcher(tiny_bundle, threads=1)
    return {query: searcher.search(query, 1)[0].id for query in queries()}


def queries(count: int = 12) -> list[str]:
    return [f"read the lines of a file and count them {n}" for n in range(count)]


def with_regex(tiny_bundle: Path, out: Path, regex: str) -> Path:
    """A copy of the bundle whose tokenizer splits on ``regex`` before its byte-level pre-tokenizer."""
    shutil.copytree(tiny_bundle, out)
    tokenizer = json.loads((out / "tokenizer.json").read_text())
    split = {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}
    tokenizer["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [split, tokenizer["pre_tokenizer"]]}
    (out / "tokenizer.json").write_text(json.dumps(tokenizer))
    return restamp(out)


def wait_ready(client: TestClient | httpx.Client, timeout: float = READY_TIMEOUT_S) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            answer = client.get("/readyz")
        except httpx.TransportError:
            answer = None
        if answer is not None and answer.status_code == 200:
            return answer.json()
        if answer is not None and answer.json().get("status") == "failed":
            return answer.json()
        time.sleep(0.05)
    raise AssertionError(f"not ready within {timeout}s")


def post(client: TestClient, query: str, k: int = 2) -> tuple[int, dict]:
    # json.dumps escapes a lone surrogate as \ud800, which the server's JSON parser turns back into one
    body = json.dumps({"query": query, "k": k})
    answer = client.post("/search", content=body, headers={"content-type": "application/json"})
    return answer.status_code, answer.json()


def concurrently(client: TestClient, queries: list[str]) -> list[tuple[int, dict]]:
    with ThreadPoolExecutor(len(queries)) as pool:
        return list(pool.map(lambda query: post(client, query), queries))


# ---------------------------------------------------------------------------------------------
# One request fails alone


def test_a_lone_surrogate_costs_only_its_own_request(tiny_bundle: Path, alone: dict[str, int]):
    config = ServeConfig(threads=1, batch_wait_ms=200.0)
    with TestClient(create_app(bundle_loader(str(tiny_bundle), config), config)) as client:
        wait_ready(client)
        good = queries(8)
        answers = concurrently(client, good[:3] + ["read a file \ud800 line by line"] + good[3:])
        bad = answers.pop(3)
        assert bad[0] == 400 and bad[1]["detail"][0]["loc"] == ["body", "query"]
        assert "not valid UTF-8" in bad[1]["detail"][0]["msg"] and "\\ud800" in bad[1]["detail"][0]["msg"]
        for query, (status, answer) in zip(good, answers, strict=True):
            assert status == 200 and answer["results"][0]["id"] == alone[query]
        assert client.get("/stats").json()["max_batch_size"] > 1  # they were batched together
        assert client.get("/readyz").status_code == 200


def test_a_text_the_encoder_refuses_fails_alone_inside_a_batch(tiny_bundle: Path, alone: dict[str, int]):
    """Past the endpoint's check (the batcher's own guard): with the tokenizer screen, and without it, where the
    whole batch's encoder run fails and each query is encoded again alone."""

    searcher = Searcher(tiny_bundle, threads=1)
    for screen in (True, False):
        worker = bundle_checks.TokenizerWorker(tiny_bundle / "tokenizer.json") if screen else None
        batcher = MicroBatcher(searcher, 64, 200.0, 100, screen=worker.check if worker else None)
        try:
            good = queries(5)
            futures = [batcher.submit(query, 2) for query in good + ["x\udcff"]]
            with pytest.raises(QueryError, match="UTF-8|TextInputSequence"):
                futures[-1].result(timeout=30)
            assert [future.result(timeout=30)[0].id for future in futures[:-1]] == [alone[q] for q in good]
            assert batcher.alive and batcher.batches == 1
        finally:
            batcher.close()
            if worker:
                worker.close()


def test_a_query_that_makes_the_tokenizer_panic_or_hang_fails_alone(tiny_bundle: Path, tmp_path: Path):
    bundle = with_regex(tiny_bundle, tmp_path / "slow", SLOW_REGEX)
    good = queries(6)
    expected = [hits[0].id for hits in Searcher(bundle, threads=1).search_batch(good, 1)]  # its own tokenizer
    config = ServeConfig(threads=1, batch_wait_ms=300.0, query_timeout_s=0.5)
    with TestClient(create_app(bundle_loader(str(bundle), config), config)) as client:
        assert wait_ready(client)["status"] == "ready"  # the load-time probe has no runs of "q"
        started = time.monotonic()
        answers = concurrently(client, good + [PANICS, HANGS])
        seconds = time.monotonic() - started
        (panic_status, panicked), (hang_status, hung) = answers[-2:]
        assert panic_status == 400 and "PanicException" in panicked["detail"][0]["msg"], panicked
        assert hang_status == 400 and "did not finish within 0.5 s" in hung["detail"][0]["msg"], hung
        assert [answer["results"][0]["id"] for _, answer in answers[:-2]] == expected
        assert seconds < 20  # the query that takes seconds was stopped, not waited for
        assert client.get("/readyz").status_code == 200
        assert client.get("/stats").json()["refused_queries"] == 2
        assert post(client, good[0])[1]["results"][0]["id"] == expected[0]  # on the restarted worker


def test_a_catastrophic_tokenizer_regex_fails_the_load(tiny_bundle: Path, tmp_path: Path):
    bundle = with_regex(tiny_bundle, tmp_path / "evil", CATASTROPHIC_REGEX)
    failures = []
    config = ServeConfig(threads=1)
    app = create_app(bundle_loader(str(bundle), config), config, on_failure=lambda: failures.append(1))
    with TestClient(app) as client:
        answer = wait_ready(client)
        assert answer["status"] == "failed" and "tokenizer.json" in answer["error"], answer
        assert "backtracks" in answer["error"]
    assert failures == [1]


# ---------------------------------------------------------------------------------------------
# A batcher that stops: /readyz 503 and the process ends


def test_an_index_changed_under_the_server_stops_it_cleanly(tiny_bundle: Path, tmp_path: Path):
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    failures = []
    config = ServeConfig(threads=1)
    app = create_app(bundle_loader(str(bundle), config), config, on_failure=lambda: failures.append(1))
    with TestClient(app) as client:
        wait_ready(client)
        assert post(client, "read a file")[0] == 200
        with open(bundle / "index.faiss", "r+b") as index:  # rewritten in place, same size
            data = index.read()
            index.seek(0)
            index.write(data[:-1] + bytes([data[-1] ^ 1]))
        status, answer = post(client, "read a file")
        assert status == 503 and "index.faiss changed on disk" in answer["detail"][0]["msg"], answer
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "index.faiss changed on disk" in ready.json()["error"]
        assert post(client, "read a file")[0] == 503  # nothing more is queued for a dead batcher
    assert failures == [1]


# ---------------------------------------------------------------------------------------------
# A real uvicorn: partial connections, SIGTERM, exit status


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(bundle: Path, port: int, *flags: str) -> subprocess.Popen:
    script = (
        "import sys\nfrom semcode.serve.app import main\n"
        f"sys.exit(main([{str(bundle)!r}, '--port', '{port}', '--threads', '1', *{list(flags)!r}]))\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1024) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_partial_connections_time_out_and_sigterm_stops_the_server(tiny_bundle: Path, alone: dict[str, int]):
    port = free_port()
    process = start_server(tiny_bundle, port, "--request-timeout-s", "1", "--shutdown-timeout-s", "2")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            assert wait_ready(http)["status"] == "ready"
            silent = socket.create_connection(("127.0.0.1", port))
            partial = socket.create_connection(("127.0.0.1", port))
            partial.sendall(b'POST /search HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"query"')
            started = time.monotonic()
            assert closed_by_server(silent, 10) and closed_by_server(partial, 10)
            assert time.monotonic() - started < 8
            query = queries(1)[0]
            answer = http.post("/search", json={"query": query, "k": 1})
            assert answer.status_code == 200 and answer.json()["results"][0]["id"] == alone[query]
            held = socket.create_connection(("127.0.0.1", port))  # open while SIGTERM arrives
            held.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n")
    finally:
        stopped = time.monotonic()
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert time.monotonic() - stopped < 10, output
    assert process.returncode in (0, -signal.SIGTERM), output
    assert "Traceback" not in output, output


def test_serve_exits_1_when_its_index_changes(tiny_bundle: Path, tmp_path: Path):
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    port = free_port()
    process = start_server(bundle, port, "--log-level", "warning")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            assert wait_ready(http)["status"] == "ready"
            with open(bundle / "index.faiss", "ab") as index:
                index.write(b"\0" * 64)
            assert http.post("/search", json={"query": "read a file"}).status_code == 503
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 1, output
    assert "index.faiss changed on disk" in output and "Traceback" not in output, output


# ---------------------------------------------------------------------------------------------
# The CLI


def test_search_refuses_a_query_that_is_not_utf8_in_one_line(tiny_bundle: Path):
    command = "import sys\nfrom semcode.cli import main\nsys.exit(main())\n"
    done = subprocess.run(
        [sys.executable, "-c", command, "search", str(tiny_bundle), b"read a \xff\xfe file"],
        capture_output=True,
        timeout=120,
    )
    err = done.stderr.decode(errors="replace")
    assert done.returncode == 2, err
    assert err.strip().count("\n") == 0 and "QUERY is not valid UTF-8" in err and "Traceback" not in err


def test_text_output_strips_terminal_control_sequences_and_json_keeps_them(
    tiny_bundle: Path, tmp_path: Path, capsys
):
    hostile = "def f():\x1b]52;c;cHduZWQ=\x07\n    return 1\x1b[2J\x1b]0;title\x1b\\\r\x9b31m\x00\n"
    assert search.printable(hostile) == "def f():\n    return 1\n"
    hit = Hit(
        1, 0.5, 0, "python", "", "a\x1b[8mb.py", 3, "f", "https://x/\x1b]8;;evil\x07", hostile, "\x1b[1m"
    )
    assert "\x1b" not in search.format_hit(hit, 0, color=False)
    assert search.format_hit(hit, 0, color=True).count("\x1b]") == 0

    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    table = pq.read_table(bundle / "index_meta.parquet")
    codes = [code + "\n# \x1b]52;c;cHduZWQ=\x07\x1b[2J" for code in table.column("code").to_pylist()]
    table = table.set_column(table.schema.get_field_index("code"), "code", pa.array(codes))
    pq.write_table(table, bundle / "index_meta.parquet")
    restamp(bundle)
    assert search.main([str(bundle), "read a file", "-k", "1", "--max-lines", "0"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "cHduZWQ=" not in out  # the sequences are gone
    assert search.main([str(bundle), "read a file", "-k", "1", "--json"]) == 0
    out = capsys.readouterr().out
    answer = json.loads(out)["results"][0]
    assert "\\u001b]52;c;cHduZWQ=\\u0007" in out and answer["code"] == codes[answer["id"]]
