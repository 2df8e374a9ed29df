//! The `clusterd` binary: the demo app (login, a protected route, logout, sessions in Redis or
//! the embedded store) run by [`clusterd::run`], as any app would be. Its options and its
//! `hash-password` subcommand are declared in `clusterd::app::service`.

fn main() -> std::process::ExitCode {
    clusterd::run::<clusterd::app::DemoApp>()
}
