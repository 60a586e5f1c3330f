#!/usr/bin/env python3
# An OTLP/gRPC trace receiver that is not Napalm's code, for the tests: Python's
# `opentelemetry-proto` stubs served by `grpcio` (scripts/setup installs both). It
# appends every span it receives to OUT as one JSON line (service, trace, span, parent,
# name, string attributes) and prints the port it listens on.
#   otlp-trace-receiver.py OUT [HOST:PORT]      (default 127.0.0.1:0, any free port)
import json, sys, threading
from concurrent import futures
import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

out = open(sys.argv[1], "a")
lock = threading.Lock()

class Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        with lock:
            for rs in request.resource_spans:
                service = ""
                for a in rs.resource.attributes:
                    if a.key == "service.name":
                        service = a.value.string_value
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        attrs = {a.key: a.value.string_value for a in s.attributes}
                        out.write(json.dumps({
                            "service": service,
                            "trace": s.trace_id.hex(),
                            "span": s.span_id.hex(),
                            "parent": s.parent_span_id.hex(),
                            "name": s.name,
                            "attributes": attrs,
                        }) + "\n")
            out.flush()
        return trace_service_pb2.ExportTraceServiceResponse()

server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
port = server.add_insecure_port(sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1:0")
server.start()
print(port, flush=True)
server.wait_for_termination()
