//! Stopping: graceful and fast, the halt on a configuration error, the outcome.

use super::*;
use crate::master::cluster::{Halt, Phase};
use crate::master::deadlines;
use crate::master::table::WorkerPhase;

fn kill_at(c: &Cluster, id: u64) -> Ms {
    match c.table.get(id).unwrap().phase {
        WorkerPhase::Stopping { kill_at, .. } => kill_at,
        other => panic!("{other:?}"),
    }
}

fn term() -> Command {
    Command::Stop {
        fast: false,
        by: "SIGTERM",
    }
}

fn quit() -> Command {
    Command::Stop {
        fast: true,
        by: "SIGQUIT",
    }
}

#[test]
fn a_graceful_stop_signals_every_worker_and_forks_nothing() {
    let mut c = serving(2);
    hup(&mut c, 2, Ms(1_000));
    let out = command(&mut c, term(), Ms(1_000));
    assert_eq!(out[0], Action::Notify(Notify::Stopping));
    assert_eq!(
        signals(&out),
        vec![(1, Signal::SIGTERM), (2, Signal::SIGTERM)]
    );
    assert!(c.pending.is_none(), "a rollout is dropped");
    assert!(plan(&mut c, Ms(5_000)).is_empty());
    assert_eq!(kill_at(&c, 1), Ms(32_000), "graceful timeout + 1 s margin");
}

#[test]
fn a_fast_stop_shortens_a_deadline_and_never_extends_it() {
    let mut c = serving(2);
    command(&mut c, term(), Ms(1_000));
    let out = command(&mut c, quit(), Ms(2_000));
    assert_eq!(
        signals(&out),
        vec![(1, Signal::SIGQUIT), (2, Signal::SIGQUIT)]
    );
    assert_eq!(kill_at(&c, 1), Ms(4_000));
    // A second QUIT later changes nothing; a TERM after it changes nothing.
    assert!(command(&mut c, quit(), Ms(3_000)).is_empty());
    assert!(command(&mut c, term(), Ms(3_000)).is_empty());
    assert_eq!(kill_at(&c, 1), Ms(4_000));
    assert!(matches!(c.phase, Phase::Stopping { fast: true, .. }));
}

#[test]
fn a_second_term_only_logs() {
    let mut c = serving(1);
    command(&mut c, term(), Ms(1_000));
    assert!(command(&mut c, term(), Ms(1_500)).is_empty());
    assert_eq!(kill_at(&c, 1), Ms(32_000));
}

#[test]
fn a_worker_overstaying_its_stop_is_killed_once() {
    let mut c = serving(1);
    command(&mut c, term(), Ms(1_000));
    let mut out = Vec::new();
    deadlines::murder(&mut c, None, Ms(31_999), &mut out);
    assert!(out.is_empty());
    deadlines::murder(&mut c, None, Ms(32_000), &mut out);
    assert_eq!(signals(&out), vec![(1, Signal::SIGKILL)]);
    out.clear();
    deadlines::murder(&mut c, None, Ms(40_000), &mut out);
    assert!(out.is_empty());
}

#[test]
fn the_master_may_exit_once_every_worker_is_reaped() {
    let mut c = serving(2);
    assert_eq!(c.outcome(), None);
    command(&mut c, term(), Ms(1_000));
    die(&mut c, 1, Death::Exited(0), Ms(1_100));
    assert_eq!(c.outcome(), None);
    die(&mut c, 2, Death::Exited(0), Ms(1_200));
    assert_eq!(c.outcome(), Some(Ok(())));
}

#[test]
fn exit_code_4_stops_the_master_with_a_reason() {
    let mut c = serving(2);
    let out = die(&mut c, 2, Death::Exited(4), Ms(5_000));
    assert_eq!(signals(&out), vec![(1, Signal::SIGTERM)]);
    die(&mut c, 1, Death::Exited(0), Ms(5_100));
    assert_eq!(c.outcome(), Some(Err(Halt::WorkerConfig(2))));
}

#[test]
fn a_replacement_exiting_4_aborts_the_reload_and_never_halts() {
    let mut c = serving(2);
    hup(&mut c, 2, Ms(1_000));
    plan(&mut c, Ms(1_000));
    die(&mut c, 3, Death::Exited(4), Ms(1_050));
    assert_eq!(c.phase, Phase::Serving);
    assert!(c.pending.is_none());
}

#[test]
fn a_worker_that_cannot_boot_backs_off_and_never_halts() {
    let mut c = serving(1);
    let mut now = Ms(5_000);
    let mut delays = Vec::new();
    for _ in 0..6 {
        let last = c.next_id - 1;
        die(&mut c, last, Death::Exited(3), now);
        let delay = c.respawn_at.since(now);
        delays.push(delay.as_millis());
        if !delay.is_zero() {
            assert!(
                spawns(&plan(&mut c, now)).is_empty(),
                "nothing before the back-off"
            );
        }
        now = c.respawn_at;
        assert_eq!(spawns(&plan(&mut c, now)).len(), 1);
    }
    assert_eq!(delays, vec![0, 100, 200, 400, 800, 1_600]);
    assert_eq!(c.phase, Phase::Serving);
}

#[test]
fn a_death_nobody_forked_is_ignored() {
    let mut c = serving(1);
    let mut out = Vec::new();
    c.death(77, Death::Exited(0), Ms(2_000), &mut out);
    assert!(out.is_empty());
    assert_eq!(c.restarts, 0);
}

#[test]
fn exit_code_4_from_any_worker_of_a_rollout_aborts_it_and_never_halts() {
    let mut c = serving(2);
    hup(&mut c, 4, Ms(1_000));
    // Slots 2 and 3 get workers 3 and 4 with the new settings; 5 replaces worker 2.
    assert_eq!(
        spawns(&plan(&mut c, Ms(1_000))),
        vec![(3, 2), (4, 3), (5, 1)]
    );
    die(&mut c, 4, Death::Exited(4), Ms(1_050));
    assert_eq!(c.phase, Phase::Serving);
    assert!(c.pending.is_none());
    assert_eq!(c.target, 2);
}
