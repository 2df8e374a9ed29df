//! Logging setup shared by master and workers: tracing to stderr, one whole line per event,
//! each tagged with the process's role (`master`, `worker 3`).
//!
//! tracing-subscriber formats an event into a buffer and hands it to stderr in one `write(2)`,
//! and a write of up to `PIPE_BUF` bytes to a pipe (the journal's, a terminal's, a test's) is
//! atomic, so lines from different processes never interleave mid-line.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{OnceLock, RwLock};

use tracing::{Event, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// The role printed on every line; a worker changes it right after `fork`.
static ROLE: RwLock<String> = RwLock::new(String::new());

/// Default filter: our lifecycle at info, actix's own chatter (one line per thread started or
/// stopped, one per empty session) only when it is a warning. `CLUSTERD_LOG` overrides it with
/// the same syntax (`info,actix_server=info`).
const DEFAULT_FILTER: &str = "info,actix_server=warn,actix_session=warn";

/// Set by a worker that shut its listening socket down on purpose (see `worker/`, retiring a
/// slot): actix's accept thread may then try to accept on it once more and log the `EINVAL` as
/// an error, which would read as a fault in the journal. Only that one kind of event is dropped.
static ACCEPT_ERROR_EXPECTED: AtomicBool = AtomicBool::new(false);

/// Tells the log that actix's accept thread will fail on a socket this worker shut down.
pub fn expect_accept_error() {
    ACCEPT_ERROR_EXPECTED.store(true, Ordering::Relaxed);
}

/// Drops actix's accept errors once [`expect_accept_error`] was called; passes everything else.
struct ExpectedAcceptError;

impl<S: Subscriber> tracing_subscriber::Layer<S> for ExpectedAcceptError {
    fn event_enabled(
        &self,
        event: &Event<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        !(ACCEPT_ERROR_EXPECTED.load(Ordering::Relaxed)
            && event
                .metadata()
                .target()
                .starts_with("actix_server::accept"))
    }
}

/// Sets the role tag of this process's lines.
pub fn set_role(role: impl Into<String>) {
    if let Ok(mut r) = ROLE.write() {
        *r = role.into();
    }
}

/// How each event is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// `2026-11-30T00:00:00Z  INFO [worker 3 pid 12] message key=value`: for people.
    #[default]
    Plain,
    /// One JSON object a line (`timestamp`, `level`, `role`, `target`, `message`, the fields):
    /// for log shippers.
    Json,
}

/// The format [`init`] installed.
static FORMAT: OnceLock<Format> = OnceLock::new();

/// The format [`init`] installed (for the access log, which writes its own lines).
pub(crate) fn format() -> Format {
    FORMAT.get().copied().unwrap_or_default()
}

/// This process's role tag.
pub(crate) fn role() -> String {
    ROLE.read().map(|r| r.clone()).unwrap_or_default()
}

/// Whether plain lines start with a timestamp (not under systemd, whose journal adds one).
pub(crate) fn timestamps() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_none()
}

/// `2026-12-06T01:29:44` (UTC) for a time in seconds since the epoch, as the log's timestamps
/// begin (the access log adds the fraction and the `Z`). Days to a civil date as in Howard
/// Hinnant's `civil_from_days`.
pub(crate) fn date_time(secs: u64) -> String {
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Installs the subscriber. Under systemd (`JOURNAL_STREAM` set) plain lines carry no
/// timestamp, since the journal adds its own.
pub fn init(format: Format) {
    let _ = FORMAT.set(format);
    set_role("master");
    let filter: Targets = std::env::var("CLUSTERD_LOG")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| DEFAULT_FILTER.parse().expect("default filter parses"));
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry()
        .with(ExpectedAcceptError)
        .with(filter)
        .with(crate::history::EventLayer);
    let _ = match format {
        Format::Plain => registry
            .with(layer.event_format(Line {
                timestamps: timestamps(),
            }))
            .try_init(),
        Format::Json => registry.with(layer.event_format(JsonLine)).try_init(),
    };
}

/// `--log-format json`: one object a line, built with serde_json, so any field value is
/// escaped properly.
struct JsonLine;

/// Collects an event's fields into a JSON object.
struct Fields(serde_json::Map<String, serde_json::Value>);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
}

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let mut fields = Fields(serde_json::Map::new());
        event.record(&mut fields);
        let mut line = serde_json::Map::new();
        line.insert("timestamp".into(), timestamp.into());
        line.insert("level".into(), event.metadata().level().as_str().into());
        let role = role();
        line.insert("role".into(), role.into());
        line.insert("target".into(), event.metadata().target().into());
        line.extend(fields.0);
        writeln!(writer, "{}", serde_json::Value::Object(line))
    }
}

struct Line {
    timestamps: bool,
}

impl<S, N> FormatEvent<S, N> for Line
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if self.timestamps {
            SystemTime.format_time(&mut writer)?;
            writer.write_char(' ')?;
        }
        let role = role();
        write!(writer, "{:>5} [{role}] ", event.metadata().level())?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn date_time_is_utc_civil_time() {
        assert_eq!(super::date_time(0), "1970-01-01T00:00:00");
        assert_eq!(super::date_time(951_782_400), "2000-02-29T00:00:00");
        assert_eq!(super::date_time(1_796_520_584), "2026-12-06T01:29:44");
    }
}
