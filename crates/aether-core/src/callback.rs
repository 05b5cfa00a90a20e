//! The callback style of Python AetherMagic's `AetherTask` (`on_perform`, `on_status`,
//! `on_complete`, `on_cancel`; `idle()`, `perform(data)`, `status(progress)`,
//! `complete(succeed, data)`), built on the same client and worker as the typed API.
//!
//! ```
//! # async fn demo(aether: aether_core::Aether) -> aether_core::Result<()> {
//! use aether_core::AetherTask;
//! use serde_json::{Value, json};
//!
//! // Worker side: announce and take performs.
//! let _worker = AetherTask::new(&aether, "interop", "echo")
//!     .on_perform(|task: AetherTask, data: Value| async move {
//!         let _ = task.status(50, json!({"stage": "half"})).await;
//!         let _ = task.complete(true, json!({"echo": data})).await;
//!     })
//!     .idle()
//!     .await?;
//!
//! // Client side: perform and follow.
//! AetherTask::new(&aether, "interop", "echo")
//!     .on_complete(|_task: AetherTask, succeed: bool, data: Value| async move {
//!         println!("succeed={succeed} data={data}");
//!     })
//!     .perform(json!({"i": 0}))
//!     .await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::oneshot;

use crate::context::TaskContext;
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::node::{Aether, DEFAULT_CONTEXT};
use crate::worker::{Failure, Handler, Produce, Worker};

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;
type OnPerform = Arc<dyn Fn(AetherTask, Value) -> BoxFuture + Send + Sync>;
type OnStatus = Arc<dyn Fn(AetherTask, bool, bool, u8, Value) -> BoxFuture + Send + Sync>;
type OnComplete = Arc<dyn Fn(AetherTask, bool, Value) -> BoxFuture + Send + Sync>;
type OnCancel = Arc<dyn Fn(AetherTask, Value) -> BoxFuture + Send + Sync>;

#[derive(Clone, Default)]
struct Callbacks {
    perform: Option<OnPerform>,
    status: Option<OnStatus>,
    complete: Option<OnComplete>,
    cancel: Option<OnCancel>,
}

/// A task in the style of Python AetherMagic's `AetherTask`.
#[derive(Clone)]
pub struct AetherTask {
    node: Aether,
    job: String,
    task: String,
    context: String,
    channel: String,
    tid: String,
    callbacks: Callbacks,
    /// Set on the copy handed to `on_perform`: the running task to report on.
    running: Option<Running>,
}

/// Where `complete(succeed, data)` sends its answer; taken by the first call.
type Completion = Arc<Mutex<Option<oneshot::Sender<(bool, Value)>>>>;

#[derive(Clone)]
struct Running {
    ctx: TaskContext,
    done: Completion,
}

impl AetherTask {
    /// A task of `job`/`task` in context `x`, with a fresh 8-hex-digit tid (as Python).
    pub fn new(node: &Aether, job: &str, task: &str) -> AetherTask {
        AetherTask {
            node: node.clone(),
            job: job.to_owned(),
            task: task.to_owned(),
            context: DEFAULT_CONTEXT.to_owned(),
            channel: String::new(),
            tid: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
            callbacks: Callbacks::default(),
            running: None,
        }
    }

    /// Sets the context.
    pub fn context(mut self, context: &str) -> Self {
        self.context = context.to_owned();
        self
    }
    /// Sets the channel.
    pub fn channel(mut self, channel: &str) -> Self {
        self.channel = channel.to_owned();
        self
    }
    /// Sets the tid.
    pub fn tid(mut self, tid: &str) -> Self {
        self.tid = tid.to_owned();
        self
    }
    /// The tid.
    pub fn current_tid(&self) -> &str {
        &self.tid
    }

    /// Called with a copy of this task (carrying the perform's tid) and the perform's data.
    /// The task ends when the copy's [`AetherTask::complete`] is called.
    pub fn on_perform<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(AetherTask, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.callbacks.perform = Some(Arc::new(move |t, d| Box::pin(f(t, d))));
        self
    }

    /// Called with `(task, complete, succeed, progress, data)` for each status and for the
    /// completion. A quick task may have no progress-0 status before its completion: an
    /// aether worker holds the acceptance back for the client's `Config::defer_accept`
    /// where the transport makes that safe; a Python worker always sends it.
    pub fn on_status<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(AetherTask, bool, bool, u8, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.callbacks.status = Some(Arc::new(move |t, c, s, p, d| Box::pin(f(t, c, s, p, d))));
        self
    }

    /// Called with `(task, succeed, data)` when the task completes.
    pub fn on_complete<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(AetherTask, bool, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.callbacks.complete = Some(Arc::new(move |t, s, d| Box::pin(f(t, s, d))));
        self
    }

    /// Called with `(task, data)` on the worker side when a running task is cancelled.
    pub fn on_cancel<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(AetherTask, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.callbacks.cancel = Some(Arc::new(move |t, d| Box::pin(f(t, d))));
        self
    }

    /// Announces this task as idle and takes performs for it in the workgroup `workgroup`
    /// (as Python AetherTask does), calling `on_perform`. Keep the returned worker alive.
    pub async fn idle(&self) -> Result<Worker> {
        if self.callbacks.perform.is_none() {
            return Err(Error::Config("idle() needs an on_perform callback".into()));
        }
        self.node
            .worker()
            .channel(&self.channel)
            .handle_erased(
                &self.job,
                &self.task,
                &self.context,
                Arc::new(CallbackHandler { task: self.clone() }),
            )
            .start()
            .await
    }

    /// Performs this task with `data`, calling `on_status` and `on_complete` as updates
    /// arrive. Returns the tid.
    pub async fn perform(&self, data: Value) -> Result<String> {
        let mut handle = self
            .node
            .client()
            .task(&self.job, &self.task)
            .context(&self.context)
            .channel(&self.channel)
            .tid(&self.tid)
            .perform(&data)
            .await?;
        let me = self.clone();
        tokio::spawn(async move {
            while let Some(p) = handle.next_progress().await {
                if let Some(f) = &me.callbacks.status {
                    f(
                        me.clone(),
                        false,
                        false,
                        p.percent,
                        p.envelope().data_value(),
                    )
                    .await;
                }
            }
            let (succeed, data) = match handle.outcome().await {
                Ok(env) => (true, env.data_value()),
                Err(Error::TaskFailed { data, .. }) => (false, data),
                Err(e) => (false, serde_json::json!({ "error": e.to_string() })),
            };
            if let Some(f) = &me.callbacks.status {
                f(me.clone(), true, succeed, 100, data.clone()).await;
            }
            if let Some(f) = &me.callbacks.complete {
                f(me.clone(), succeed, data).await;
            }
        });
        Ok(self.tid.clone())
    }

    /// Reports progress on a task received through `on_perform`.
    pub async fn status(&self, progress: u8, data: Value) -> Result<()> {
        let running = self.running()?;
        running.ctx.progress_with(progress, &data).await
    }

    /// Completes a task received through `on_perform`. Only the first call counts.
    pub async fn complete(&self, succeed: bool, data: Value) -> Result<()> {
        let running = self.running()?;
        let sender = running
            .done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(tx) = sender {
            let _ = tx.send((succeed, data));
        }
        Ok(())
    }

    fn running(&self) -> Result<&Running> {
        self.running.as_ref().ok_or(Error::NotReceived)
    }
}

impl fmt::Debug for AetherTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AetherTask")
            .field("job", &self.job)
            .field("task", &self.task)
            .field("context", &self.context)
            .field("tid", &self.tid)
            .finish_non_exhaustive()
    }
}

struct CallbackHandler {
    task: AetherTask,
}

impl Handler for CallbackHandler {
    fn call(
        &self,
        ctx: TaskContext,
        env: &Envelope,
    ) -> Pin<Box<dyn Future<Output = Result<Produce, Failure>> + Send + 'static>> {
        let (tx, rx) = oneshot::channel();
        let mut copy = self.task.clone().tid(ctx.tid());
        copy.running = Some(Running {
            ctx: ctx.clone(),
            done: Arc::new(Mutex::new(Some(tx))),
        });
        let data = env.data_value();
        Box::pin(async move {
            let on_perform = copy.callbacks.perform.clone().expect("checked in idle()");
            tokio::spawn(on_perform(copy.clone(), data.clone()));
            tokio::select! {
                done = rx => match done {
                    Ok((true, data)) => Ok(Box::new(move |c: crate::Codec| c.to_vec(&data)) as Produce),
                    Ok((false, data)) => {
                        let message = match &data {
                            Value::Object(m) => m.get("error").and_then(Value::as_str).unwrap_or("failed").to_owned(),
                            Value::String(s) => s.clone(),
                            _ => "failed".to_owned(),
                        };
                        Err(Failure { message, data: Some(Box::new(move |c: crate::Codec| c.to_vec(&data))) })
                    }
                    Err(_) => Err(Failure::message("the task was dropped without complete()".into())),
                },
                _ = ctx.cancelled() => {
                    if let Some(f) = &copy.callbacks.cancel {
                        f(copy.clone(), data).await;
                    }
                    Err(Failure::message("cancelled".into()))
                }
            }
        })
    }
}
