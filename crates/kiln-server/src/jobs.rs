//! Jobs and the bounded queue in front of the worker.
//!
//! Every generation, synchronous (`/v1/images/generations`, `/sdapi/v1/txt2img`, …) or not
//! (`/v1/jobs`), is a [`Job`] in one [`Queue`]: at most `capacity` wait, the worker takes them in
//! order, a full queue refuses at once (the routes answer 429 with `Retry-After`). A job's
//! progress is a [`watch`] channel its waiters and event streams follow; a cancelled job leaves
//! the queue, or stops at the worker's next step. Finished jobs stay readable for a bounded time
//! and count ([`JobStore`]).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use crate::work::{GenOutput, GenRequest};
use crate::error::ApiError;

/// Where a job is; what `GET /v1/jobs/{id}` and the event stream report.
#[derive(Debug, Clone, PartialEq)]
pub enum JobStatus {
    /// Waiting; `position` 0 is next.
    Queued { position: usize },
    /// On the worker: `step` model calls of `total` done.
    Running { step: usize, total: usize },
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn is_finished(&self) -> bool {
        matches!(self, JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled)
    }

    pub fn name(&self) -> &'static str {
        match self {
            JobStatus::Queued { .. } => "queued",
            JobStatus::Running { .. } => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }
}

/// The latest latents of a running job, for previews (`/sdapi/v1/progress`).
#[derive(Debug, Clone)]
pub struct Latents {
    /// `[batch, channels, height, width]`, row-major.
    pub shape: [usize; 4],
    pub values: Vec<f32>,
}

/// One generation: its request (taken by the worker), its status, its result.
pub struct Job {
    pub id: String,
    /// The served model it runs on.
    pub model: String,
    /// Seconds since the epoch, when it was submitted.
    pub created: u64,
    pub submitted: Instant,
    request: Mutex<Option<GenRequest>>,
    status: watch::Sender<JobStatus>,
    cancel: AtomicBool,
    result: OnceLock<Result<Arc<GenOutput>, ApiError>>,
    finished: OnceLock<Instant>,
    started: OnceLock<Instant>,
    latents: Mutex<Option<Latents>>,
}

impl Job {
    pub fn new(id: String, request: GenRequest) -> Arc<Self> {
        let created = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        Arc::new(Job {
            id,
            model: request.model.clone(),
            created,
            submitted: Instant::now(),
            request: Mutex::new(Some(request)),
            status: watch::channel(JobStatus::Queued { position: 0 }).0,
            cancel: AtomicBool::new(false),
            result: OnceLock::new(),
            finished: OnceLock::new(),
            started: OnceLock::new(),
            latents: Mutex::new(None),
        })
    }

    pub fn status(&self) -> JobStatus {
        self.status.borrow().clone()
    }

    /// Follows the job's status: each change, and the last one once it has finished.
    pub fn subscribe(&self) -> watch::Receiver<JobStatus> {
        self.status.subscribe()
    }

    /// The request, once: the worker takes it when the job starts.
    pub fn take_request(&self) -> Option<GenRequest> {
        lock(&self.request).take()
    }

    pub fn set_status(&self, status: JobStatus) {
        if matches!(status, JobStatus::Running { .. }) {
            let _ = self.started.set(Instant::now());
        }
        self.status.send_replace(status);
    }

    /// Asks the job to stop: at the worker's next step (or before it starts).
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    pub fn cancel_requested(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    /// Records the outcome and the final status (once; later calls are ignored).
    pub fn finish(&self, result: Result<Arc<GenOutput>, ApiError>) {
        let status = match &result {
            Ok(_) => JobStatus::Succeeded,
            Err(e) if e.is_cancelled() => JobStatus::Cancelled,
            Err(_) => JobStatus::Failed,
        };
        if self.result.set(result).is_ok() {
            let _ = self.finished.set(Instant::now());
            *lock(&self.latents) = None;
            self.status.send_replace(status);
        }
    }

    pub fn result(&self) -> Option<&Result<Arc<GenOutput>, ApiError>> {
        self.result.get()
    }

    pub fn finished_at(&self) -> Option<Instant> {
        self.finished.get().copied()
    }

    pub fn started_at(&self) -> Option<Instant> {
        self.started.get().copied()
    }

    pub fn set_latents(&self, latents: Latents) {
        *lock(&self.latents) = Some(latents);
    }

    pub fn latents(&self) -> Option<Latents> {
        lock(&self.latents).clone()
    }

    /// Waits until the job has finished and returns its outcome.
    pub async fn wait(&self) -> Result<Arc<GenOutput>, ApiError> {
        let mut rx = self.subscribe();
        // (the sender lives in self: wait_for only fails if it is dropped, which it is not)
        let _ = rx.wait_for(JobStatus::is_finished).await;
        self.result.get().cloned().unwrap_or_else(|| Err(ApiError::internal("the job finished without a result")))
    }
}

/// A poisoned lock's data is still consistent here (every critical section is a plain update).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a job was not queued.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PushError {
    /// `capacity` jobs are waiting.
    Full { capacity: usize },
    /// The server is shutting down: the queue takes no more jobs.
    Closed,
}

/// The jobs waiting for the worker, at most `capacity`, in order.
pub struct Queue {
    inner: Mutex<QueueInner>,
    ready: Condvar,
    capacity: usize,
}

struct QueueInner {
    waiting: VecDeque<Arc<Job>>,
    running: Option<Arc<Job>>,
    closed: bool,
}

impl Queue {
    pub fn new(capacity: usize) -> Self {
        Queue { inner: Mutex::new(QueueInner { waiting: VecDeque::new(), running: None, closed: false }), ready: Condvar::new(), capacity }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Adds `job` at the end; its position, or why not.
    pub fn push(&self, job: Arc<Job>) -> Result<usize, PushError> {
        let mut inner = lock(&self.inner);
        if inner.closed {
            return Err(PushError::Closed);
        }
        if inner.waiting.len() >= self.capacity {
            return Err(PushError::Full { capacity: self.capacity });
        }
        let position = inner.waiting.len();
        job.set_status(JobStatus::Queued { position });
        inner.waiting.push_back(job);
        self.ready.notify_one();
        Ok(position)
    }

    /// The next job, marked as running (the previous one is done); blocks while the queue is
    /// empty; `None` once it is closed and empty. Cancelled jobs are finished here, not returned.
    pub fn pop(&self) -> Option<Arc<Job>> {
        let mut inner = lock(&self.inner);
        inner.running = None;
        loop {
            while let Some(job) = inner.waiting.pop_front() {
                for (position, other) in inner.waiting.iter().enumerate() {
                    other.set_status(JobStatus::Queued { position });
                }
                if job.cancel_requested() {
                    job.finish(Err(ApiError::cancelled(&job.id)));
                    continue;
                }
                inner.running = Some(job.clone());
                return Some(job);
            }
            if inner.closed {
                return None;
            }
            inner = self.ready.wait(inner).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Takes a waiting job out (cancelled before it ran); whether it was waiting.
    pub fn remove(&self, id: &str) -> bool {
        let mut inner = lock(&self.inner);
        let Some(index) = inner.waiting.iter().position(|j| j.id == id) else { return false };
        inner.waiting.remove(index);
        for (position, other) in inner.waiting.iter().enumerate() {
            other.set_status(JobStatus::Queued { position });
        }
        true
    }

    /// Jobs waiting (not counting the one running).
    pub fn depth(&self) -> usize {
        lock(&self.inner).waiting.len()
    }

    pub fn running(&self) -> Option<Arc<Job>> {
        lock(&self.inner).running.clone()
    }

    /// No more jobs are taken; the worker finishes those waiting, then stops.
    pub fn close(&self) {
        lock(&self.inner).closed = true;
        self.ready.notify_all();
    }
}

/// The most bytes of PNGs the finished jobs may hold together (the oldest go first).
pub const KEPT_BYTES: usize = 256 << 20;

/// Every job by id: the live ones, and the finished ones for `retention`, up to `keep` of them
/// and [`KEPT_BYTES`] of pictures.
pub struct JobStore {
    jobs: Mutex<HashMap<String, Arc<Job>>>,
    retention: Duration,
    keep: usize,
}

impl JobStore {
    pub fn new(retention: Duration, keep: usize) -> Self {
        JobStore { jobs: Mutex::new(HashMap::new()), retention, keep }
    }

    pub fn insert(&self, job: Arc<Job>) {
        let mut jobs = lock(&self.jobs);
        Self::prune(&mut jobs, self.retention, self.keep);
        jobs.insert(job.id.clone(), job);
    }

    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        let mut jobs = lock(&self.jobs);
        Self::prune(&mut jobs, self.retention, self.keep);
        jobs.get(id).cloned()
    }

    pub fn remove(&self, id: &str) {
        lock(&self.jobs).remove(id);
    }

    pub fn len(&self) -> usize {
        lock(&self.jobs).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops finished jobs older than `retention`, then the oldest finished beyond `keep` or
    /// [`KEPT_BYTES`].
    fn prune(jobs: &mut HashMap<String, Arc<Job>>, retention: Duration, keep: usize) {
        jobs.retain(|_, j| j.finished_at().is_none_or(|t| t.elapsed() < retention));
        let size = |j: &Job| match j.result() {
            Some(Ok(out)) => out.images.iter().map(|i| i.png.len()).sum(),
            _ => 0,
        };
        let mut finished: Vec<(Instant, String, usize)> = jobs.values().filter_map(|j| j.finished_at().map(|t| (t, j.id.clone(), size(j)))).collect();
        // newest first: keep while within both bounds
        finished.sort_by(|a, b| b.0.cmp(&a.0));
        let mut bytes = 0usize;
        for (i, (_, id, size)) in finished.iter().enumerate() {
            bytes = bytes.saturating_add(*size);
            if i >= keep || bytes > KEPT_BYTES {
                jobs.remove(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::work::{GenImage, GenOutput};

    fn job(id: &str) -> Arc<Job> {
        let request = GenRequest {
            model: "m".into(),
            options: kiln_pipeline::GenerateOptions::default(),
            shown_prompt: String::new(),
            init_image: None,
            mask: None,
            strength: 1.0,
            loras: Vec::new(),
            seed_per_image: false,
        };
        Job::new(id.into(), request)
    }

    fn output(bytes: usize) -> Arc<GenOutput> {
        Arc::new(GenOutput { images: vec![GenImage { png: vec![0; bytes], infotext: String::new() }], model: "m".into(), seconds: 0.0 })
    }

    #[test]
    fn the_queue_holds_its_capacity_in_order_and_closes() {
        let queue = Queue::new(2);
        let (a, b, c) = (job("a"), job("b"), job("c"));
        assert_eq!(queue.push(a.clone()), Ok(0));
        assert_eq!(queue.push(b.clone()), Ok(1));
        assert_eq!(queue.push(c.clone()), Err(PushError::Full { capacity: 2 }));
        assert_eq!(b.status(), JobStatus::Queued { position: 1 });
        // a cancelled waiting job leaves; the others move up
        assert!(queue.remove("a"));
        assert_eq!(b.status(), JobStatus::Queued { position: 0 });
        assert_eq!(queue.push(c.clone()), Ok(1));
        // a job cancelled before it runs is finished by pop, not returned
        b.cancel();
        assert_eq!(queue.pop().map(|j| j.id.clone()), Some("c".into()));
        assert_eq!(b.status(), JobStatus::Cancelled);
        queue.close();
        assert_eq!(queue.push(job("d")), Err(PushError::Closed));
        assert!(queue.pop().is_none(), "closed and empty");
    }

    #[test]
    fn finished_jobs_are_kept_within_count_and_bytes() {
        let store = JobStore::new(Duration::from_secs(600), 3);
        for i in 0..5 {
            let j = job(&format!("j{i}"));
            store.insert(j.clone());
            j.finish(Ok(output(10)));
            std::thread::sleep(Duration::from_millis(2));
        }
        // the insert of a sixth prunes the oldest finished beyond 3
        store.insert(job("live"));
        assert!(store.get("j0").is_none() && store.get("j1").is_none());
        assert!(store.get("j4").is_some() && store.get("live").is_some());
        // a finished job larger than the byte bound is not kept past the next prune
        let big = job("big");
        store.insert(big.clone());
        big.finish(Ok(output(KEPT_BYTES + 1)));
        assert!(store.get("big").is_none());
        // nor kept past its retention
        let short = JobStore::new(Duration::from_millis(1), 10);
        let j = job("old");
        short.insert(j.clone());
        j.finish(Ok(output(1)));
        std::thread::sleep(Duration::from_millis(5));
        assert!(short.get("old").is_none());
    }
}
