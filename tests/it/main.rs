//! Integration tests: the supervisor against the fake GitHub and the fake runner.
//! Signal and exit-code behaviour goes through the real binary.
// Tests and benches measure and read real time on purpose (see clippy.toml).
#![allow(clippy::disallowed_methods)]

mod support;

mod action_cache;
mod app;
mod arc;
mod blackhole;
mod clock;
mod compose;
mod config_cli;
mod connections;
mod containers;
mod control;
mod disk;
mod doctor;
mod events;
mod footprint;
mod github_client;
mod health;
mod intake;
mod job_records;
mod jobs;
mod keepawake;
mod layering;
mod lease;
mod listener;
mod metrics;
mod network;
mod packaging;
mod registration;
mod reruns;
mod resume;
mod scaleset;
mod scaleset_client;
mod scaleset_emulator;
mod scaleset_emulator_e2e;
mod scaleset_flows;
mod shutdown;
mod systemd;
mod systemd_boot;
mod token;
mod upgrades;
mod versions;
mod watchdog;
