//! Starting the service: adopt or bind the sockets, build the app, open the control and metrics
//! sockets, run the master; and `--check-config`, which reads what that reads and nothing
//! more. Runs in the master.

use anyhow::Context;

use super::{EXIT_CONFIG, Loader, Service, Setup, client};
use crate::config::Config;
use crate::master::upgrade::{self, Binary};
use crate::master::{self, Master, Reloaded};
use crate::worker::BootError;
use crate::{privileges, socket};

/// Why the service could not start or ended, and its exit code.
pub(super) struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

fn fail(code: u8) -> impl FnOnce(anyhow::Error) -> Failure {
    move |error| Failure { code, error }
}

/// The exit code of a build that failed: 2 if the options cannot work, 1 otherwise.
fn build_failed(e: BootError) -> Failure {
    let code = if matches!(e, BootError::Config(_)) {
        EXIT_CONFIG
    } else {
        1
    };
    Failure {
        code,
        error: anyhow::anyhow!("{e}"),
    }
}

pub(super) fn run<S: Service>(
    watch: bool,
    config: Config,
    options: S::Options,
    binary: Option<Binary>,
    mut inherited: Option<upgrade::State>,
    loader: Loader<S>,
) -> Result<(), Failure> {
    // Sockets from systemd (or from the previous image, after an upgrade) come first, before
    // any file is opened: their descriptors must not be confused with ours.
    let from_systemd = socket::from_systemd()
        .context("adopting the systemd socket")
        .map_err(fail(EXIT_CONFIG))?
        .unwrap_or_default();
    let mut passed = Some(from_systemd.activation).filter(|a| !a.is_empty());
    let mut stored = from_systemd.stored;
    let inherited_sockets = match inherited.as_mut() {
        Some(state) => Some(
            state
                .take_sockets()
                .map_err(anyhow::Error::from)
                .and_then(|s| socket::Sockets::import(s).map_err(anyhow::Error::from))
                .context("adopting the previous image's sockets")
                .map_err(fail(1))?,
        ),
        None => None,
    };
    let cluster = config.cluster.clone();
    let credentials = privileges::resolve(cluster.user.as_deref(), cluster.group.as_deref())
        .context("resolving --user/--group")
        .map_err(fail(EXIT_CONFIG))?;

    // Everything the workers share is prepared here, once, before the first fork.
    let setup = Setup {
        cluster: &cluster,
        credentials,
        reloading: false,
    };
    let app = S::build(options, &setup).map_err(build_failed)?;
    // A previous master's sockets from the descriptor store, if they fit the configuration.
    let mut stored_table = None;
    let mut stale = Vec::new();
    let restored = match stored.as_mut() {
        Some(stored) if inherited_sockets.is_none() => {
            let activated = passed.as_ref().map_or(0, Vec::len);
            match restorable(stored, &cluster, activated).and_then(|t| {
                socket::Sockets::restore(t, stored, passed.take().unwrap_or_default())
                    .map_err(|e| e.to_string())
            }) {
                Ok(sockets) => {
                    stored_table = stored.table.take();
                    Some(sockets)
                }
                Err(why) => {
                    tracing::warn!("not restoring the previous master's sockets: {why}");
                    None
                }
            }
        }
        _ => None,
    };
    // What the store holds that this master does not use: shut down (so it leaves the group
    // and its address can be bound), closed, and taken out of the store.
    if let Some(stored) = stored.take() {
        stale.extend(stored.sockets.keys().copied());
        stale.extend(stored.broken.iter().copied());
        socket::shut_stale(stored.sockets.into_values());
    }
    // Slots the restored table has sockets for: each gets a worker first (what is queued on
    // its socket is served), and a larger count than configured then scales down the usual
    // way, which steers away from a retiring slot and drains it.
    let restored_slots = restored
        .as_ref()
        .and_then(|s| s.open_slots().last().map(|last| last + 1));
    let sockets = match (inherited_sockets, restored, passed) {
        (None, Some(sockets), _) => {
            tracing::info!(addr = %sockets.addr(), "serving on the previous master's sockets (systemd's descriptor store)");
            sockets
        }
        (Some(sockets), _, _) => {
            let c = &cluster;
            if c.sockets != sockets.mode()
                || (sockets.passed() == 0 && c.bind.port() != 0 && c.bind != sockets.addr())
            {
                tracing::warn!(
                    "bind or sockets changed in the config; the upgraded master keeps the running sockets until a full restart"
                );
            }
            sockets
        }
        (None, None, Some(passed)) => {
            let n = passed.len();
            let (sockets, note) = socket::Sockets::adopt(cluster.sockets, passed, cluster.backlog)
                .context("adopting the systemd socket")
                .map_err(fail(EXIT_CONFIG))?;
            tracing::info!(addr = %sockets.addr(), sockets = n, "using the socket passed by systemd");
            if let Some(note) = note {
                tracing::warn!("{note}");
            }
            sockets
        }
        (None, None, None) => socket::Sockets::bind(cluster.sockets, cluster.bind, cluster.backlog)
            .context("opening the listening socket")
            .map_err(fail(1))?,
    };

    let running = config.clone();
    let reload = Box::new(move || -> Result<(Reloaded, Option<S>), String> {
        let (new, options) = loader.load().map_err(|e| e.to_string())?;
        // The app sees what the workers will run: restart-only settings (the data dir, the
        // user) stay as they are until a restart.
        let runs = master::reload::merge(&running.cluster, new.cluster.clone());
        let setup = Setup {
            cluster: &runs,
            credentials,
            reloading: true,
        };
        let app = S::build(options, &setup).map_err(|e| e.to_string())?;
        Ok((
            Reloaded {
                needs_restart: running.needs_restart(&new),
                cluster: new.cluster,
            },
            Some(app),
        ))
    });
    let label = app.health_label();
    let control_path = client::control_path(&cluster);
    let control = master::control::Control::bind(&control_path)
        .with_context(|| format!("opening the control socket {}", control_path.display()))
        .map_err(fail(1))?;
    tracing::info!(path = %control_path.display(), "control socket");
    // On an upgrade the previous image's metrics socket is adopted with the rest.
    let metrics = match (&inherited, cluster.metrics_bind) {
        (None, Some(addr)) => {
            let l = socket::bind(addr, 128, false)
                .context("opening the --metrics-bind socket")
                .map_err(fail(1))?;
            tracing::info!(addr = %l.local_addr().map_or(addr, |a| a), "metrics served by the workers at /metrics");
            Some(l)
        }
        _ => None,
    };
    // The store keeps the table's memfd across an upgrade's exec too (in the upgrade state).
    let table = stored_table.or_else(|| {
        inherited
            .as_mut()
            .and_then(|s| s.table_fd.take())
            .and_then(crate::fd::adopt)
    });
    let mut fdstore = socket::FdStore::open(table);
    if let Some(f) = fdstore.as_mut() {
        f.forget(stale);
    }
    let mut master = Master::new(app, cluster, sockets)
        .context("starting the master")
        .map_err(fail(1))?
        .with_binary(binary)
        .with_watch(watch)
        .with_control(Some(control))
        .with_metrics(metrics)
        .with_fdstore(fdstore)
        .with_restored_slots(restored_slots);
    if let Some(label) = label {
        master = master.with_health_label(label);
    }
    if let Some(state) = inherited {
        master = master.adopt(state);
    }
    master
        .with_reload(reload)
        .with_credentials(credentials)
        .run()
        .map_err(|e| Failure {
            code: master::exit_code_for(&e) as u8,
            error: e.into(),
        })
}

/// The stored table, if its sockets are those the configuration asks for: the same layout and
/// address (a socket unit's address is the unit's business).
fn restorable(
    stored: &socket::Stored,
    cluster: &crate::config::ClusterConfig,
    activated: usize,
) -> Result<socket::Inherited, String> {
    let table = stored.read_table().map_err(|e| e.to_string())?;
    let (mode, addr) = table.layout();
    if mode != cluster.sockets.as_str() {
        return Err(format!(
            "they are --sockets {mode}, the configuration says {}",
            cluster.sockets
        ));
    }
    let same_addr =
        addr == cluster.bind || (cluster.bind.port() == 0 && addr.ip() == cluster.bind.ip());
    if activated == 0 && !same_addr {
        return Err(format!(
            "they are bound to {addr}, the configuration says {}",
            cluster.bind
        ));
    }
    let wanted = socket::Sockets::passed_in(&table);
    if activated != wanted {
        return Err(format!(
            "the table names {wanted} sockets of the socket unit, which passed {activated}"
        ));
    }
    Ok(table)
}

/// `--check-config`: everything `run` reads before it binds or writes, and nothing else. An
/// upgrading master runs the new binary with it before re-executing it.
pub(super) fn check_config<S: Service>(
    config: &Config,
    options: S::Options,
) -> std::process::ExitCode {
    let checks = || -> anyhow::Result<()> {
        upgrade::check_state_version()?;
        let c = &config.cluster;
        let credentials = privileges::resolve(c.user.as_deref(), c.group.as_deref())
            .context("resolving --user/--group")?;
        let setup = Setup {
            cluster: c,
            credentials,
            reloading: false,
        };
        S::check(options, &setup).map_err(|e| anyhow::anyhow!("{e}"))?;
        let control = client::control_path(c);
        master::control::Control::check_place(&control).context("checking the control socket")?;
        Ok(())
    };
    match checks() {
        Ok(()) => {
            println!("{}: configuration ok", S::NAME);
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e:#}", S::NAME);
            std::process::ExitCode::from(EXIT_CONFIG)
        }
    }
}
