"""Spans of :mod:`sinks.traces` -> OTLP/HTTP (protobuf), through the OpenTelemetry SDK's exporter.

Why the SDK and not a tracer: a tracer mints its own ids and clock, while these spans are rebuilt from events
with ids derived from the events (or the host's ``traceparent``) and the agent's timestamps. The SDK's
``ReadableSpan`` takes explicit ids, parents and times, and its ``OTLPSpanExporter`` encodes them as OTLP protobuf
and retries transient failures (429, 502-504, connection errors) with back-off within its time-out. So the wire
format, compression (``OTEL_EXPORTER_OTLP_COMPRESSION``), TLS settings and time-out variables are the SDK's, and
any OTLP/HTTP backend takes the spans: an OTel Collector, Jaeger, Tempo, Langfuse, Phoenix.

The resource of each span is ``service.name`` = the event's ``service`` (else ``agentao``), merged with
``OTEL_RESOURCE_ATTRIBUTES`` (read by the SDK's ``Resource.create``), e.g. ``openinference.project.name=...`` to
pick a Phoenix project.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from sinks.traces import SPAN_KIND_CLIENT, STATUS_ERROR, STATUS_OK, Span

log = logging.getLogger(__name__)

DEFAULT_SERVICE = "agentao"
MAX_SPANS_PER_REQUEST = 512
_SCOPE = InstrumentationScope("agentwatch.traces", "0.1.0")
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)


class ExportFailed(RuntimeError):
    """The backend did not take a batch of spans (after the exporter's own retries)."""


def to_readable(span: Span, resource: Resource) -> ReadableSpan:
    """One :class:`~sinks.traces.Span` as the SDK's ``ReadableSpan`` (explicit ids, parent and times)."""
    ctx = SpanContext(span.trace_id, span.span_id, is_remote=False, trace_flags=_SAMPLED)
    parent = None if span.parent_span_id is None else SpanContext(
        span.trace_id, span.parent_span_id, is_remote=span.remote_parent, trace_flags=_SAMPLED)
    if span.status == STATUS_ERROR:
        status = Status(StatusCode.ERROR, span.status_message)
    elif span.status == STATUS_OK:
        status = Status(StatusCode.OK)
    else:
        status = Status(StatusCode.UNSET)
    return ReadableSpan(
        name=span.name, context=ctx, parent=parent, resource=resource, attributes=dict(span.attributes),
        events=[Event(e.name, dict(e.attributes), e.time_ns) for e in span.events],
        kind=SpanKind.CLIENT if span.kind == SPAN_KIND_CLIENT else SpanKind.INTERNAL,
        status=status, start_time=span.start_ns, end_time=span.end_ns, instrumentation_scope=_SCOPE)


class OtlpSpanSender:
    """Sends spans to one OTLP/HTTP traces endpoint; :meth:`send` raises :class:`ExportFailed`, never drops."""

    def __init__(self, endpoint: str, headers: Mapping[str, str] | None = None, *, timeout_s: float = 10.0) -> None:
        self.endpoint = endpoint
        self._exporter = OTLPSpanExporter(endpoint=endpoint, headers=dict(headers or {}), timeout=timeout_s)
        self._resources: dict[str, Resource] = {}
        self.spans_sent = 0
        self.requests = 0

    def _resource(self, service: str | None) -> Resource:
        name = service or DEFAULT_SERVICE
        res = self._resources.get(name)
        if res is None:
            if len(self._resources) > 10_000:
                self._resources.clear()
            res = self._resources[name] = Resource.create({"service.name": name})
        return res

    def send(self, spans: Sequence[Span]) -> None:
        """Export ``spans`` in requests of at most ``MAX_SPANS_PER_REQUEST``; ExportFailed on the first refusal."""
        for i in range(0, len(spans), MAX_SPANS_PER_REQUEST):
            chunk = [to_readable(s, self._resource(s.service)) for s in spans[i:i + MAX_SPANS_PER_REQUEST]]
            result = self._exporter.export(chunk)
            self.requests += 1
            if result is not SpanExportResult.SUCCESS:
                raise ExportFailed(f"the OTLP endpoint {self.endpoint} did not accept {len(chunk)} span(s)")
            self.spans_sent += len(chunk)

    def close(self) -> None:
        self._exporter.shutdown()
