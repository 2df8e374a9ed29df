//! Concurrent misses of one session on one store handle share one read: the first asks the
//! store, the others wait for what it found. Right after a session's cached copy is
//! invalidated (a renewal, a change on another worker), the requests of that session that
//! arrive before the first read answers would otherwise each send the store the same read.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

/// What a shared read found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A record, which the reader offered to the cache (an invalidation may have refused it).
    Found,
    /// No record.
    Missing,
    /// A record that is not the store's JSON.
    Corrupt,
    /// The store did not answer.
    Failed,
}

/// The reads under way on one store handle, by session id.
#[derive(Default)]
pub(crate) struct Flights(Mutex<HashMap<String, watch::Receiver<Option<Outcome>>>>);

/// A read's place: it leads (asks the store) or follows one under way.
pub(crate) enum Turn<'a> {
    /// Ask the store, then [`Lead::finish`] with what it found.
    Lead(Lead<'a>),
    /// Another read of the session is under way: [`follow`] it.
    Follow(watch::Receiver<Option<Outcome>>),
}

/// The read that asks the store. Dropped without [`Lead::finish`] (its request went away),
/// its followers read for themselves.
pub(crate) struct Lead<'a> {
    flights: &'a Flights,
    id: String,
    tx: watch::Sender<Option<Outcome>>,
}

impl Flights {
    /// Joins the read of `id` under way, or leads a new one.
    pub(crate) fn join(&self, id: &str) -> Turn<'_> {
        let mut reads = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = reads.get(id) {
            return Turn::Follow(rx.clone());
        }
        let (tx, rx) = watch::channel(None);
        reads.insert(id.to_string(), rx);
        Turn::Lead(Lead {
            flights: self,
            id: id.to_string(),
            tx,
        })
    }
}

impl Lead<'_> {
    /// Tells the followers what the read found.
    pub(crate) fn finish(self, outcome: Outcome) {
        self.tx.send_replace(Some(outcome));
    }
}

impl Drop for Lead<'_> {
    /// The entry under `id` is this read's: a read is entered only when none is under way,
    /// and only its lead removes it.
    fn drop(&mut self) {
        let mut reads = self.flights.0.lock().unwrap_or_else(|e| e.into_inner());
        reads.remove(&self.id);
    }
}

/// What the read followed found; `None` when its request went away before it finished.
pub(crate) async fn follow(mut rx: watch::Receiver<Option<Outcome>>) -> Option<Outcome> {
    rx.wait_for(Option::is_some).await.ok().and_then(|v| *v)
}

#[cfg(test)]
mod tests {
    use super::{Flights, Outcome, Turn, follow};

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    }

    #[test]
    fn reads_of_one_session_under_way_together_share_the_first() {
        let flights = Flights::default();
        let Turn::Lead(lead) = flights.join("a") else {
            panic!("the first read leads")
        };
        let Turn::Follow(second) = flights.join("a") else {
            panic!("the second follows")
        };
        // Another session's read is not held up.
        assert!(matches!(flights.join("b"), Turn::Lead(_)));
        lead.finish(Outcome::Missing);
        assert_eq!(runtime().block_on(follow(second)), Some(Outcome::Missing));
        // Finished: the next read asks the store again.
        assert!(matches!(flights.join("a"), Turn::Lead(_)));
    }

    #[test]
    fn followers_of_a_read_whose_request_went_away_read_for_themselves() {
        let flights = Flights::default();
        let Turn::Lead(lead) = flights.join("a") else {
            panic!("the first read leads")
        };
        let Turn::Follow(second) = flights.join("a") else {
            panic!("the second follows")
        };
        drop(lead);
        assert_eq!(runtime().block_on(follow(second)), None);
        assert!(matches!(flights.join("a"), Turn::Lead(_)));
    }

    #[test]
    fn a_follower_that_waits_sees_the_outcome_sent_later() {
        let flights = Flights::default();
        let Turn::Lead(lead) = flights.join("a") else {
            panic!("the first read leads")
        };
        let Turn::Follow(second) = flights.join("a") else {
            panic!("the second follows")
        };
        runtime().block_on(async {
            let waiting = tokio::spawn(follow(second));
            tokio::task::yield_now().await;
            lead.finish(Outcome::Failed);
            assert_eq!(waiting.await.expect("join"), Some(Outcome::Failed));
        });
    }
}
