// The seed's stack, for the sessions benchmark only: Node's cluster module (one worker per
// CPU, respawn on 'exit'), Express, express-session with connect-redis. Same routes and the
// same session policy as clusterd's demo app (rolling idle timeout, HttpOnly, SameSite=Lax).
// Usage: PORT=8083 REDIS_URL=redis://127.0.0.1:6379 node server.js
import cluster from "node:cluster";
import os from "node:os";
import express from "express";
import session from "express-session";
import { RedisStore } from "connect-redis";
import { createClient } from "redis";

const port = Number(process.env.PORT || 8083);
const workers = Number(process.env.WORKERS || os.availableParallelism());

if (cluster.isPrimary) {
  for (let i = 0; i < workers; i++) cluster.fork();
  cluster.on("exit", (worker, code, signal) => {
    console.error(`worker ${worker.process.pid} died (${signal || code}); forking a new one`);
    cluster.fork();
  });
} else {
  const client = createClient({ url: process.env.REDIS_URL });
  client.on("error", (e) => console.error("redis", e.message));
  await client.connect();
  const app = express();
  app.use(express.json({ limit: "4kb" }));
  app.use(
    session({
      store: new RedisStore({ client, prefix: "nodepeer:sess:" }),
      secret: "benchmark-only-secret-benchmark-only-secret-0123456789abcdef0123",
      name: "sid",
      resave: false,
      saveUninitialized: false,
      rolling: true,
      cookie: { httpOnly: true, sameSite: "lax", secure: false, maxAge: 1800 * 1000 },
    }),
  );
  app.get("/healthz", (req, res) => res.json({ status: "ok", worker_pid: process.pid }));
  app.post("/login", (req, res) => {
    const { username, password } = req.body || {};
    if (username !== "alice" || password !== "wonderland") {
      return res.status(401).json({ error: "invalid username or password" });
    }
    req.session.regenerate((err) => {
      if (err) return res.status(503).json({ error: "session store unavailable" });
      req.session.user = username;
      res.json({ user: username, worker_pid: process.pid });
    });
  });
  app.get("/me", (req, res) => {
    if (!req.session.user) return res.status(401).json({ error: "not logged in" });
    res.json({ user: req.session.user, worker_pid: process.pid });
  });
  app.listen(port, "127.0.0.1");
}
