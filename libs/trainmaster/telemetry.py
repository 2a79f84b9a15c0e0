"""Structured logs (structlog, JSON, bound to job_id/agent_id/trace_id) and OpenTelemetry traces.

faststream's ``NatsTelemetryMiddleware`` carries the trace context in message headers
(``traceparent``), so one job's spans from every service share one trace id.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import structlog
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)

from trainmaster.settings import Settings


def _add_trace_ids(_logger: object, _name: str, event: dict) -> dict:
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event.setdefault("trace_id", f"{ctx.trace_id:032x}")
        event.setdefault("span_id", f"{ctx.span_id:016x}")
    return event


def configure_logging(service: str, level: str = "INFO") -> structlog.stdlib.BoundLogger:
    """JSON lines on stderr; ``structlog.contextvars.bound_contextvars(job_id=...)`` binds a job."""
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, level.upper(), logging.INFO),
                        format="%(message)s")
    # faststream logs a line per message at INFO: too chatty for a service log
    logging.getLogger("faststream").setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _add_trace_ids,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    return structlog.get_logger()


class JsonLinesSpanExporter(SpanExporter):
    """Appends finished spans as JSON lines to a file shared by all local services."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = []
        for span in spans:
            ctx = span.get_span_context()
            lines.append(json.dumps({
                "name": span.name,
                "service": span.resource.attributes.get("service.name"),
                "trace_id": f"{ctx.trace_id:032x}",
                "span_id": f"{ctx.span_id:016x}",
                "parent_span_id": f"{span.parent.span_id:016x}" if span.parent else None,
                "kind": span.kind.name,
                "start_ns": span.start_time,
                "end_ns": span.end_time,
                "attributes": {k: str(v) for k, v in (span.attributes or {}).items()},
            }))
        with self._lock, self._path.open("a", encoding="utf-8") as out:
            out.write("\n".join(lines) + "\n")
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def configure_tracing(service: str, settings: Settings) -> TracerProvider | None:
    """The service's tracer provider, or None when tracing is off (``TM_OTEL_EXPORTER=none``):
    recording spans nobody exports costs intake a large share of its throughput (the figure is in
    docs/benchmarks.md, "Figures the code relies on")."""
    if settings.observability.otel_exporter == "none":
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    exporter: SpanExporter
    if settings.observability.otel_exporter == "console":
        exporter = ConsoleSpanExporter(out=sys.stderr)
    elif settings.observability.otel_exporter == "file":
        path = settings.observability.otel_file or settings.embedded.data_dir / "traces.jsonl"
        exporter = JsonLinesSpanExporter(path)
    elif settings.observability.otel_exporter == "otlp":
        try:  # optional dependency: opentelemetry-exporter-otlp
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as exc:  # pragma: no cover - depends on the deployment
            raise RuntimeError("TM_OTEL_EXPORTER=otlp needs: pip install opentelemetry-exporter-otlp") from exc
        exporter = OTLPSpanExporter()
    else:
        raise ValueError(f"TM_OTEL_EXPORTER={settings.observability.otel_exporter!r}: use none, console, file or otlp")
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    trace.set_tracer_provider(provider)
    return provider


def current_traceparent() -> str | None:
    return traceparent_of(trace.get_current_span())


def traceparent_of(span: trace.Span) -> str | None:
    """The W3C ``traceparent`` of ``span``; None for a span that records nothing."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
