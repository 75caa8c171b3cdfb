// A real Better Auth server for tests/test_better_auth.py: email and password sign-up, and the
// jwt() plugin (GET /api/auth/token, GET /api/auth/jwks), on better-sqlite3.
// Usage: node server.mjs <port> <sqlite file>; prints "ready" once it listens.
import http from "node:http";
import Database from "better-sqlite3";
import { betterAuth } from "better-auth";
import { getMigrations } from "better-auth/db/migration";
import { toNodeHandler } from "better-auth/node";
import { jwt } from "better-auth/plugins";

const [port, file] = process.argv.slice(2);
const baseURL = `http://127.0.0.1:${port}`;
const auth = betterAuth({
  baseURL,
  secret: "interop-test-secret-that-is-long-enough-0123456789",
  database: new Database(file),
  emailAndPassword: { enabled: true },
  plugins: [jwt()],
});
const { runMigrations } = await getMigrations(auth.options);
await runMigrations();
http.createServer(toNodeHandler(auth)).listen(Number(port), "127.0.0.1", () => console.log("ready"));
