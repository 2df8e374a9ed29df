//! Rollouts: reloads, their commit and abort, overlapping reloads, the worker count during one.

use super::*;
use crate::master::cluster::{Phase, Why};
use crate::master::deadlines;
use crate::master::event::Seen;
use crate::master::reload::merge;
use crate::master::table::WorkerPhase;

#[test]
fn a_fresh_cluster_forks_every_slot_and_says_ready_once() {
    let mut c = Cluster::new(config(3), 1, 18, Ms(0));
    let out = plan(&mut c, Ms(0));
    assert_eq!(spawns(&out), vec![(1, 0), (2, 1), (3, 2)]);
    assert_eq!(c.phase, Phase::Starting);
    for id in 1..=3 {
        ready(&mut c, id, Ms(50));
    }
    assert_eq!(readies(&plan(&mut c, Ms(50))), 1);
    assert_eq!(c.phase, Phase::Serving);
    assert_eq!(readies(&plan(&mut c, Ms(60))), 0);
}

#[test]
fn a_reload_replaces_one_slot_at_a_time_then_commits() {
    let mut c = serving(2);
    hup(&mut c, 2, Ms(1_000));
    let out = plan(&mut c, Ms(1_000));
    // The last old worker's slot first; one replacement at a time.
    assert_eq!(spawns(&out), vec![(3, 1)]);
    assert!(spawns(&plan(&mut c, Ms(1_010))).is_empty());
    ready(&mut c, 3, Ms(1_100));
    let out = plan(&mut c, Ms(1_100));
    assert_eq!(signals(&out), vec![(2, Signal::SIGTERM)]);
    assert_eq!(spawns(&out), vec![(4, 0)]);
    ready(&mut c, 4, Ms(1_200));
    let out = plan(&mut c, Ms(1_200));
    assert_eq!(signals(&out), vec![(1, Signal::SIGTERM)]);
    assert_eq!(readies(&out), 1, "the reload's end is announced");
    assert!(c.pending.is_none());
    assert_eq!(c.config.threads, 2, "the new settings are the running ones");
    assert_eq!(slots(&c), vec![(0, 4), (1, 3)]);
}

#[test]
fn a_replacement_that_dies_booting_aborts_with_back_off() {
    let mut c = serving(2);
    hup(&mut c, 2, Ms(1_000));
    plan(&mut c, Ms(1_000));
    let out = die(&mut c, 3, Death::Exited(3), Ms(1_050));
    assert!(c.pending.is_none());
    assert_eq!(readies(&out), 1);
    assert!(c.note.as_deref().unwrap().starts_with("reload aborted"));
    assert!(c.respawn_at > Ms(1_050), "backs off");
    assert_eq!(c.config.threads, 1, "the running settings stay");
    assert_eq!(slots(&c), vec![(0, 1), (1, 2)]);
    // Final: nothing is tried again.
    assert!(spawns(&plan(&mut c, Ms(60_000))).is_empty());
}

#[test]
fn a_new_worker_dying_young_after_ready_aborts() {
    let mut c = serving(2);
    hup(&mut c, 2, Ms(1_000));
    plan(&mut c, Ms(1_000));
    ready(&mut c, 3, Ms(1_100));
    plan(&mut c, Ms(1_100));
    die(&mut c, 2, Death::Exited(0), Ms(1_150));
    die(&mut c, 3, Death::Signaled(Signal::SIGSEGV), Ms(1_300));
    assert!(c.pending.is_none());
    assert_eq!(c.restarts, 1);
    // The slot gets a worker with the running settings.
    let at = c.respawn_at;
    let out = plan(&mut c, at);
    assert_eq!(spawns(&out), vec![(5, 1)]);
    match &out[0] {
        Action::Spawn(s) => assert_eq!(s.config.threads, 1),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_new_worker_dying_after_its_minimum_uptime_is_an_ordinary_crash() {
    let mut c = serving(2);
    hup(&mut c, 2, Ms(1_000));
    plan(&mut c, Ms(1_000));
    ready(&mut c, 3, Ms(1_100));
    plan(&mut c, Ms(1_100));
    die(&mut c, 3, Death::Signaled(Signal::SIGKILL), Ms(5_000));
    assert!(c.pending.is_some(), "the rollout goes on");
    assert_eq!(c.restarts, 1);
}

#[test]
fn an_aborted_reload_gives_back_the_worker_count() {
    let mut c = serving(2);
    hup(&mut c, 4, Ms(1_000));
    assert_eq!(c.target, 4);
    // Slots 2 and 3 get new workers (3, 4); worker 5 replaces worker 2.
    let out = plan(&mut c, Ms(1_000));
    assert_eq!(spawns(&out), vec![(3, 2), (4, 3), (5, 1)]);
    die(&mut c, 5, Death::Exited(3), Ms(1_050));
    assert_eq!(c.target, 2);
    let at = c.respawn_at;
    let out = plan(&mut c, at);
    // The new slots' workers are surplus now.
    assert_eq!(signals(&out).len(), 2, "{out:?}");
    assert_eq!(slots(&c), vec![(0, 1), (1, 2)]);
}

#[test]
fn hups_150ms_apart_while_workers_boot_end_with_each_slot_once() {
    for hups in [2, 3] {
        let mut c = serving(2);
        let mut now = Ms(1_000);
        for _ in 0..hups {
            hup(&mut c, 2, now);
            plan(&mut c, now);
            now = now.plus(Duration::from_millis(150));
        }
        now = finish_rollout(&mut c, now);
        plan(&mut c, now);
        assert_eq!(
            slots(&c).iter().map(|s| s.0).collect::<Vec<_>>(),
            vec![0, 1],
            "{hups} HUPs: {:?}",
            c.table
        );
        assert!(c.table.workers.iter().all(|w| w.is_live()));
    }
}

#[test]
fn a_reload_above_max_workers_is_clamped_and_completes() {
    let mut c = serving(2);
    hup(&mut c, 50, Ms(1_000));
    assert_eq!(c.target, 8);
    let now = finish_rollout(&mut c, Ms(1_000));
    assert!(!c.reloading());
    assert_eq!(c.table.ready(), 8);
    assert!(spawns(&plan(&mut c, now)).is_empty());
}

#[test]
fn an_operators_count_during_a_rollout_survives_its_abort() {
    let mut c = serving(2);
    hup(&mut c, 2, Ms(1_000));
    plan(&mut c, Ms(1_000));
    command(&mut c, Command::More, Ms(1_010));
    assert_eq!(c.target, 3);
    die(&mut c, 3, Death::Exited(3), Ms(1_050));
    assert_eq!(c.target, 3);
    let out = command(&mut c, Command::Scale(9), Ms(1_060));
    assert!(out.is_empty());
    assert_eq!(c.target, 3, "above --max-workers is refused");
}

#[test]
fn surplus_waits_for_the_rollout_then_retires_from_the_top() {
    let mut c = serving(3);
    hup(&mut c, 3, Ms(1_000));
    plan(&mut c, Ms(1_000));
    command(&mut c, Command::Fewer, Ms(1_010));
    let out = plan(&mut c, Ms(1_020));
    assert!(!out.iter().any(|a| matches!(a, Action::CloseSlot { .. })));
    let now = finish_rollout(&mut c, Ms(1_030));
    let out = plan(&mut c, now);
    assert!(
        matches!(out[..], [Action::CloseSlot { slot: 2, .. }]),
        "{out:?}"
    );
}

#[test]
fn a_failed_reload_changes_nothing() {
    let mut c = serving(2);
    let mut out = command(&mut c, Command::Reload, Ms(1_000));
    c.reloaded(Err("parsing config file x: bad".into()), &mut out);
    assert!(c.pending.is_none());
    assert_eq!(readies(&out), 1);
    assert!(
        c.status_line()
            .ends_with("; reload failed: parsing config file x: bad")
    );
}

#[test]
fn the_reload_merge_keeps_what_is_bound_at_start() {
    let running = config(2);
    let mut new = config(5);
    new.bind = "0.0.0.0:9".parse().unwrap();
    new.max_workers = 99;
    new.threads = 4;
    let merged = merge(&running, new);
    assert_eq!((merged.bind, merged.max_workers), (running.bind, 8));
    assert_eq!((merged.workers, merged.threads), (5, 4));
}

fn requests(id: u64, n: u64) -> Seen {
    Seen {
        id,
        requests: Some(n),
        ..Seen::default()
    }
}

#[test]
fn a_worker_over_max_requests_is_recycled_once_its_replacement_serves() {
    let mut c = serving(2);
    c.table.get_mut(1).unwrap().max_requests = 100;
    deadlines::recycle(&mut c, &[requests(1, 100), requests(2, 500)], Ms(2_000));
    assert_eq!(c.table.get(1).unwrap().phase.name(), "recycling");
    assert_eq!(c.pending.as_ref().map(|p| p.why), Some(Why::Recycle));
    assert!(!c.reloading());
    let out = plan(&mut c, Ms(2_000));
    assert_eq!(spawns(&out), vec![(3, 0)]);
    ready(&mut c, 3, Ms(2_100));
    let out = plan(&mut c, Ms(2_100));
    assert_eq!(signals(&out), vec![(1, Signal::SIGTERM)]);
    assert!(c.pending.is_none());
}

#[test]
fn a_failed_recycle_leaves_its_worker_eligible_for_the_next() {
    let mut c = serving(1);
    c.table.get_mut(1).unwrap().max_requests = 100;
    deadlines::recycle(&mut c, &[requests(1, 100)], Ms(2_000));
    plan(&mut c, Ms(2_000));
    die(&mut c, 2, Death::Exited(3), Ms(2_050));
    assert!(c.pending.is_none());
    assert!(matches!(
        c.table.get(1).unwrap().phase,
        WorkerPhase::Ready { .. }
    ));
    // Once workers boot again it is recycled after all.
    deadlines::recycle(&mut c, &[requests(1, 150)], Ms(3_000));
    let at = c.respawn_at.max(Ms(3_000));
    let now = finish_rollout(&mut c, at);
    assert!(c.table.get(1).is_none_or(|w| !w.is_live()), "at {now:?}");
    assert_eq!(c.table.ready(), 1);
}

#[test]
fn memory_over_the_limit_for_three_samples_a_second_apart_recycles() {
    let mut c = serving(1);
    c.config.max_worker_memory = 100 << 20;
    let fat = Seen {
        id: 1,
        rss: Some(200 << 20),
        ..Seen::default()
    };
    for (i, t) in [1_000u64, 1_500, 2_000, 3_000].into_iter().enumerate() {
        deadlines::recycle(&mut c, std::slice::from_ref(&fat), Ms(t));
        let recycling = c.table.get(1).unwrap().phase.name() == "recycling";
        // 1.0 s: sample 1; 1.5 s: too soon; 2.0 s: 2; 3.0 s: 3.
        assert_eq!(recycling, i == 3, "at {t} ms");
    }
}
