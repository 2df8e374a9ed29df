//! Upgrades as decisions: the check, the exec at the end of a turn, what crosses `execve`.

use super::*;
use crate::master::cluster::{Phase, Why};
use crate::master::handover::Handover;
use crate::master::table::WorkerPhase;

#[test]
fn a_hup_during_the_check_starts_no_second_one() {
    let mut c = serving(1);
    c.check_started(99, Ms(1_000));
    let out = command(&mut c, Command::Reload, Ms(1_100));
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn a_failed_check_keeps_serving_and_says_why() {
    let mut c = serving(1);
    c.check_started(99, Ms(1_000));
    let mut out = Vec::new();
    c.check_done(Death::Exited(2), "clusterd: bad option", &mut out);
    assert!(!c.take_exec());
    assert_eq!(readies(&out), 1);
    assert!(
        c.note
            .as_deref()
            .unwrap()
            .contains("exited with 2: clusterd: bad option")
    );
    // The next HUP tries again.
    assert!(command(&mut c, Command::Reload, Ms(2_000)).contains(&Action::Reload));
}

#[test]
fn the_exec_waits_for_the_end_of_the_turn_and_carries_no_dead_worker() {
    let mut c = serving(2);
    c.check_started(99, Ms(1_000));
    let mut out = Vec::new();
    // One reap batch: the check passed, and a worker died.
    c.check_done(Death::Exited(0), "", &mut out);
    c.death(
        pid(2),
        Death::Signaled(Signal::SIGKILL),
        Ms(1_200),
        &mut out,
    );
    assert!(c.take_exec());
    assert!(!c.take_exec(), "once per passed check");
    let h = c.export();
    assert_eq!(h.workers.iter().map(|w| w.id).collect::<Vec<_>>(), vec![1]);
}

#[test]
fn no_exec_once_stopping() {
    let mut c = serving(1);
    c.check_started(99, Ms(1_000));
    let mut out = Vec::new();
    c.check_done(Death::Exited(0), "", &mut out);
    command(
        &mut c,
        Command::Stop {
            fast: false,
            by: "SIGTERM",
        },
        Ms(1_000),
    );
    assert!(!c.take_exec());
}

#[test]
fn the_handover_round_trips_and_the_new_image_replaces_every_worker() {
    let mut c = serving(3);
    c.restarts = 4;
    command(&mut c, Command::Fewer, Ms(1_000));
    let mut out = Vec::new();
    c.retire_slot(3, Ms(1_000), &mut out);
    c.closing_socket(3, Some(7));
    let h = c.export();
    let text = serde_json::to_string(&h).unwrap();
    let back: Handover = serde_json::from_str(&text).unwrap();
    assert_eq!(back, h);

    let mut next = Cluster::new(config(3), 1, 18, Ms(2_000));
    next.adopt(back);
    assert_eq!(next.phase, Phase::Serving);
    assert_eq!((next.target, next.restarts, next.next_id), (2, 4, 4));
    let p = next.pending.as_ref().unwrap();
    assert_eq!(p.why, Why::Upgrade);
    assert_eq!(p.old, vec![1, 2]);
    assert!(matches!(
        next.table.get(3).unwrap().phase,
        WorkerPhase::Stopping {
            closing: Some(7),
            ..
        }
    ));
    finish_rollout(&mut next, Ms(2_000));
    assert_eq!(slots(&next).len(), 2);
    assert!(next.table.live().all(|w| w.id > 3));
}

#[test]
fn a_changed_worker_count_in_the_new_binary_wins_over_ttin() {
    let mut c = serving(2);
    command(&mut c, Command::More, Ms(1_000));
    let h = c.export();
    let mut same = Cluster::new(config(2), 1, 18, Ms(2_000));
    same.adopt(h.clone());
    assert_eq!(same.target, 3);
    let mut changed = Cluster::new(config(5), 1, 18, Ms(2_000));
    changed.adopt(h);
    assert_eq!(changed.target, 5);
}

#[test]
fn an_upgrade_during_a_rollout_carries_its_booting_replacement() {
    let mut c = serving(2);
    hup(&mut c, 2, Ms(1_000));
    plan(&mut c, Ms(1_000));
    let h = c.export();
    assert_eq!(h.replacing, vec![(3, 2)]);
    let mut next = Cluster::new(config(2), 1, 18, Ms(1_100));
    next.adopt(h);
    assert_eq!(next.pending.as_ref().unwrap().old, vec![1, 3]);
    finish_rollout(&mut next, Ms(1_100));
    assert_eq!(
        slots(&next).iter().map(|s| s.0).collect::<Vec<_>>(),
        vec![0, 1]
    );
}

#[test]
fn an_upgrade_keeps_the_maximum_the_scoreboard_was_made_for() {
    let c = serving(2);
    let h = c.export();
    let mut bigger = config(12);
    bigger.max_workers = 16;
    // The old image's board: 2 x 4 + 2 records.
    let mut next = Cluster::new(bigger, 1, 10, Ms(2_000));
    next.adopt(h);
    assert_eq!(next.config.max_workers, 4);
    assert_eq!(next.target, 4);
    finish_rollout(&mut next, Ms(2_000));
    assert_eq!(next.table.ready(), 4);
}
