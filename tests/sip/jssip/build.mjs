// Bundles the JsSIP test page: src/client.js (the real JsSIP from
// node_modules) -> dist/client.js, src/index.html -> dist/.
// Run after `npm ci`: `node build.mjs` (or `npm run build`).
import { build } from "esbuild";
import { copyFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "dist");
mkdirSync(out, { recursive: true });
await build({
  entryPoints: [join(here, "src", "client.js")],
  outfile: join(out, "client.js"),
  bundle: true,
  format: "iife",
  platform: "browser",
  target: ["chrome110"],
  sourcemap: "inline",
  logLevel: "warning",
  define: { "process.env.NODE_ENV": '"production"' },
});
copyFileSync(join(here, "src", "index.html"), join(out, "index.html"));
console.log("built", out);
