//! A custom app under the clusterd master: `cargo run --example hello`, then
//! `curl 127.0.0.1:8081/` a few times and see different workers answer. The master handles the
//! same signals as the `clusterd` binary (TERM, INT, QUIT, HUP, TTIN, TTOU).

use std::time::Duration;

use actix_web::{HttpResponse, web};
use clusterd::{BootError, ClusterConfig, Master, WorkerApp, WorkerInfo};

/// The app. It holds what the master prepared before forking (here: a greeting).
struct Hello {
    greeting: String,
}

/// Per-worker state, created after fork in each worker.
#[derive(Clone)]
struct State {
    greeting: String,
    worker: u64,
}

impl WorkerApp for Hello {
    type State = State;

    async fn init(&self, worker: &WorkerInfo) -> Result<State, BootError> {
        // Open database pools, Redis connections and the like here: this runs in the worker.
        Ok(State {
            greeting: self.greeting.clone(),
            worker: worker.id,
        })
    }

    fn configure(state: &State, cfg: &mut web::ServiceConfig) {
        let state = state.clone();
        cfg.route(
            "/",
            web::get().to(move || {
                let body = format!("{} from worker {}\n", state.greeting, state.worker);
                async move { HttpResponse::Ok().body(body) }
            }),
        );
    }
}

fn main() -> anyhow::Result<()> {
    clusterd::log::init(clusterd::log::Format::Plain);
    let config = ClusterConfig {
        bind: "127.0.0.1:8081".parse()?,
        workers: 2,
        graceful_timeout: Duration::from_secs(10),
        ..ClusterConfig::default()
    };
    let sockets = clusterd::socket::Sockets::bind(config.sockets, config.bind, config.backlog)?;
    let app = Hello {
        greeting: "hello".into(),
    };
    Master::new(app, config, sockets)?.run()?;
    Ok(())
}
