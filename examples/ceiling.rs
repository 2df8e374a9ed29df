//! The benchmark's ceiling: a single-process actix-web server with one thread per CPU serving
//! the same `/healthz` JSON as clusterd, built the same way (`--release`). Not a product: run by
//! `bench/healthz.sh` for comparison. Usage: `ceiling [ADDR]` (default 127.0.0.1:8090).

use actix_web::{App, HttpResponse, HttpServer, web};

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8090".into());
    let pid = std::process::id();
    HttpServer::new(move || {
        App::new().route(
            "/healthz",
            web::get().to(move || async move {
                HttpResponse::Ok().json(serde_json::json!({
                    "status": "ok", "worker_pid": pid, "worker_id": 0,
                    "store": { "kind": "none", "status": "up" },
                }))
            }),
        )
    })
    .bind(addr)?
    .run()
    .await
}
