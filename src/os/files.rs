//! The one thread that writes the supervisor's files while it runs (`status.json` and
//! its fleet copy, the job records): off the runtime's thread, which reads the
//! listeners' lines and must never wait for a slow disk (a laptop's, an overlay), and
//! without a pool thread kept alive between writes.
//!
//! Work runs in the order it was submitted. The thread, named `files`, is started at the
//! first write and then sleeps in `recv` until the next one: it wakes only to write.

use std::sync::mpsc::{channel, Sender};
use std::sync::{Mutex, OnceLock};

type Work = Box<dyn FnOnce() + Send>;

static FILES: OnceLock<Mutex<Sender<Work>>> = OnceLock::new();

/// Run `work` on the files thread, after everything submitted before it.
pub fn submit(work: impl FnOnce() + Send + 'static) {
    let tx = FILES.get_or_init(|| {
        let (tx, rx) = channel::<Work>();
        std::thread::Builder::new()
            .name("files".into())
            .spawn(move || {
                for w in rx {
                    w();
                }
            })
            .expect("a thread for the files");
        Mutex::new(tx)
    });
    let tx = tx.lock().unwrap_or_else(|p| p.into_inner());
    // The thread lives as long as the process: the send cannot fail.
    let _ = tx.send(Box::new(work));
}

/// Run `work` on the files thread and wait for its result.
pub async fn run<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    submit(move || {
        let _ = tx.send(work());
    });
    rx.await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_in_order_on_one_thread_named_files() {
        let seen = std::sync::Arc::new(Mutex::new(vec![]));
        for i in 0..10 {
            let s = seen.clone();
            submit(move || s.lock().unwrap().push(i));
        }
        let name = run(|| std::thread::current().name().map(String::from)).await;
        assert_eq!(name, Some(Some("files".into())));
        assert_eq!(*seen.lock().unwrap(), (0..10).collect::<Vec<_>>());
    }
}
