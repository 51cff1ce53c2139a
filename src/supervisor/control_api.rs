//! The control socket's requests, carried out over the slots' shared state: status,
//! breaker reset, drain, recycle, runner upgrade and retry, the job hooks' reports and the
//! job records.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::os::shutdown::Mode;
use crate::slot::Shared;
use crate::status::host::SlotCmd;

/// What the control socket may do, over the slots' shared state.
pub(super) struct Control {
    pub(super) shared: Arc<Shared>,
    pub(super) mode: Arc<watch::Sender<Mode>>,
    pub(super) cmds: Vec<mpsc::UnboundedSender<SlotCmd>>,
}

impl crate::status::control::Api for Control {
    fn runner_upgrade(&self) -> Result<(), String> {
        if self.shared.host.autopilot(|_| ()).is_none() {
            return Err("[runner] auto_update is not \"on\": nothing upgrades by itself".into());
        }
        self.shared.host.check_versions.notify_one();
        Ok(())
    }

    fn runner_retry(&self) -> Vec<String> {
        let cleared = self
            .shared
            .host
            .autopilot(|f| {
                let b: Vec<String> = f.bad().iter().cloned().collect();
                f.retry();
                b
            })
            .unwrap_or_default();
        let board = &self.shared.board;
        board.system(|s| s.runner_bad.clear());
        if let Some(st) = self.shared.host.versions_store.get() {
            st.clear_bad();
        }
        board.set_condition(crate::status::Condition::RunnerUpgrade, None);
        self.shared.host.check_versions.notify_one();
        cleared
    }

    fn status(&self) -> crate::status::StatusFile {
        self.shared.board.snapshot()
    }

    fn job_hook(
        &self,
        hook: crate::jobs::hooks::Hook,
        id: crate::jobs::JobIdentity,
    ) -> Result<usize, String> {
        use crate::status::SlotState;
        let board = &self.shared.board;
        let slot = board
            .snapshot()
            .slots
            .iter()
            .position(|s| {
                s.runner.as_deref() == Some(id.runner.as_str())
                    && matches!(s.state, SlotState::Listening | SlotState::Busy)
            })
            .ok_or_else(|| {
                format!(
                    "no listening or busy slot of this supervisor runs {:?}",
                    id.runner
                )
            })?;
        tracing::info!(event = "job_hook", slot, hook = hook.word(), runner = %id.runner, repository = %id.repository, run_id = id.run_id, run_attempt = id.run_attempt, job = %id.job, workflow = %id.workflow, "{} {} run {} attempt {} job {}", hook.word(), id.repository, id.run_id, id.run_attempt, id.job);
        if hook == crate::jobs::hooks::Hook::Started {
            if let Some(j) = &self.shared.jobs {
                j.identified(slot, id.clone());
            }
            board.update(slot, |s| s.job_of = Some(id));
        }
        Ok(slot)
    }

    fn jobs(&self, lost_only: bool) -> Result<Vec<crate::jobs::JobRecord>, String> {
        match &self.shared.jobs {
            Some(j) => j.list(lost_only).map_err(|e| e.to_string()),
            None => {
                Err("this supervisor keeps no job records (see its log: jobs_store_failed)".into())
            }
        }
    }

    fn reset_breaker(&self, slot: Option<usize>) -> Result<Vec<usize>, String> {
        self.shared.reset_breakers(slot)
    }

    fn drain(&self) -> bool {
        let started = self.mode.send_if_modified(|m| {
            if *m == Mode::Run {
                *m = Mode::Drain;
                true
            } else {
                false
            }
        });
        if started {
            tracing::info!(event = "drain", "draining (asked through the control socket): no new jobs; idle runners stop now, busy ones may finish their job");
        }
        started
    }

    fn recycle(&self, slot: Option<usize>) -> Result<Vec<usize>, String> {
        let n = self.cmds.len();
        if let Some(i) = slot.filter(|i| *i >= n) {
            return Err(format!(
                "no slot {i}: this supervisor has slots 0..{}",
                n.saturating_sub(1)
            ));
        }
        let mut done = vec![];
        for (i, _) in self.shared.host.listening() {
            if slot.is_none_or(|s| s == i) && self.cmds[i].send(SlotCmd::Recycle).is_ok() {
                tracing::info!(
                    event = "recycle",
                    slot = i,
                    "recycling the idle listener (asked through the control socket)"
                );
                done.push(i);
            }
        }
        Ok(done)
    }
}
