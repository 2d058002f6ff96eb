#!/usr/bin/env python3
"""Sends spans and log records to sloxide with the OpenTelemetry Python SDK exporters.

Used by the integration tests. Prints one line, "sent spans=N logs=M", and exits 0
once the exporters report success; exits 1 when an export fails.
"""
import argparse
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--protocol", choices=["grpc", "http"], required=True)
    p.add_argument("--endpoint", required=True, help="host:port of sloxide's OTLP receiver")
    p.add_argument("--service", default="checkout")
    p.add_argument("--region", default=None, help="cloud.region resource attribute")
    p.add_argument("--spans", type=int, default=0)
    p.add_argument("--errors", type=int, default=0, help="how many of the spans have status ERROR")
    p.add_argument("--duration-ms", type=float, default=10.0, help="span duration")
    p.add_argument("--span-name", default="GET /api/checkout")
    p.add_argument("--logs", type=int, default=0)
    p.add_argument("--error-logs", type=int, default=0, help="how many of the logs have severity ERROR")
    p.add_argument("--event-name", default="deployment", help="event.name attribute of the logs")
    p.add_argument("--log-int-attr", action="append", default=[], metavar="KEY=INT",
                   help="integer attribute on every log record")
    p.add_argument("--error-log-int-attr", action="append", default=[], metavar="KEY=INT",
                   help="integer attribute on the ERROR log records, overriding --log-int-attr")
    p.add_argument("--ca-file", default=None,
                   help="PEM CA of the server's certificate: connect with TLS (https)")
    p.add_argument("--header", action="append", default=[], metavar="NAME=VALUE",
                   help="a header (gRPC: metadata) on every export, e.g. authorization=Bearer x")
    a = p.parse_args()
    headers = dict(h.partition("=")[::2] for h in a.header)
    scheme = "https" if a.ca_file else "http"
    if a.ca_file:
        # requests lets these override the CA a session was given.
        import os
        for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
            os.environ.pop(name, None)

    def grpc_tls():
        extra = {"headers": headers} if headers else {}
        if not a.ca_file:
            return {"insecure": True, **extra}
        import grpc
        with open(a.ca_file, "rb") as f:
            return {"insecure": False, "credentials": grpc.ssl_channel_credentials(root_certificates=f.read()), **extra}

    def http_tls():
        extra = {"headers": headers} if headers else {}
        return {"certificate_file": a.ca_file, **extra} if a.ca_file else extra

    from opentelemetry.sdk.resources import Resource

    attrs = {"service.name": a.service}
    if a.region:
        attrs["cloud.region"] = a.region
    resource = Resource.create(attrs)
    ok = True

    if a.spans:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
        from opentelemetry.trace import SpanKind, Status, StatusCode

        if a.protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            exporter = OTLPSpanExporter(endpoint=f"{scheme}://{a.endpoint}", **grpc_tls())
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            exporter = OTLPSpanExporter(endpoint=f"{scheme}://{a.endpoint}/v1/traces", **http_tls())

        results = []
        inner_export = exporter.export

        def export(spans):
            r = inner_export(spans)
            results.append(r)
            return r

        exporter.export = export
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(exporter, max_export_batch_size=512))
        tracer = provider.get_tracer("sloxide-e2e")
        duration_ns = int(a.duration_ms * 1_000_000)
        for i in range(a.spans):
            end = time.time_ns()
            span = tracer.start_span(a.span_name, kind=SpanKind.SERVER, start_time=end - duration_ns)
            if i < a.errors:
                span.set_status(Status(StatusCode.ERROR, "boom"))
            span.set_attribute("http.route", "/api/checkout")
            span.end(end_time=end)
        provider.shutdown()
        ok = ok and bool(results) and all(r == SpanExportResult.SUCCESS for r in results)

    if a.logs:
        from opentelemetry._logs import SeverityNumber
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExportResult

        if a.protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
            exporter = OTLPLogExporter(endpoint=f"{scheme}://{a.endpoint}", **grpc_tls())
        else:
            from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
            exporter = OTLPLogExporter(endpoint=f"{scheme}://{a.endpoint}/v1/logs", **http_tls())

        results = []
        inner_export = exporter.export

        def export_logs(batch):
            r = inner_export(batch)
            results.append(r)
            return r

        exporter.export = export_logs
        provider = LoggerProvider(resource=resource)
        provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
        logger = provider.get_logger("sloxide-e2e")
        def ints(pairs):
            out = {}
            for pair in pairs:
                key, _, value = pair.partition("=")
                out[key] = int(value)
            return out

        common, on_error = ints(a.log_int_attr), ints(a.error_log_int_attr)
        for i in range(a.logs):
            error = i < a.error_logs
            attributes = {"event.name": a.event_name,
                          "deployment.outcome": "failure" if error else "success"}
            attributes.update(common)
            if error:
                attributes.update(on_error)
            logger.emit(
                timestamp=time.time_ns(),
                severity_number=SeverityNumber.ERROR if error else SeverityNumber.INFO,
                severity_text="ERROR" if error else "INFO",
                body="deployment finished",
                attributes=attributes,
            )
        provider.shutdown()
        ok = ok and bool(results) and all(r == LogRecordExportResult.SUCCESS for r in results)

    print(f"sent spans={a.spans} logs={a.logs}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
