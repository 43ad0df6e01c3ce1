//! Optional OpenTelemetry trace export. When `OTEL_EXPORTER_OTLP_ENDPOINT`
//! is set (e.g. `http://127.0.0.1:4318`), spans are sent over OTLP/HTTP
//! (protobuf) to `{endpoint}/v1/traces` by a batch span processor on the
//! tokio runtime; the service is named `usersvc` unless `OTEL_SERVICE_NAME`
//! says otherwise. Unset, nothing is exported and nothing else changes.
//!
//! The batch processor honours the standard `OTEL_BSP_*` variables (e.g.
//! `OTEL_BSP_SCHEDULE_DELAY` in milliseconds).

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::{
    Resource, runtime,
    trace::{SdkTracerProvider, span_processor_with_async_runtime::BatchSpanProcessor},
};
use tracing::Subscriber;
use tracing_subscriber::{Layer, filter::Targets, registry::LookupSpan};

/// The environment variable that turns export on.
pub const ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// The crates whose spans come from exporting itself (the HTTP client and
/// the SDK): exported, they would feed back into the next batch.
const EXPORT_PLUMBING: &[&str] = &[
    "opentelemetry",
    "opentelemetry_sdk",
    "opentelemetry_otlp",
    "opentelemetry_http",
    "reqwest",
    "hyper",
    "hyper_util",
    "h2",
];

/// Holds the tracer provider while the process runs; [`Telemetry::shutdown`]
/// flushes what is buffered.
#[must_use = "call shutdown() before exit, or buffered spans are lost"]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Export the spans still buffered, then stop the exporter.
    pub async fn shutdown(self) {
        let provider = self.provider;
        // The SDK's shutdown blocks until the batch task, on this runtime,
        // has exported: keep it off the async worker threads.
        match tokio::task::spawn_blocking(move || provider.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("usersvc: OpenTelemetry shutdown: {e}"),
            Err(e) => eprintln!("usersvc: OpenTelemetry shutdown: {e}"),
        }
    }
}

/// The tracing layer that exports spans, when [`ENDPOINT_ENV`] is set and
/// not empty; `None` otherwise. Must be called within a tokio runtime.
pub fn init<S>() -> anyhow::Result<Option<(impl Layer<S> + use<S>, Telemetry)>>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let endpoint = std::env::var(ENDPOINT_ENV).unwrap_or_default();
    if endpoint.trim().is_empty() {
        return Ok(None);
    }
    // The endpoint (and `/v1/traces` after it) is read from the environment
    // by the exporter, as are OTEL_EXPORTER_OTLP_HEADERS and _TIMEOUT.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .build()
        .with_context(|| format!("the OpenTelemetry exporter for {ENDPOINT_ENV}={endpoint}"))?;
    let service_name = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "usersvc".to_owned());
    let provider = SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name(service_name).build())
        .with_span_processor(BatchSpanProcessor::builder(exporter, runtime::Tokio).build())
        .build();
    let tracer = provider.tracer("usersvc");
    let plumbing = EXPORT_PLUMBING.iter().fold(Targets::new().with_default(tracing::Level::TRACE), |t, target| {
        t.with_target(*target, tracing::level_filters::LevelFilter::OFF)
    });
    let layer = tracing_opentelemetry::layer().with_tracer(tracer).with_filter(plumbing);
    Ok(Some((layer, Telemetry { provider })))
}
