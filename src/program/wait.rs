//! `reload --wait` and `scale N --wait`: whether the status document says the change asked for
//! has completed, failed or is still under way (pure), and the client's polling loop around
//! it. Runs in the short-lived client process.

use std::time::{Duration, Instant};

use serde_json::Value;

/// How often the client asks the master.
const POLL_EVERY: Duration = Duration::from_millis(100);

/// Where a change stands.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Still rolling (or the master is between images).
    Pending,
    /// Done; what to print.
    Done(String),
    /// Failed; why.
    Failed(String),
}

/// What the status said before the change was asked for.
#[derive(Debug, Clone)]
pub struct Before {
    generation: u64,
    note: Option<String>,
}

impl Before {
    /// From a status document.
    pub fn of(doc: &Value) -> Before {
        Before {
            generation: doc["master"]["generation"].as_u64().unwrap_or(0),
            note: doc["master"]["note"].as_str().map(String::from),
        }
    }
}

/// A note the master leaves when a reload or an upgrade did not happen or was undone.
fn failure(note: &str) -> bool {
    ["reload failed", "reload aborted", "upgrade failed"]
        .iter()
        .any(|p| note.starts_with(p))
}

/// A reload asked after `before`: done once a newer generation serves with every wanted worker
/// and nothing rolls; failed once the master notes a failure it had not noted before (or notes
/// one again after a newer generation began).
pub fn reload(before: &Before, doc: &Value) -> Outcome {
    let m = &doc["master"];
    let generation = m["generation"].as_u64().unwrap_or(0);
    if let Some(note) = m["note"].as_str().filter(|n| failure(n))
        && (before.note.as_deref() != Some(note) || generation > before.generation)
    {
        return Outcome::Failed(note.to_string());
    }
    if generation > before.generation && m["reloading"] == false && m["workers"] == m["target"] {
        return Outcome::Done(format!(
            "reloaded: generation {generation}, {} workers serving",
            m["workers"]
        ));
    }
    Outcome::Pending
}

/// `scale N`: done once the master aims at `n` (or what it clamped `n` to, `target`) and that
/// many workers serve with nothing rolling.
pub fn scale(target: u64, doc: &Value) -> Outcome {
    let m = &doc["master"];
    if m["target"].as_u64() == Some(target)
        && m["workers"].as_u64() == Some(target)
        && m["reloading"] == false
    {
        return Outcome::Done(format!("{target} workers serving"));
    }
    Outcome::Pending
}

/// Polls `status` until `judge` decides (what was done, or why it failed) or `timeout` passes
/// (a failure). A status that cannot be read (the master is between images during an upgrade)
/// is asked again.
pub fn poll(
    timeout: Duration,
    mut status: impl FnMut() -> Result<Value, String>,
    judge: impl Fn(&Value) -> Outcome,
) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let mut last: String;
    loop {
        match status() {
            Ok(doc) => match judge(&doc) {
                Outcome::Pending => last = doc["master"]["status"].as_str().unwrap_or("").into(),
                Outcome::Done(what) => return Ok(what),
                Outcome::Failed(why) => return Err(why),
            },
            Err(e) => last = e,
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} ({last})"));
        }
        std::thread::sleep(POLL_EVERY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(generation: u64, reloading: bool, workers: u64, target: u64, note: Value) -> Value {
        json!({ "master": {
            "generation": generation, "reloading": reloading, "workers": workers,
            "target": target, "note": note, "status": "x",
        }})
    }

    #[test]
    fn a_reload_is_done_when_a_newer_generation_serves_whole() {
        let before = Before::of(&doc(3, false, 2, 2, Value::Null));
        assert_eq!(
            reload(&before, &doc(3, false, 2, 2, Value::Null)),
            Outcome::Pending
        );
        assert_eq!(
            reload(&before, &doc(4, true, 1, 2, Value::Null)),
            Outcome::Pending
        );
        assert_eq!(
            reload(&before, &doc(4, false, 1, 2, Value::Null)),
            Outcome::Pending
        );
        assert!(matches!(
            reload(&before, &doc(4, false, 2, 2, Value::Null)),
            Outcome::Done(_)
        ));
    }

    #[test]
    fn a_reload_fails_on_a_new_failure_note_only() {
        let old = json!("reload failed: parsing config file x: bad");
        let before = Before::of(&doc(3, false, 2, 2, old.clone()));
        // The same note from before the request: not this reload's (yet).
        assert_eq!(
            reload(&before, &doc(3, false, 2, 2, old.clone())),
            Outcome::Pending
        );
        let aborted = json!("reload aborted: the new workers did not boot");
        assert_eq!(
            reload(&before, &doc(4, false, 2, 2, aborted)),
            Outcome::Failed("reload aborted: the new workers did not boot".into())
        );
        // The same failure again, after a newer generation began, is this one's.
        assert!(matches!(
            reload(&before, &doc(4, false, 2, 2, old)),
            Outcome::Failed(_)
        ));
        let other = json!("some other note");
        assert!(matches!(
            reload(
                &Before::of(&doc(3, false, 2, 2, Value::Null)),
                &doc(4, false, 2, 2, other)
            ),
            Outcome::Done(_)
        ));
    }

    #[test]
    fn scaling_is_done_when_that_many_serve() {
        assert_eq!(
            scale(3, &doc(1, false, 2, 3, Value::Null)),
            Outcome::Pending
        );
        assert_eq!(scale(3, &doc(1, true, 3, 3, Value::Null)), Outcome::Pending);
        assert!(matches!(
            scale(3, &doc(1, false, 3, 3, Value::Null)),
            Outcome::Done(_)
        ));
    }

    #[test]
    fn polling_gives_up_at_the_timeout_and_rides_over_unreadable_statuses() {
        let mut n = 0;
        let out = poll(
            Duration::from_millis(50),
            || {
                n += 1;
                Err("connection refused".into())
            },
            |_| Outcome::Pending,
        );
        assert!(
            matches!(out, Err(ref e) if e.contains("timed out")),
            "{out:?}"
        );
        let mut answers = vec![
            Ok(doc(2, false, 2, 2, Value::Null)),
            Err("between images".into()),
        ];
        let out = poll(
            Duration::from_secs(5),
            || answers.pop().unwrap(),
            |d| scale(2, d),
        );
        assert!(out.is_ok(), "{out:?}");
    }
}
