//! `supervisor pruner` and `supervisor autoheal`: the host-wide services of a Docker
//! engine, one container each in the compose stack. Each writes its own `status.json`
//! (so the image's `supervisor health` check works in every container) and stops on
//! SIGTERM or SIGINT.

use std::process::ExitCode;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{CliInput, Config, Purpose};
use crate::os::shutdown;
use crate::os::telemetry;
use crate::status::Board;

/// Which service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Pruner,
    Autoheal,
}

impl Service {
    fn mode(self) -> &'static str {
        match self {
            Service::Pruner => "prune",
            Service::Autoheal => "autoheal",
        }
    }
}

/// Run `service` until signalled.
pub fn main(input: CliInput, service: Service) -> ExitCode {
    let cfg = match super::resolve(&input, Purpose::Local) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if service == Service::Pruner && cfg.disk.prune == crate::config::Toggle::Off {
        eprintln!(
            "supervisor: disk.prune is off (SUPERVISOR_DISK_PRUNE); the pruner has nothing to do"
        );
        return ExitCode::from(super::EXIT_CONFIG);
    }
    telemetry::init(&cfg.log.level, cfg.log.json);
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(run(Arc::new(cfg), service)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("supervisor: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(cfg: Arc<Config>, service: Service) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.state_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot create the state directory {}: {e}",
            cfg.state_dir.display()
        )
    })?;
    // As PID 1 of its container it reaps whatever is re-parented to it.
    let reaper = CancellationToken::new();
    tokio::spawn(crate::os::procs::run_reaper(reaper.clone()));
    let board = Arc::new(Board::new(0, cfg.health.unhealthy_after));
    board.set_service(service.mode());
    let status_path = crate::supervisor::status_path(&cfg.state_dir);
    // Stops the service's work and its status writer.
    let stop_service = CancellationToken::new();
    let writer = {
        let (board, path, stop) = (board.clone(), status_path.clone(), stop_service.clone());
        tokio::spawn(async move { board.run_writer(path, stop).await })
    };
    tracing::info!(
        event = "starting",
        version = env!("CARGO_PKG_VERSION"),
        service = service.mode(),
        "runner-supervisor starting"
    );
    let work = match service {
        Service::Pruner => tokio::spawn(crate::docker::disk::run(
            cfg.disk.clone(),
            cfg.shared_dir.clone(),
            board.clone(),
            Default::default(),
            stop_service.clone(),
        )),
        Service::Autoheal => tokio::spawn(crate::docker::autoheal::run(
            cfg.autoheal.clone(),
            cfg.disk.docker_host.clone(),
            cfg.shared_dir.clone(),
            board.clone(),
            stop_service.clone(),
        )),
    };
    let signal = shutdown::first_signal().await;
    tracing::info!(
        event = "stopping",
        service = service.mode(),
        signal,
        "stopping"
    );
    stop_service.cancel();
    let _ = work.await;
    let _ = writer.await;
    board.write_final(&status_path);
    reaper.cancel();
    tracing::info!(event = "stopped", "runner-supervisor stopped");
    Ok(())
}
