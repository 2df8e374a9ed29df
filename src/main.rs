//! The `clusterd` binary: the demo app (login, a protected route, logout, sessions in Redis or
//! the embedded store) run by [`clusterd::run`], as any app would be. Its options and its
//! `hash-password` subcommand are declared in `clusterd::app::service`.

// A signed-in request allocates and frees a few dozen small objects (the session's map, its
// cookie, the response); mimalloc's per-thread free lists make that cheaper than glibc's
// arenas (bench/sessions.sh measures both).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    clusterd::run::<clusterd::app::DemoApp>()
}
