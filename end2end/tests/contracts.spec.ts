import { expect, test } from "@playwright/test";
import { DiagnosticSeverity, Parser, fromFile, type Diagnostic } from "@asyncapi/parser";
import { mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";

// contracts/asyncapi.yaml (written by `cargo run -p contracts`) read by a real AsyncAPI
// parser, @asyncapi/parser 3, as a tool built on it would read it: no error, the
// channels and messages of the device protocol, each message's payload one of
// contracts/schemas/. No browser page: these tests only read files.

const contracts = path.resolve(__dirname, "..", "..", "contracts");
const document = path.join(contracts, "asyncapi.yaml");
const schemasDir = path.join(contracts, "schemas");

// The schema files that are not one message's body: any message a device sends, any a
// server sends, and a hello's `capabilities` alone (contracts/src/lib.rs).
const NOT_MESSAGES = ["device-message", "server-message", "capabilities"];

async function parse(file: string) {
  const { document, diagnostics } = await fromFile(new Parser(), file).parse();
  return { document, diagnostics, errors: diagnostics.filter((d) => d.severity === DiagnosticSeverity.Error) };
}

function show(diagnostics: Diagnostic[]): string {
  return diagnostics
    .map((d) => `${DiagnosticSeverity[d.severity]} ${d.code} at ${d.path.join(".") || "(root)"}: ${d.message}`)
    .join("\n");
}

function schemaFiles(): string[] {
  return readdirSync(schemasDir)
    .filter((f) => f.endsWith(".schema.json"))
    .map((f) => f.slice(0, -".schema.json".length))
    .sort();
}

function schemaFile(name: string): any {
  return JSON.parse(readFileSync(path.join(schemasDir, `${name}.schema.json`), "utf8"));
}

// A copy of asyncapi.yaml with `from` replaced by `to`, beside the real schemas (its
// relative `$ref`s resolve as the original's do).
function brokenCopy(from: string, to: string): { file: string; cleanup: () => void } {
  const text = readFileSync(document, "utf8");
  expect(text, `asyncapi.yaml no longer holds ${from}: update this test`).toContain(from);
  const dir = mkdtempSync(path.join(os.tmpdir(), "tether-asyncapi-"));
  symlinkSync(schemasDir, path.join(dir, "schemas"));
  const file = path.join(dir, "asyncapi.yaml");
  writeFileSync(file, text.replace(from, to));
  return { file, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

test.describe("the AsyncAPI document", () => {
  test("parses without an error", async () => {
    const { document: parsed, diagnostics, errors } = await parse(document);
    // Every diagnostic is printed, whatever its severity.
    console.log(`@asyncapi/parser on contracts/asyncapi.yaml: ${diagnostics.length} diagnostic(s)\n${show(diagnostics)}`);
    expect(errors, show(errors)).toEqual([]);
    expect(parsed).toBeDefined();
    expect(parsed!.version()).toMatch(/^3\./);
  });

  test("has the protocol's channels, and a message for every message schema", async () => {
    const { document: parsed, errors } = await parse(document);
    expect(errors, show(errors)).toEqual([]);
    const channels = parsed!.channels().all().map((c) => c.id()).sort();
    expect(channels).toEqual(["bye", "discover", "heartbeat", "hello", "inbox", "replies", "telemetry"]);

    const text = readFileSync(document, "utf8");
    const messages = parsed!.components().messages().all();
    const names = messages.map((m) => m.id()).sort();
    const onChannels = new Set(parsed!.channels().all().flatMap((c) => c.messages().all().map((m) => m.id())));
    const files = schemaFiles();
    for (const name of NOT_MESSAGES) expect(files).toContain(name);
    // Each schema file, but the three above, is the body of the message of its name…
    expect(names).toEqual(files.filter((f) => !NOT_MESSAGES.includes(f)));
    for (const message of messages) {
      const name = message.id();
      const payload = message.json().payload;
      // …referenced by its file, and the parser resolved that file.
      expect(text).toContain(`$ref: "./schemas/${name}.schema.json"`);
      expect(payload.schemaFormat).toBe("application/schema+json;version=draft-2020-12");
      const file = schemaFile(name);
      expect(payload.schema.description, name).toBe(file.description);
      expect(Object.keys(payload.schema.properties ?? {}).sort(), name).toEqual(Object.keys(file.properties ?? {}).sort());
      expect([...(payload.schema.required ?? [])].sort(), name).toEqual([...(file.required ?? [])].sort());
      expect(["device", "server"], `${name}: x-sender`).toContain(message.json()["x-sender"]);
      // Every message travels on a channel.
      expect(onChannels, `${name} is on no channel`).toContain(name);
    }
    // Either side's schema of any message is one of that side's messages.
    for (const side of ["device", "server"]) {
      const sent = messages.filter((m) => m.json()["x-sender"] === side);
      expect(schemaFile(`${side}-message`).oneOf.length, `${side}-message`).toBe(sent.length);
    }
    expect(Object.keys(schemaFile("hello").properties)).toContain("capabilities");
  });

  // The parser is not blind: a copy with a deliberate mistake is reported as an error.
  for (const [what, from, to] of [
    ["a message whose schema file is missing", `"./schemas/bye.schema.json"`, `"./schemas/no-such.schema.json"`],
    ["an AsyncAPI version that does not exist", `asyncapi: "3.0.0"`, `asyncapi: "9.9.9"`],
    ["a reference to a message that does not exist", `$ref: "#/components/messages/bye"`, `$ref: "#/components/messages/farewell"`],
  ]) {
    test(`reports ${what} as an error`, async () => {
      const copy = brokenCopy(from, to);
      try {
        const { errors } = await parse(copy.file);
        console.log(`${what}:\n${show(errors)}`);
        expect(errors.length, "no error reported").toBeGreaterThan(0);
      } finally {
        copy.cleanup();
      }
    });
  }
});
