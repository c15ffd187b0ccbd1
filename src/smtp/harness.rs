//! The door without a store, for its unit tests and the fuzz targets
//! (`crate::fuzzing`): a pipeline that records what it is handed, and the listener's
//! context as the daemon builds it but without TLS or connection limits.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::listener::ListenerContext;
use super::policy::SpaceCheck;
use crate::config::{Config, Live};
use crate::pipeline::{Submission, Submit, SubmitError};
use crate::store::StoreError;

/// The pipeline's interface without a store: records what it is handed, answers with
/// ids `TEST1`, `TEST2`... or, while `fail` is set, a store failure.
#[derive(Debug, Default)]
pub struct FakePipeline {
    /// Every submission handed in, in order.
    pub got: std::sync::Mutex<Vec<Submission>>,
    /// While set, every commit fails as a full disk does.
    pub fail: std::sync::atomic::AtomicBool,
}

impl Submit for FakePipeline {
    fn submit(
        &self,
        s: Submission,
    ) -> Pin<Box<dyn std::future::Future<Output = Result<String, SubmitError>> + Send + '_>> {
        Box::pin(async move {
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(SubmitError::Store(StoreError::Io(
                    "No space left on device".into(),
                )));
            }
            let mut got = self.got.lock().expect("not poisoned");
            got.push(s);
            Ok(format!("TEST{}", got.len()))
        })
    }
}

/// The door's shared context over `config`, handing mail to `submit`, as the daemon
/// builds it but without TLS or connection limits.
pub fn listener_context(
    config: Config,
    submit: Arc<dyn Submit>,
    space: Arc<dyn SpaceCheck>,
) -> ListenerContext {
    ListenerContext {
        submit,
        live: Arc::new(Live::new(config)),
        space,
        metrics: Arc::default(),
        policy: std::sync::Mutex::new(None),
        permits: Arc::new(Semaphore::new(10)),
        idle_timeout: Duration::from_secs(300),
        tls: None,
        auth_failures: Default::default(),
        connection_rate: None,
        per_address: 0,
        open_per_address: Arc::default(),
        min_data_rate: 0,
    }
}
