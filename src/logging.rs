//! Log setup from the `log` config section: JSON or human format (JSON when stdout is not a terminal, so
//! journald, ECS and log shippers get one object per line), an EnvFilter level (`RUST_LOG` wins when set), and
//! an optional rolling file through tracing-appender. The returned guard must live until `main` returns or the
//! file writer loses its last lines.

use std::io::IsTerminal;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{RollingFileAppender, Rotation as AppenderRotation};
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogConfig, LogFormat, Rotation};

/// Where the console stream goes: the daemon logs to stdout; one-shot commands keep stdout for their output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Console {
    Stdout,
    Stderr,
}

pub fn init(log: &LogConfig, console: Console) -> std::io::Result<Option<WorkerGuard>> {
    let filter =
        || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    let is_tty = match console {
        Console::Stdout => std::io::stdout().is_terminal(),
        Console::Stderr => std::io::stderr().is_terminal(),
    };
    let json = match log.format {
        Some(LogFormat::Json) => true,
        Some(LogFormat::Pretty) => false,
        None => !is_tty,
    };
    let writer = || match console {
        Console::Stdout => BoxMakeWriter::new(std::io::stdout),
        Console::Stderr => BoxMakeWriter::new(std::io::stderr),
    };
    let console_layer = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(writer())
            .with_filter(filter())
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_ansi(is_tty)
            .with_writer(writer())
            .with_filter(filter())
            .boxed()
    };
    let (file_layer, guard) = match &log.file {
        Some(f) => {
            // The appender does not create missing directories on every platform; do it so a typo fails here.
            std::fs::create_dir_all(&f.directory)?;
            let rotation = match f.rotation {
                Rotation::Minutely => AppenderRotation::MINUTELY,
                Rotation::Hourly => AppenderRotation::HOURLY,
                Rotation::Daily => AppenderRotation::DAILY,
                Rotation::Never => AppenderRotation::NEVER,
            };
            let appender = RollingFileAppender::builder()
                .rotation(rotation)
                .filename_prefix(&f.prefix)
                .build(&f.directory)
                .map_err(std::io::Error::other)?;
            let (writer, guard) = tracing_appender::non_blocking(appender);
            let layer = tracing_subscriber::fmt::layer()
                .json()
                .with_writer(writer)
                .with_filter(filter())
                .boxed();
            (Some(layer), Some(guard))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(console_layer)
        .with(file_layer)
        .try_init()
        .map_err(std::io::Error::other)?;
    Ok(guard)
}
