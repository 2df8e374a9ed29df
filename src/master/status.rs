//! The one-line status the master shows systemd (`STATUS=`). Pure; runs in the master.

/// What the status line is made of, taken from the worker table.
#[derive(Debug, Clone, Default)]
pub struct Snapshot<'a> {
    /// Live workers that serve.
    pub ready: usize,
    /// Workers wanted.
    pub target: usize,
    /// Unplanned deaths since start.
    pub restarts: u64,
    /// A rolling restart is under way.
    pub reloading: bool,
    /// Workers asked to stop that are still there: draining their requests (their `/healthz`
    /// answers 503 "draining").
    pub draining: usize,
    /// The last health report of every live worker that sent one (true = up).
    pub health: Vec<bool>,
    /// What the health reports are about ("store redis"), if the app reports any.
    pub label: Option<&'a str>,
    /// Something the operator should know, e.g. why the last reload failed.
    pub note: Option<&'a str>,
}

impl Snapshot<'_> {
    /// "2/2 workers ready, 0 restarts, store redis ok".
    pub fn line(&self) -> String {
        let mut s = format!(
            "{}/{} workers ready, {} restarts",
            self.ready, self.target, self.restarts
        );
        if self.reloading {
            s.push_str(", reloading");
        }
        if self.draining > 0 {
            s.push_str(&format!(", {} draining", self.draining));
        }
        let label = self.label.unwrap_or("app");
        if !self.health.is_empty() {
            let down = self.health.iter().filter(|ok| !**ok).count();
            if down == 0 {
                s.push_str(&format!(", {label} ok"));
            } else {
                s.push_str(&format!(
                    ", {label} down on {down}/{} workers",
                    self.health.len()
                ));
            }
        } else if self.label.is_some() {
            s.push_str(&format!(", {label}"));
        }
        if let Some(note) = self.note {
            s.push_str("; ");
            s.push_str(note);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_readiness_restarts_and_health() {
        let mut s = Snapshot {
            ready: 1,
            target: 2,
            restarts: 3,
            reloading: true,
            draining: 0,
            health: vec![true, false],
            label: Some("store redis"),
            note: None,
        };
        assert_eq!(
            s.line(),
            "1/2 workers ready, 3 restarts, reloading, store redis down on 1/2 workers"
        );
        s.health = vec![true];
        s.reloading = false;
        assert_eq!(s.line(), "1/2 workers ready, 3 restarts, store redis ok");
        s.health.clear();
        assert_eq!(s.line(), "1/2 workers ready, 3 restarts, store redis");
        s.draining = 2;
        assert_eq!(
            s.line(),
            "1/2 workers ready, 3 restarts, 2 draining, store redis"
        );
        s.draining = 0;
        s.note = Some("reload failed: parsing config file x: bad");
        assert_eq!(
            s.line(),
            "1/2 workers ready, 3 restarts, store redis; reload failed: parsing config file x: bad"
        );
    }
}
