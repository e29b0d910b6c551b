"""A small fake of the KFP v2beta1 REST API on 127.0.0.1, enough for ``semcode submit`` through kfp.Client.

No real KFP can run here (it needs Kubernetes), so the tests talk to this server instead. It serves the
endpoints kfp.Client calls for upload -> experiment -> run -> poll, with the real JSON field names (see
kfp_server_api/models/v2beta1_*.py), and nothing else (anything else is a 404)::

    GET  /apis/v2beta1/healthz                    kfp.Client() when no namespace is set
    GET  /apis/v2beta1/pipelines?filter=...       list_pipelines (display_name EQUALS)
    POST /apis/v2beta1/pipelines/upload           upload_pipeline (multipart "uploadfile"): pipeline + version
    POST /apis/v2beta1/pipelines/upload_version   upload_pipeline_version (?name=&pipelineid=)
    GET  /apis/v2beta1/experiments?filter=...     create_experiment looks the name up first
    POST /apis/v2beta1/experiments                create_experiment
    POST /apis/v2beta1/runs                       run_pipeline
    GET  /apis/v2beta1/runs/{run_id}              get_run: the next frame of the run's script

Every request is recorded (method, path, query, headers, JSON body, uploaded file), so a test can
assert what was sent, or that nothing was. A test scripts how runs go with ``fake.script``: a list of
frames (run state, {task display_name: state}); each GET of the run shows the next frame and the last
one repeats. As on a real KFP (Argo), task_details carry the drivers and the root DAG beside the
pipeline's tasks, and a task inside an ``dsl.If`` whose condition was false is not there at all.

With ``token`` set, a request without ``Authorization: Bearer <token>`` gets a 401, as the real API
behind an authenticating proxy does.
"""

from __future__ import annotations

import itertools
import json
import threading
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

API = "/apis/v2beta1"
TIMESTAMP = "2025-01-01T00:00:00Z"
# The pipeline's tasks in order (train_pipeline.py), as the API names them: the task keys of the spec.
TRAINING_TASKS = (
    "ingest",
    "train-tokenizer",
    "train-encoder",
    "evaluate",
    "build-index",
    "export-onnx",
    "gate",
)

Frame = tuple[str, dict[str, str]]  # (run state, {task display_name: task state})


def done(tasks: tuple[str, ...] = TRAINING_TASKS) -> dict[str, str]:
    return dict.fromkeys(tasks, "SUCCEEDED")


def passed() -> list[Frame]:
    """The gate passed and publish ran."""
    return [
        ("PENDING", {}),
        ("RUNNING", {"ingest": "SUCCEEDED", "train-tokenizer": "RUNNING"}),
        ("RUNNING", {**done(TRAINING_TASKS[:2]), "train-encoder": "RUNNING"}),
        (
            "SUCCEEDED",
            {**done(), "condition-1": "SUCCEEDED", "condition-2": "SUCCEEDED", "publish": "SUCCEEDED"},
        ),
    ]


def refused(publish_state: str | None = None) -> list[Frame]:
    """The gate refused: the run succeeds, publish does not run (absent, or listed as ``publish_state``)."""
    final = {**done(), "condition-1": "SKIPPED"}
    if publish_state is not None:
        final["publish"] = publish_state
    return [("RUNNING", {"ingest": "RUNNING"}), ("SUCCEEDED", final)]


def failed(task: str = "train-encoder") -> list[Frame]:
    """``task`` failed, and with it the run."""
    before = TRAINING_TASKS[: TRAINING_TASKS.index(task)]
    return [("RUNNING", {**done(before), task: "RUNNING"}), ("FAILED", {**done(before), task: "FAILED"})]


def never_finishes() -> list[Frame]:
    return [("RUNNING", {"ingest": "RUNNING"})]


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: Any = None  # the JSON body, when there is one
    upload: str | None = None  # the text of a multipart "uploadfile"


@dataclass
class FakeKFP:
    """The fake API server; use as a context manager (``with FakeKFP() as kfp: kfp.url``)."""

    token: str | None = None
    script: list[Frame] = field(default_factory=passed)
    run_error: str = "task train-encoder failed: CUDA out of memory"  # the run's error when FAILED
    requests: list[Request] = field(default_factory=list)
    pipelines: dict[str, dict] = field(default_factory=dict)
    versions: dict[str, dict] = field(default_factory=dict)  # + "yaml": the uploaded text
    experiments: dict[str, dict] = field(default_factory=dict)
    runs: dict[str, dict] = field(default_factory=dict)  # + "polls": GETs so far
    errors: list[str] = field(default_factory=list)  # exceptions raised while handling requests (500s)
    unavailable_polls: int = 0  # answer this many GETs of a run with 503, as an API server restarting

    def __post_init__(self) -> None:
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> FakeKFP:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)  # port 0: a free port
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None, "use FakeKFP as a context manager"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # --- what tests read -------------------------------------------------------------------------
    def calls(self, method: str, path: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and r.path == API + path]

    def add_pipeline(self, name: str, yaml_text: str = "") -> str:
        """A pipeline uploaded earlier (with its first version); returns its id."""
        return self._create_pipeline(name, "", yaml_text)["pipeline_id"]

    # --- the API ---------------------------------------------------------------------------------
    def _new_id(self, kind: str) -> str:
        return f"{kind}-{next(self._ids):04d}"

    def _create_pipeline(self, name: str, description: str, yaml_text: str) -> dict:
        pipeline = {
            "pipeline_id": self._new_id("pipeline"),
            "display_name": name,
            "description": description,
            "created_at": TIMESTAMP,
        }
        self.pipelines[pipeline["pipeline_id"]] = pipeline
        # The real upload also creates the pipeline's first version, named after the pipeline.
        self._create_version(pipeline["pipeline_id"], name, description, yaml_text)
        return pipeline

    def _create_version(self, pipeline_id: str, name: str, description: str, yaml_text: str) -> dict:
        version = {
            "pipeline_id": pipeline_id,
            "pipeline_version_id": self._new_id("version"),
            "display_name": name,
            "description": description,
            "created_at": TIMESTAMP,
        }
        self.versions[version["pipeline_version_id"]] = {**version, "yaml": yaml_text}
        return version

    def handle(self, request: Request) -> tuple[int, dict]:
        """(status, JSON body) for one request."""
        if self.token is not None and request.headers.get("authorization") != f"Bearer {self.token}":
            return 401, error_body(16, "Unauthenticated: a valid bearer token is required")
        path, query = request.path, request.query
        if request.method == "GET" and path == f"{API}/healthz":
            return 200, {"multi_user": False, "pipeline_store": "database"}
        if request.method == "GET" and path == f"{API}/pipelines":
            found = [p for p in self.pipelines.values() if matches(p, query.get("filter"))]
            return 200, ({"pipelines": found, "total_size": len(found)} if found else {})
        if request.method == "POST" and path == f"{API}/pipelines/upload":
            name = query.get("name") or query.get("display_name", "")
            if any(p["display_name"] == name for p in self.pipelines.values()):
                return 409, error_body(6, f"Failed to create a pipeline: the name {name} already exists")
            return 200, self._create_pipeline(name, query.get("description", ""), request.upload or "")
        if request.method == "POST" and path == f"{API}/pipelines/upload_version":
            pipeline_id, name = query.get("pipelineid", ""), query.get("name", "")
            if pipeline_id not in self.pipelines:
                return 404, error_body(5, f"pipeline {pipeline_id} not found")
            if any(
                v["pipeline_id"] == pipeline_id and v["display_name"] == name for v in self.versions.values()
            ):
                return 409, error_body(6, f"Failed to create a pipeline version: {name} already exists")
            return 200, self._create_version(
                pipeline_id, name, query.get("description", ""), request.upload or ""
            )
        if request.method == "GET" and path == f"{API}/experiments":
            found = [e for e in self.experiments.values() if matches(e, query.get("filter"))]
            return 200, ({"experiments": found, "total_size": len(found)} if found else {})
        if request.method == "POST" and path == f"{API}/experiments":
            experiment = {
                "experiment_id": self._new_id("experiment"),
                "display_name": request.body["display_name"],
                "description": request.body.get("description") or "",
                "namespace": request.body.get("namespace") or "",
                "created_at": TIMESTAMP,
                "storage_state": "AVAILABLE",
            }
            self.experiments[experiment["experiment_id"]] = experiment
            return 200, experiment
        if request.method == "POST" and path == f"{API}/runs":
            return self._create_run(request.body)
        if request.method == "GET" and path.startswith(f"{API}/runs/"):
            run_id = path.rsplit("/", 1)[1]
            if run_id not in self.runs:
                return 404, error_body(5, f"run {run_id} not found")
            if self.unavailable_polls > 0:
                self.unavailable_polls -= 1
                return 503, error_body(14, "upstream connect error or disconnect/reset before headers")
            return 200, self._poll(run_id)
        return 404, error_body(5, f"the fake KFP API has no {request.method} {path}")

    def _create_run(self, body: dict) -> tuple[int, dict]:
        reference = body.get("pipeline_version_reference") or {}
        if reference.get("pipeline_version_id") not in self.versions:
            return 404, error_body(5, f"pipeline version {reference} not found")
        if body.get("experiment_id") not in self.experiments:
            return 404, error_body(5, f"experiment {body.get('experiment_id')} not found")
        run = {
            "run_id": self._new_id("run"),
            "experiment_id": body["experiment_id"],
            "display_name": body.get("display_name", ""),
            "pipeline_version_reference": reference,
            "runtime_config": body.get("runtime_config") or {},
            "service_account": body.get("service_account") or "pipeline-runner",
            "storage_state": "AVAILABLE",
            "created_at": TIMESTAMP,
            "scheduled_at": TIMESTAMP,
            "state": "PENDING",
        }
        self.runs[run["run_id"]] = {**run, "polls": 0}
        return 200, run

    def _poll(self, run_id: str) -> dict:
        stored = self.runs[run_id]
        state, tasks = self.script[min(stored["polls"], len(self.script) - 1)]
        stored["polls"] += 1
        run = {k: v for k, v in stored.items() if k != "polls"}
        run["state"] = state
        run["run_details"] = {"task_details": task_details(run_id, tasks)}
        if state in ("SUCCEEDED", "FAILED", "CANCELED", "SKIPPED"):
            run["finished_at"] = TIMESTAMP
        if state == "FAILED":
            run["error"] = {"code": 2, "message": self.run_error}
        return run


def task_details(run_id: str, tasks: dict[str, str]) -> list[dict]:
    """V2beta1PipelineTaskDetail dicts as Argo reports them: the root DAG, a driver per task, the task."""
    details = [{"display_name": "root-driver", "state": "SUCCEEDED"}]
    if tasks:
        running = any(state == "RUNNING" for state in tasks.values())
        details.append({"display_name": "root", "state": "RUNNING" if running else "SUCCEEDED"})
    for name, state in tasks.items():
        details.append({"display_name": f"{name}-driver", "state": "SUCCEEDED"})
        details.append({"display_name": name, "state": state})
    for number, detail in enumerate(details, 1):
        detail.update(run_id=run_id, task_id=f"{run_id}-node-{number}", create_time=TIMESTAMP)
        if detail["state"] == "FAILED":
            detail["error"] = {"code": 2, "message": f"{detail['display_name']}: exit status 1"}
    return details


def matches(item: dict, filter_json: str | None) -> bool:
    """Whether ``item`` passes a v2beta1 filter; only display_name EQUALS, what kfp.Client sends."""
    if not filter_json:
        return True
    for predicate in json.loads(filter_json).get("predicates", []):
        # kfp.Client sends the operation as the enum's number (EQUALS = 1); grpc-gateway takes either.
        if predicate["operation"] not in ("EQUALS", 1) or predicate["key"] != "display_name":
            raise NotImplementedError(f"the fake KFP API filters on display_name EQUALS only: {predicate}")
        if item.get("display_name") != predicate.get("string_value", predicate.get("stringValue")):
            return False
    return True


def error_body(code: int, message: str) -> dict:
    """The error JSON of grpc-gateway (google.rpc.Status)."""
    return {"error": message, "code": code, "message": message, "details": []}


class _Handler(BaseHTTPRequestHandler):
    fake: FakeKFP  # set on the subclass FakeKFP.__enter__ makes

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        split = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(split.query).items()}
        headers = {key.lower(): value for key, value in self.headers.items()}
        raw = self.rfile.read(int(headers.get("content-length") or 0))
        request = Request(self.command, split.path, query, headers)
        content_type = headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            request.upload = uploaded_file(content_type, raw)
        elif raw:
            request.body = json.loads(raw)
        with self.fake._lock:
            self.fake.requests.append(request)
            try:
                status, body = self.fake.handle(request)
            except Exception as error:  # a bug here or a request the fake does not know: a 500 the test sees
                self.fake.errors.append(f"{request.method} {request.path}: {error!r}")
                status, body = 500, error_body(13, f"fake KFP API: {error!r}")
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # quiet: pytest shows failures anyway
        pass


def uploaded_file(content_type: str, raw: bytes) -> str | None:
    """The text of the "uploadfile" part of a multipart/form-data body."""
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == "uploadfile":
            return part.get_payload(decode=True).decode()
    return None
