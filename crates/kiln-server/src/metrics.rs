//! The Prometheus metrics `GET /metrics` exports (text format 0.0.4): queue depth and in-flight
//! runs (what a load balancer or autoscaler routes and scales on), requests by route and status,
//! step and request latencies, images generated, model load times.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    /// The matched route (`/v1/jobs/{id}`), never the raw path: a bounded label set.
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
}

pub struct Metrics {
    registry: Registry,
    /// `kiln_queue_depth`: jobs waiting for the worker (read from the queue at each scrape).
    pub queue_depth: Gauge,
    /// `kiln_in_flight`: jobs on the worker (0 or 1).
    pub in_flight: Gauge,
    /// `kiln_requests_total{method, route, status}`.
    pub requests: Family<RequestLabels, Counter>,
    /// `kiln_request_duration_seconds{route}`.
    pub request_seconds: Family<RouteLabels, Histogram>,
    /// `kiln_step_duration_seconds`: one denoising step (a UNet call with its CFG batch).
    pub step_seconds: Histogram,
    /// `kiln_images_generated_total`.
    pub images_generated: Counter,
    /// `kiln_model_load_seconds{model}`: loading and warming up each served model.
    pub model_load: Family<ModelLabels, Gauge<f64, AtomicU64>>,
    /// `kiln_queue_capacity`: `--queue-size`.
    pub queue_capacity: Gauge,
}

impl Metrics {
    pub fn new(queue_capacity: usize) -> Self {
        let mut registry = Registry::with_prefix("kiln");
        let queue_depth = Gauge::default();
        let in_flight = Gauge::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let request_seconds = Family::<RouteLabels, Histogram>::new_with_constructor(|| Histogram::new(exponential_buckets(0.005, 2.0, 16)));
        let step_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let images_generated = Counter::default();
        let model_load = Family::<ModelLabels, Gauge<f64, AtomicU64>>::default();
        let capacity = Gauge::default();
        capacity.set(i64::try_from(queue_capacity).unwrap_or(i64::MAX));
        registry.register("queue_depth", "Generation jobs waiting for the worker", queue_depth.clone());
        registry.register("queue_capacity", "The most jobs that may wait (--queue-size)", capacity.clone());
        registry.register("in_flight", "Generation jobs running on the worker", in_flight.clone());
        registry.register("requests", "HTTP requests by method, route and status", requests.clone());
        registry.register("request_duration_seconds", "HTTP request latency by route", request_seconds.clone());
        registry.register("step_duration_seconds", "Latency of one denoising step", step_seconds.clone());
        registry.register("images_generated", "Images generated", images_generated.clone());
        registry.register("model_load_seconds", "Time to load and warm up a served model", model_load.clone());
        Metrics { registry, queue_depth, in_flight, requests, request_seconds, step_seconds, images_generated, model_load, queue_capacity: capacity }
    }

    pub fn model_load_seconds(&self, model: &str, seconds: f64) {
        self.model_load.get_or_create(&ModelLabels { model: model.to_string() }).set(seconds);
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // (writing to a String cannot fail)
        let _ = encode(&mut out, &self.registry);
        out
    }
}
