// Bundles the Pipecat client test pages from src/client.js with esbuild:
//   dist/client.js  <- the current SDK (./node_modules: client-js 1.13, RTVI 2.1)
//   dist/legacy.js  <- an RTVI 1.x SDK (./legacy/node_modules: client-js 1.10, RTVI 1.4)
// and copies src/index.html to dist/index.html and dist/legacy.html.
// Run after `npm ci` here and in legacy/: `node build.mjs` (or `npm run build`).
import { build } from "esbuild";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "dist");
mkdirSync(out, { recursive: true });
const html = readFileSync(join(here, "src", "index.html"), "utf8");

const PACKAGES = ["@pipecat-ai/client-js", "@pipecat-ai/small-webrtc-transport"];

async function bundle(name, modules) {
  await build({
    entryPoints: [join(here, "src", "client.js")],
    outfile: join(out, `${name}.js`),
    bundle: true,
    format: "iife",
    platform: "browser",
    target: ["chrome110"],
    sourcemap: "inline",
    logLevel: "warning",
    alias: Object.fromEntries(PACKAGES.map((p) => [p, join(modules, p)])),
    define: { "process.env.NODE_ENV": '"production"' },
  });
  writeFileSync(join(out, `${name === "client" ? "index" : name}.html`),
    html.replace('src="client.js"', `src="${name}.js"`));
}

await bundle("client", join(here, "node_modules"));
await bundle("legacy", join(here, "legacy", "node_modules"));
console.log("built", out);
