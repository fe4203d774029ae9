#!/usr/bin/env node
// After `cargo leptos build --release --split`: gives the main tether.<hash>.js and
// tether.<hash>.wasm names that change whenever the on-demand files do.
//
// cargo-leptos names every file by its content's hash, the main two before it writes the
// on-demand loader's name (__wasm_split.<hash>.js) into them. So a release that changed
// only pages loaded on demand can ship new main files under their old names, which
// browsers keep for a year (immutable): they would then ask for a loader that no longer
// exists. Here the main JS, the main WASM and the loader are renamed so that each name
// is fixed by what its file finally holds (below), their references to each other are
// rewritten, and so is hash.txt, which the server reads to link them.
//
// Usage: scripts/rehash-split.mjs <site pkg dir> <hash.txt> [output name]
// Does nothing for a site built without --split.
import { createHash } from "node:crypto";
import { readFileSync, readdirSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const [pkg, hashFile, name = "tether"] = process.argv.slice(2);
if (!pkg || !hashFile) {
  console.error("usage: rehash-split.mjs <site pkg dir> <hash.txt> [output name]");
  process.exit(2);
}

const loaders = readdirSync(pkg).filter((f) => /^__wasm_split\.[A-Za-z0-9_-]{22}\.js$/.test(f));
if (loaders.length === 0) {
  console.log("rehash-split: not a split site; nothing to do");
  process.exit(0);
}
if (loaders.length > 1) {
  throw new Error(`rehash-split: ${pkg} holds ${loaders.length} loaders (${loaders.join(", ")}); build afresh`);
}
const loader = loaders[0];

let hashes = readFileSync(hashFile, "utf8");
const hashOf = (kind) => {
  const found = hashes.match(new RegExp(`^${kind}: *([A-Za-z0-9_-]{22}) *$`, "m"));
  if (!found) throw new Error(`rehash-split: ${hashFile} names no ${kind} file`);
  return found[1];
};
// MD5, URL-safe base64 without padding: 22 characters, as cargo-leptos names files.
const digest = (...parts) => createHash("md5").update(parts.join("\n")).digest("base64url");

// The loader's name (L) is the hash of its content, which names the main JS and every
// on-demand file; the main WASM and JS name the loader. New names, each fixed by what
// the file will hold:
//   JS'     = H(js, L)          the main JS, which will name L'
//   L'      = H(L, JS')         the loader, which will name JS'
//   WASM'   = H(wasm, L')       the main WASM, which will name L'
const L = loader.slice("__wasm_split.".length, -".js".length);
// Run again on a site it already renamed (a build that changed nothing): nothing to do.
if (hashes.match(/^rehashed: *([A-Za-z0-9_-]{22}) *$/m)?.[1] === L) {
  console.log("rehash-split: already done for this build");
  process.exit(0);
}
const [js, wasm] = [hashOf("js"), hashOf("wasm")];
if (hashOf("split") !== L) throw new Error(`rehash-split: ${hashFile} names another loader than ${loader}`);
const newJs = digest(js, L);
const newL = digest(L, newJs);
const newWasm = digest(wasm, newL);

const oldLoader = `__wasm_split.${L}.js`;
const newLoader = `__wasm_split.${newL}.js`;
// Same length, so the WASM's bytes are patched in place.
const patch = (file, from, to) => {
  const path = join(pkg, file);
  const bytes = readFileSync(path);
  const [a, b] = [Buffer.from(from), Buffer.from(to)];
  if (a.length !== b.length) throw new Error("rehash-split: names of different lengths");
  let at = bytes.indexOf(a);
  if (at < 0) throw new Error(`rehash-split: ${file} does not mention ${from}`);
  for (; at >= 0; at = bytes.indexOf(a, at + a.length)) b.copy(bytes, at);
  writeFileSync(path, bytes);
};
patch(`${name}.${js}.js`, oldLoader, newLoader);
patch(`${name}.${wasm}.wasm`, oldLoader, newLoader);
patch(loader, `${name}.${js}.js`, `${name}.${newJs}.js`);
renameSync(join(pkg, `${name}.${js}.js`), join(pkg, `${name}.${newJs}.js`));
renameSync(join(pkg, `${name}.${wasm}.wasm`), join(pkg, `${name}.${newWasm}.wasm`));
renameSync(join(pkg, loader), join(pkg, newLoader));
hashes = hashes
  .replace(new RegExp(`^js: *${js} *$`, "m"), `js: ${newJs}`)
  .replace(new RegExp(`^wasm: *${wasm} *$`, "m"), `wasm: ${newWasm}`)
  .replace(new RegExp(`^split: *${L} *$`, "m"), `split: ${newL}`)
  .replace(/^rehashed:.*\n?/m, "");
// Read by this script only (leptos and the server ignore other keys).
hashes = `${hashes.trimEnd()}\nrehashed: ${newL}\n`;
writeFileSync(hashFile, hashes);
console.log(`rehash-split: main JS ${js} -> ${newJs}, main WASM ${wasm} -> ${newWasm}, loader ${L} -> ${newL}`);
