//! Your app, clustered: the whole `clusterd` program around a two-route app. Run it with
//! `cargo run --example hello -- --bind 127.0.0.1:8081 --greeting hi`, then `curl` it a few
//! times and see different workers answer. It has every option of `clusterd` (`--help`),
//! `hello status|scale|reload`, systemd socket activation and notify, `/metrics`, in-place
//! upgrades of its own binary, and `--watch` for a development loop.

use actix_web::{HttpResponse, web};
use clusterd::counter::{self, Counter};
use clusterd::{BootError, Service, Setup, WorkerApp, WorkerInfo};

/// The app's own options: flags, environment variables and config-file keys, beside clusterd's.
#[derive(Debug, Clone, clap::Args)]
struct Options {
    /// What every answer starts with (re-read from the config file on reload)
    #[arg(
        long,
        env = "HELLO_GREETING",
        value_name = "TEXT",
        default_value = "hello"
    )]
    greeting: String,
}

/// What the master prepared before forking: the greeting and the counter.
struct Hello {
    greeting: String,
    served: Counter,
}

/// Per-worker state, made after the fork in each worker.
#[derive(Clone)]
struct State {
    greeting: String,
    worker: u64,
    served: Counter,
}

impl Service for Hello {
    type Options = Options;
    const NAME: &'static str = "hello";

    /// In the master: at start and on every reload (the new workers get the new greeting).
    fn build(options: Options, _: &Setup<'_>) -> Result<Self, BootError> {
        Ok(Hello {
            greeting: options.greeting,
            served: counter::counter("hello_greetings_total", "Greetings served"),
        })
    }
}

impl WorkerApp for Hello {
    type State = State;

    async fn init(&self, worker: &WorkerInfo) -> Result<State, BootError> {
        // Open database pools, Redis connections and the like here: this runs in the worker.
        Ok(State {
            greeting: self.greeting.clone(),
            worker: worker.id,
            served: self.served,
        })
    }

    fn configure(state: &State, cfg: &mut web::ServiceConfig) {
        let state = state.clone();
        cfg.route(
            "/",
            web::get().to(move || {
                state.served.inc();
                let body = format!("{} from worker {}\n", state.greeting, state.worker);
                async move { HttpResponse::Ok().body(body) }
            }),
        );
    }
}

fn main() -> std::process::ExitCode {
    clusterd::run::<Hello>()
}
