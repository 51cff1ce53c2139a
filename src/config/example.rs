//! The commented example configuration, generated from the key declarations.

use super::*;

/// The commented example configuration, generated from [`KEYS`].
pub fn example_toml() -> String {
    let mut out = String::from(
        "# runner-supervisor configuration. Every key is shown with its default.\n\
         # Precedence: defaults < this file < environment < command-line flags.\n\
         # Any key can be set from the environment as SUPERVISOR_<SECTION>_<KEY>,\n\
         # e.g. [runner] drain_timeout is SUPERVISOR_RUNNER_DRAIN_TIMEOUT=15m.\n\
         # Durations take 90s, 15m, 6h or a bare number of seconds.\n",
    );
    let mut section = "";
    for k in KEYS {
        if k.section != section {
            section = k.section;
            out.push_str(&format!("\n[{section}]\n"));
        }
        if k.dotted() == "github.app_id" {
            out.push_str(APP_HOWTO);
        }
        let mut envs: Vec<String> = k.aliases.iter().map(|s| s.to_string()).collect();
        envs.push(k.env_name());
        out.push_str(&format!("# {} (env: {})\n", k.doc, envs.join(", ")));
        let rendered = example_line(k);
        out.push_str(&rendered);
        out.push('\n');
    }
    out
}

/// How to make a GitHub App, before its keys (README "GitHub App").
const APP_HOWTO: &str = "\
# --- Or a GitHub App instead of a token (no person's token; tokens renew hourly) ---
# 1. Settings > Developer settings > GitHub Apps > New GitHub App (an organisation's own
#    settings for organisation runners). Webhook: off. Permissions: repository runners
#    need Repository > Administration: Read and write; organisation runners need
#    Organization > Self-hosted runners: Read and write. Create it; note its App ID.
# 2. On the App's page: Private keys > Generate a private key (a .pem download).
#    Install it: chmod 600, owned by the supervisor's user (or a systemd credential).
# 3. Install App > the organisation or account > the repository (or all).
# 4. Set app_id and app_private_key_file below, and no token. installation_id is found.
";

/// A key's line in the example: `key = default`, or commented out when it has none.
pub(crate) fn example_line(k: &KeySpec) -> String {
    match (k.kind, k.default) {
        (_, None) => match k.kind {
            Kind::Map => format!("# {} = {{ NAME = \"value\" }}", k.key),
            Kind::List => format!("# {} = []", k.key),
            Kind::Int { .. } => format!("# {} = 0", k.key),
            _ => format!("# {} = \"\"", k.key),
        },
        (Kind::Int { .. } | Kind::Bool, Some(d)) => format!("{} = {d}", k.key),
        (Kind::List, Some(d)) => format!(
            "{} = [{}]",
            k.key,
            d.split(',')
                .map(|x| format!("\"{x}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        (_, Some(d)) => format!("{} = \"{d}\"", k.key),
    }
}
