//! [`serve`]: the server's life — bind, load and warm up on the worker, serve, drain.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use burn::tensor::{DType, Device};
use tokio::sync::Notify;

use crate::api::router;
use crate::state::{AppState, ServedModel};
use crate::engine::{run_worker, Startup};
use crate::jobs::{lock, Queue};
use crate::metrics::Metrics;
use crate::config::ServeConfig;

/// What [`serve`] reports as it goes (the CLI prints it): the bound address first.
pub enum Served {
    Listening(SocketAddr),
    Loaded { name: String, seconds: f64 },
    Ready,
    Draining,
}

/// Serves `config` until SIGTERM or SIGINT, then drains: `/readyz` answers 503 while requests are
/// still served for `drain_grace`, then the queue and the listener close; queued and running jobs
/// finish and their requests are answered; returns `Ok` when all is done (a second signal exits
/// at once, status 130). An error: the address cannot be bound, a model does not load, or draining took
/// longer than `drain_timeout`.
pub fn serve(config: ServeConfig, device: Device, dtypes: (DType, DType), report: impl Fn(Served) + Send + Sync + 'static) -> Result<(), String> {
    if config.models.is_empty() {
        return Err("give at least one --model".into());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // the HTTP side is light; the cores belong to the worker (rayon's pool)
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(run(config, device, dtypes, Arc::new(report)))
}

async fn run(config: ServeConfig, device: Device, dtypes: (DType, DType), report: Arc<dyn Fn(Served) + Send + Sync>) -> Result<(), String> {
    let address = format!("{}:{}", config.host, config.port);
    let listener = tokio::net::TcpListener::bind(&address).await.map_err(|e| format!("cannot listen on {address}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    report(Served::Listening(local));
    let queue = Arc::new(Queue::new(config.queue_size));
    let metrics = Arc::new(Metrics::new(config.queue_size));
    let state = Arc::new(AppState::new(config.clone(), queue.clone(), metrics.clone()));
    let stop = Arc::new(Notify::new());

    // the worker loads and warms up the models, then runs jobs until the queue closes
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = std::thread::Builder::new()
        .name("kiln-worker".into())
        .spawn({
            let (specs, queue, metrics) = (config.models.clone(), queue.clone(), metrics.clone());
            move || run_worker(specs, device, dtypes, queue, metrics, tx)
        })
        .map_err(|e| format!("cannot start the worker thread: {e}"))?;
    let startup = tokio::task::spawn_blocking({
        let (state, stop, report) = (state.clone(), stop.clone(), report.clone());
        move || {
            let mut models = Vec::new();
            while let Ok(message) = rx.recv() {
                match message {
                    Startup::Loaded { name, seconds, kind, default_size, a1111_chunks } => {
                        let source = state.config.models.iter().find(|m| m.name == name).map(|m| m.source.clone()).unwrap_or_default();
                        models.push(ServedModel { name: name.clone(), source, kind, default_size, a1111_chunks });
                        report(Served::Loaded { name, seconds });
                    }
                    Startup::Ready => {
                        *lock(&state.models) = std::mem::take(&mut models);
                        state.ready.store(true, Ordering::SeqCst);
                        report(Served::Ready);
                        return Ok(());
                    }
                    Startup::Failed(why) => {
                        *lock(&state.failed) = Some(why.clone());
                        stop.notify_one();
                        return Err(why);
                    }
                }
            }
            Err("the worker stopped while loading the models".to_string())
        }
    });

    let app = router(state.clone());
    // after the signal, draining may take drain_timeout; then the server gives up
    let force = Arc::new(Notify::new());
    let drain_timeout = config.drain_timeout;
    let grace = config.drain_grace;
    let shutdown = {
        let (state, stop, queue, report, force) = (state.clone(), stop.clone(), queue.clone(), report.clone(), force.clone());
        async move {
            tokio::select! {
                _ = signal() => {}
                _ = stop.notified() => {}
            }
            state.draining.store(true, Ordering::SeqCst);
            report(Served::Draining);
            tracing::info!("draining: /readyz says 503; requests are still taken for the grace period, then the listener closes");
            // a second signal ends the process at once
            tokio::spawn(async {
                signal().await;
                std::process::exit(130);
            });
            // load balancers see /readyz fail before the listener closes and connections are
            // refused; what they still send meanwhile is served
            tokio::time::sleep(grace).await;
            queue.close();
            tokio::spawn(async move {
                tokio::time::sleep(drain_timeout).await;
                force.notify_one();
            });
        }
    };
    let too_long = || format!("the queued and running jobs did not finish within --drain-timeout ({} s)", drain_timeout.as_secs());
    // served returns once the listener is closed and every connection is done (their jobs too)
    tokio::select! {
        served = axum::serve(listener, app).with_graceful_shutdown(shutdown) => served.map_err(|e| format!("the server stopped: {e}"))?,
        _ = force.notified() => return Err(too_long()),
    }
    // jobs of /v1/jobs whose clients are not waiting may still be queued: the worker runs them
    tokio::select! {
        joined = tokio::task::spawn_blocking(move || worker.join()) => {
            if !matches!(joined, Ok(Ok(()))) {
                return Err("the worker thread panicked".into());
            }
        }
        _ = force.notified() => return Err(too_long()),
    }
    match startup.await {
        Ok(result) => result,
        Err(e) => Err(format!("startup: {e}")),
    }
}

/// SIGTERM or SIGINT (Ctrl-C).
async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
