//! Integration tests: the real `clusterd` binary against a real `redis-server`, both on loopback
//! ports the tests pick. One test binary (see Cargo.toml) with a module per area.

mod harness;

mod abuse;
mod balance;
mod cache;
mod cli;
mod cluster;
mod cluster_redis;
mod hello;
mod interleave;
mod multihost;
mod operate;
mod page;
mod sentinel;
mod sessions;
mod steer;
mod stores;
mod systemd;
mod upgrade;
