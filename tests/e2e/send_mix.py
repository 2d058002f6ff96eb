#!/usr/bin/env python3
"""Sends a mix of spans with the OpenTelemetry Python SDK: many services, regions, span
kinds and statuses, each (service, region) pair with its own resource and exporter.

Used by the gateway and scale-out tests. Prints one JSON object on stdout:
{"total": N, "counts": {"service|region|kind|status": n, ...}} with kind and status as
sloxide labels them (server, client, ...; unset, ok, error), and exits 0 once every
exporter reported success; exits 1 when an export failed.
"""
import argparse
import json
import sys
import time

KINDS = ["server", "client", "internal", "producer", "consumer"]
STATUSES = ["unset", "ok", "error"]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--protocol", choices=["grpc", "http"], required=True)
    p.add_argument("--endpoint", required=True, help="host:port of the OTLP receiver")
    p.add_argument("--services", type=int, default=8)
    p.add_argument("--first-service", type=int, default=0, help="services are svc-<first>...")
    p.add_argument("--regions", default="eu-west-1,us-east-1,ap-south-1")
    p.add_argument("--rounds", type=int, default=20, help="spans per (service, region)")
    p.add_argument("--seconds", type=float, default=0.0, help="spread the rounds over this long")
    p.add_argument("--error-rates", default="",
                   help="comma-separated error percentages, cycled over the services by index "
                        "(svc-i gets the (i mod n)-th); the other spans are OK. Without it the "
                        "statuses cycle through unset, ok and error")
    a = p.parse_args()

    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
    from opentelemetry.trace import SpanKind, Status, StatusCode

    if a.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        def new_exporter():
            return OTLPSpanExporter(endpoint=f"http://{a.endpoint}", insecure=True)
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        def new_exporter():
            return OTLPSpanExporter(endpoint=f"http://{a.endpoint}/v1/traces")

    sdk_kind = {
        "server": SpanKind.SERVER,
        "client": SpanKind.CLIENT,
        "internal": SpanKind.INTERNAL,
        "producer": SpanKind.PRODUCER,
        "consumer": SpanKind.CONSUMER,
    }
    results = []
    providers = []
    regions = [r for r in a.regions.split(",") if r]
    rates = [float(r) for r in a.error_rates.split(",") if r]
    for index in range(a.first_service, a.first_service + a.services):
        service = f"svc-{index}"
        for region in regions:
            exporter = new_exporter()
            inner = exporter.export

            def export(spans, inner=inner):
                r = inner(spans)
                results.append(r)
                return r

            exporter.export = export
            provider = TracerProvider(
                resource=Resource.create({"service.name": service, "cloud.region": region})
            )
            provider.add_span_processor(
                BatchSpanProcessor(exporter, max_export_batch_size=256, schedule_delay_millis=200)
            )
            providers.append((service, region, provider.get_tracer("sloxide-mix"), provider))

    counts = {}
    total = 0
    start = time.monotonic()
    for round_ in range(a.rounds):
        if a.seconds > 0:
            due = start + a.seconds * round_ / a.rounds
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        for n, (service, region, tracer, _) in enumerate(providers):
            index = int(service.split("-")[1])
            kind = KINDS[(round_ + n) % len(KINDS)]
            if rates:
                # About rate% of each (service, region)'s spans, spread over the rounds.
                rate = rates[index % len(rates)]
                status = "error" if (round_ * 7 + n * 3) % 100 < rate else "ok"
            else:
                status = STATUSES[(round_ + 2 * n) % len(STATUSES)]
            end = time.time_ns()
            duration_ns = (1 + (round_ * 7 + n) % 400) * 1_000_000
            span = tracer.start_span(
                f"GET /api/{service}/{round_ % 4}", kind=sdk_kind[kind], start_time=end - duration_ns
            )
            span.set_attribute("http.route", f"/api/{round_ % 4}")
            if status == "error":
                span.set_status(Status(StatusCode.ERROR, "boom"))
            elif status == "ok":
                span.set_status(Status(StatusCode.OK))
            span.end(end_time=end)
            key = f"{service}|{region}|{kind}|{status}"
            counts[key] = counts.get(key, 0) + 1
            total += 1
    for _, _, _, provider in providers:
        provider.shutdown()
    ok = bool(results) and all(r == SpanExportResult.SUCCESS for r in results)
    print(json.dumps({"total": total, "counts": counts}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
