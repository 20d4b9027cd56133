//! Logging: human-readable on a terminal, JSON lines otherwise (or as configured).

use std::{io::IsTerminal, process::ExitCode};

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::{LogFormat, LogSettings};

/// Installs the global subscriber once (later calls are no-ops, e.g. in tests).
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match settings.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let registry = tracing_subscriber::registry().with(filter);
    let _ = if json {
        registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init()
    };
}

/// Prints a fatal error with its chain and returns exit code 1.
pub fn fatal(e: anyhow::Error) -> ExitCode {
    tracing::error!(error.chain = ?e, "fatal");
    eprintln!("error: {e:#}");
    ExitCode::FAILURE
}
