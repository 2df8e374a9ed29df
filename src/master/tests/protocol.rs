//! The vocabulary: signals, control lines, pipe bytes, and the status the master shows.

use super::*;
use crate::master::report;
use crate::master::table::WorkerPhase;

#[test]
fn signals_and_control_lines_speak_one_vocabulary() {
    assert_eq!(Command::from_signal(Signal::SIGHUP), Some(Command::Reload));
    assert_eq!(Command::from_line("reload"), Ok(Command::Reload));
    assert_eq!(Command::from_signal(Signal::SIGTTIN), Some(Command::More));
    assert_eq!(Command::from_line("scale 5"), Ok(Command::Scale(5)));
    assert_eq!(Command::from_line("status\n"), Ok(Command::Status));
    assert_eq!(Command::from_signal(Signal::SIGCHLD), None);
    assert!(Command::from_line("scale five").is_err());
    assert!(Command::from_line("scale 1 2").is_err());
    assert!(Command::from_line("shutdown").is_err());
}

#[test]
fn usr1_and_usr2_are_ignored_by_the_master() {
    let mut c = serving(2);
    for sig in [Signal::SIGUSR1, Signal::SIGUSR2] {
        let cmd = Command::from_signal(sig).unwrap();
        assert!(matches!(cmd, Command::Ignore(_)));
        assert!(command(&mut c, cmd, Ms(1_000)).is_empty());
    }
    assert_eq!(c.phase, crate::master::cluster::Phase::Serving);
}

#[test]
fn a_second_ready_breaks_the_protocol_and_the_worker_is_replaced() {
    let mut c = serving(2);
    let out = ready(&mut c, 1, Ms(1_000));
    assert_eq!(out[0], Action::DropPipe(1));
    assert_eq!(signals(&out), vec![(1, Signal::SIGTERM)]);
    assert_eq!(spawns(&plan(&mut c, Ms(1_000))), vec![(3, 0)]);
}

#[test]
fn unknown_bytes_and_floods_break_the_protocol_once() {
    for msg in [Message::Garbage(b'x'), Message::Flood(64)] {
        let mut c = serving(1);
        let mut out = Vec::new();
        c.message(1, msg, Ms(1_000), &mut out);
        assert_eq!(out.len(), 2, "{out:?}");
        out.clear();
        // Already being replaced: nothing more.
        c.message(1, msg, Ms(1_001), &mut out);
        assert_eq!(out, vec![Action::DropPipe(1)]);
    }
    assert_eq!(Message::from_byte(b'R'), Message::Ready);
    assert_eq!(Message::from_byte(b'D'), Message::Health(false));
}

#[test]
fn health_reports_reach_the_status_line() {
    let mut c = serving(2);
    c.label = Some("store redis".into());
    let mut out = Vec::new();
    c.message(1, Message::Health(true), Ms(1_000), &mut out);
    c.message(2, Message::Health(false), Ms(1_000), &mut out);
    assert!(out.is_empty());
    assert_eq!(
        c.status_line(),
        "2/2 workers ready, 0 restarts, store redis down on 1/2 workers"
    );
}

#[test]
fn a_socket_closed_report_lets_the_socket_table_forget_it() {
    let mut c = serving(2);
    command(&mut c, Command::Fewer, Ms(1_000));
    let out = plan(&mut c, Ms(1_000));
    assert!(matches!(
        out[..],
        [Action::CloseSlot { id: 2, slot: 1, .. }]
    ));
    c.closing_socket(2, Some(9));
    let mut out = Vec::new();
    c.message(2, Message::SocketClosed, Ms(1_100), &mut out);
    assert_eq!(out, vec![Action::SocketGone(9)]);
    // Its death later has nothing more to report.
    let out = die(&mut c, 2, Death::Exited(0), Ms(1_200));
    assert_eq!(
        out,
        vec![Action::Release(1)],
        "worker 2 holds the second record"
    );
}

#[test]
fn the_status_document_names_each_workers_state() {
    let mut c = serving(3);
    c.table.get_mut(2).unwrap().phase = WorkerPhase::Recycling { since: Ms(100) };
    command(&mut c, Command::Fewer, Ms(1_000));
    plan(&mut c, Ms(1_000));
    c.table.get_mut(1).unwrap().phase = WorkerPhase::Booting {
        deadline: Ms(9_000),
    };
    let counters = [(
        crate::counter::Desc {
            name: "app_cache_hits".into(),
            help: String::new(),
            labels: vec![("store".into(), "redis".into())],
            unit: crate::counter::Unit::Count,
        },
        12,
    )];
    let doc = report::document(&c, &[], &counters, 4242, Ms(3_000));
    assert_eq!(doc["counters"]["app_cache_hits_total{store=\"redis\"}"], 12);
    let states: Vec<&str> = doc["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, vec!["booting", "recycling", "stopping"]);
    let m = &doc["master"];
    assert_eq!(
        (
            m["pid"].as_i64(),
            m["target"].as_u64(),
            m["workers"].as_u64()
        ),
        (Some(4242), Some(2), Some(1))
    );
    assert_eq!(
        (m["max_workers"].as_u64(), m["reloading"].as_bool()),
        (Some(8), Some(false))
    );
    assert_eq!(doc["workers"][0]["uptime_s"].as_u64(), Some(3));
}

#[test]
fn a_worker_told_to_stop_while_booting_may_still_report_ready() {
    let mut c = serving(2);
    die(&mut c, 2, Death::Signaled(Signal::SIGKILL), Ms(5_000));
    plan(&mut c, Ms(5_000));
    command(
        &mut c,
        Command::Stop {
            fast: false,
            by: "SIGTERM",
        },
        Ms(5_010),
    );
    assert!(ready(&mut c, 3, Ms(5_020)).is_empty(), "no protocol error");
    assert_eq!(c.restarts, 1);
}

#[test]
fn a_replacement_that_breaks_the_protocol_is_replaced_and_its_old_worker_still_goes() {
    let mut c = serving(2);
    hup(&mut c, 2, Ms(1_000));
    assert_eq!(spawns(&plan(&mut c, Ms(1_000))), vec![(3, 1)]);
    let mut out = Vec::new();
    c.message(3, Message::Garbage(b'?'), Ms(1_050), &mut out);
    assert!(c.respawn_at > Ms(1_050), "backs off");
    let at = c.respawn_at;
    assert_eq!(
        spawns(&plan(&mut c, at)),
        vec![(4, 1)],
        "another replacement for 2"
    );
    finish_rollout(&mut c, at);
    assert!(!c.table.is_live(2) && !c.table.is_live(1));
    assert_eq!(slots(&c).len(), 2);
}
