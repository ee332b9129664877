//! Logging: `tracing` to stderr, filtered by `SLIPWAY_LOG` (e.g. `debug`, `slipway_agent=trace`).

use tracing_subscriber::EnvFilter;

/// Install the global subscriber once; `default` is the filter when `SLIPWAY_LOG` is unset.
pub fn init(default: &str) {
    let filter = EnvFilter::try_from_env("SLIPWAY_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}
