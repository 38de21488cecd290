"""A local OTLP/HTTP receiver for the tracing benchmark: `python -m bench.tracing_receiver PORT
OUT`.

It decodes every ExportTraceServiceRequest (so the exporter pays what it pays against a real
collector), counts the spans, and keeps those of the first traces it sees that are more than a
read (a GET's trace is its server span alone). On SIGTERM it
writes the counts and the kept traces to OUT as JSON (docs/trace_waterfall.py draws one).
"""

import gzip
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

KEEP_TRACES = 200
ANSWER = ExportTraceServiceResponse().SerializeToString()


def value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return (
        getattr(v, kind)
        if kind in ("string_value", "int_value", "bool_value", "double_value")
        else str(v)
    )


class Store:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans = 0
        self.requests = 0
        self.traces: dict[str, list[dict[str, Any]]] = {}

    def add(self, request: ExportTraceServiceRequest) -> None:
        with self.lock:
            self.requests += 1
            for resource_spans in request.resource_spans:
                resource = {a.key: value(a.value) for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        self.spans += 1
                        trace_id = span.trace_id.hex()
                        if trace_id not in self.traces and (
                            len(self.traces) >= KEEP_TRACES or span.name.startswith("GET ")
                        ):
                            continue  # a read's trace is its server span alone: not kept
                        self.traces.setdefault(trace_id, []).append(
                            {
                                "service": resource.get("service.name"),
                                "name": span.name,
                                "span_id": span.span_id.hex(),
                                "parent_span_id": span.parent_span_id.hex() or None,
                                "start_ns": span.start_time_unix_nano,
                                "end_ns": span.end_time_unix_nano,
                                "attributes": {a.key: value(a.value) for a in span.attributes},
                            }
                        )


def main() -> None:
    port, out = int(sys.argv[1]), Path(sys.argv[2])
    store = Store()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            store.add(ExportTraceServiceRequest.FromString(body))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(ANSWER)))
            self.end_headers()
            self.wfile.write(ANSWER)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)

    def stop(*_: object) -> None:
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    server.serve_forever()
    with store.lock:
        data = {"spans": store.spans, "requests": store.requests, "traces": store.traces}
    out.write_text(json.dumps(data) + "\n")


if __name__ == "__main__":
    main()
