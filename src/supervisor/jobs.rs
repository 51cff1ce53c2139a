//! The job records at start: opened, the records a killed supervisor left open closed as
//! lost, and lost jobs' re-runs planned (`[jobs] rerun_lost`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::config::Config;
use crate::status::Board;

/// The job records: records a killed supervisor left open are closed as lost (cause
/// `supervisor`). `None` (said once) when the store cannot be opened.
pub(super) fn open(cfg: &Config, board: &Arc<Board>) -> (Option<Arc<crate::jobs::Journal>>, usize) {
    let path = cfg.state_dir.join("jobs.redb");
    let store = match crate::jobs::store::JobStore::open(&path, cfg.jobs.keep, cfg.jobs.keep_for) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(event = "jobs_store_failed", error = %e, "cannot keep job records: {e}");
            return (None, 0);
        }
    };
    let reruns = cfg.jobs.rerun.enabled.then(|| {
        let (b1, b2) = (board.clone(), board.clone());
        crate::jobs::rerun::Reruns::new(
            cfg.jobs.rerun.clone(),
            crate::jobs::rerun::Reporter {
                result: Box::new(move |r| b1.stats.jobs_rerun_by.add(r)),
                pending: Box::new(move |n| b2.stats.reruns_pending.store(n, Ordering::Relaxed)),
            },
        )
    });
    let now = crate::os::clocks::wall_now();
    let plan = |r: &mut crate::jobs::JobRecord| {
        if let Some(p) = &reruns {
            p.plan(r, now)
        }
    };
    let closed = match store.close_open("supervisor", "recorded", now, plan) {
        Ok(ids) => {
            if !ids.is_empty() {
                tracing::warn!(event = "jobs_lost_with_supervisor", records = ?ids, "{} job(s) were running when the supervisor last stopped without seeing them end: recorded as lost (cause supervisor)", ids.len());
            }
            ids.len()
        }
        Err(e) => {
            tracing::warn!(event = "jobs_store_failed", error = %e, "cannot close the open job records: {e}");
            0
        }
    };
    (
        Some(Arc::new(crate::jobs::Journal::start(
            Arc::new(store),
            reruns,
        ))),
        closed,
    )
}
