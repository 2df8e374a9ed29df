//! Deadlines: hung workers, boot timeouts, the upgrade check, when the loop wakes up.

use super::*;
use crate::master::cluster::{BOOT_TIMEOUT, CheckRun};
use crate::master::deadlines;
use crate::master::event::Seen;

fn murder(c: &mut Cluster, seen: Option<&[Seen]>, now: Ms) -> Vec<Action> {
    let mut out = Vec::new();
    deadlines::murder(c, seen, now, &mut out);
    out
}

fn silent(id: u64, ms: u64, stopped: bool) -> Seen {
    Seen {
        id,
        heartbeat_age_ms: Some(ms),
        stopped,
        ..Seen::default()
    }
}

#[test]
fn a_hung_worker_gets_sigabrt_then_sigkill_a_second_later_and_a_replacement() {
    let mut c = serving(2);
    let seen = [silent(1, 31_000, false), silent(2, 10, false)];
    let out = murder(&mut c, Some(&seen), Ms(40_000));
    assert_eq!(signals(&out), vec![(1, Signal::SIGABRT)]);
    assert_eq!(c.restarts, 1);
    // The replacement does not wait for the hung one to go.
    assert_eq!(spawns(&plan(&mut c, Ms(40_000))), vec![(3, 0)]);
    assert!(murder(&mut c, None, Ms(40_999)).is_empty());
    assert_eq!(
        signals(&murder(&mut c, None, Ms(41_000))),
        vec![(1, Signal::SIGKILL)]
    );
}

#[test]
fn a_stopped_hung_worker_gets_sigkill_at_once() {
    let mut c = serving(1);
    let out = murder(&mut c, Some(&[silent(1, 31_000, true)]), Ms(40_000));
    assert_eq!(signals(&out), vec![(1, Signal::SIGKILL)]);
}

#[test]
fn a_heartbeat_within_the_timeout_is_fine() {
    let mut c = serving(1);
    assert!(murder(&mut c, Some(&[silent(1, 30_000, false)]), Ms(40_000)).is_empty());
}

#[test]
fn a_worker_not_ready_within_the_boot_timeout_is_killed() {
    let mut c = serving(2);
    die(&mut c, 2, Death::Signaled(Signal::SIGKILL), Ms(5_000));
    plan(&mut c, Ms(5_000));
    let late = Ms(5_000).plus(BOOT_TIMEOUT);
    assert!(murder(&mut c, None, late.minus(Duration::from_millis(1))).is_empty());
    let out = murder(&mut c, None, late);
    assert_eq!(signals(&out), vec![(3, Signal::SIGKILL)]);
    assert_eq!(c.restarts, 2);
}

#[test]
fn a_replacement_past_its_boot_deadline_is_killed_and_aborts_the_reload() {
    let mut c = serving(2);
    hup(&mut c, 2, Ms(1_000));
    plan(&mut c, Ms(1_000));
    let out = murder(&mut c, None, Ms(1_000).plus(BOOT_TIMEOUT));
    assert_eq!(signals(&out), vec![(3, Signal::SIGKILL)]);
    assert!(c.pending.is_none());
    assert_eq!(readies(&out), 1);
    assert_eq!(c.restarts, 0, "an aborted reload is not a crash");
}

#[test]
fn a_check_past_its_deadline_is_killed_once_a_second() {
    let mut c = serving(1);
    c.check = Some(CheckRun {
        pid: 99,
        deadline: Ms(10_000),
    });
    assert!(murder(&mut c, None, Ms(9_999)).is_empty());
    assert_eq!(murder(&mut c, None, Ms(10_000)), vec![Action::KillCheck]);
    assert!(murder(&mut c, None, Ms(10_500)).is_empty());
}

#[test]
fn the_loop_wakes_for_the_earliest_deadline() {
    let mut c = serving(2);
    assert_eq!(
        deadlines::next_wakeup(&c, Ms(1_000)),
        Ms(2_000),
        "idle: a second"
    );
    command(
        &mut c,
        Command::Stop {
            fast: true,
            by: "SIGQUIT",
        },
        Ms(1_000),
    );
    assert_eq!(deadlines::next_wakeup(&c, Ms(1_500)), Ms(2_500));
    assert_eq!(
        deadlines::next_wakeup(&c, Ms(3_000)),
        Ms(3_000),
        "overdue: now"
    );
    let mut c = serving(2);
    die(&mut c, 1, Death::Exited(3), Ms(500));
    // Died young: a back-off, and the loop waits for exactly that.
    assert_eq!(deadlines::next_wakeup(&c, Ms(500)), Ms(600));
}

#[test]
fn nothing_is_killed_for_hanging_while_stopping() {
    let mut c = serving(1);
    command(
        &mut c,
        Command::Stop {
            fast: false,
            by: "SIGTERM",
        },
        Ms(1_000),
    );
    assert!(murder(&mut c, Some(&[silent(1, 60_000, false)]), Ms(2_000)).is_empty());
}

#[test]
fn sigkill_is_sent_once() {
    let mut c = serving(2);
    hup(&mut c, 2, Ms(1_000));
    plan(&mut c, Ms(1_000));
    let late = Ms(1_000).plus(BOOT_TIMEOUT);
    assert_eq!(
        signals(&murder(&mut c, None, late)),
        vec![(3, Signal::SIGKILL)]
    );
    assert!(murder(&mut c, None, late).is_empty());
    assert!(murder(&mut c, None, late.plus(Duration::from_secs(5))).is_empty());
}
