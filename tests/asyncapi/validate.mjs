// validate.mjs FILE|URL: parses an AsyncAPI document with the AsyncAPI
// parser (which also runs its Spectral ruleset), prints every diagnostic and
// exits non-zero if any has error severity or the document cannot be read.
import { readFile } from "node:fs/promises";
import { Parser, DiagnosticSeverity } from "@asyncapi/parser";

const source = process.argv[2];
if (!source) {
  console.error("usage: node validate.mjs FILE|URL");
  process.exit(2);
}

async function load(src) {
  if (/^https?:\/\//.test(src)) {
    const res = await fetch(src);
    if (!res.ok) throw new Error(`GET ${src}: HTTP ${res.status}`);
    return res.text();
  }
  return readFile(src, "utf8");
}

const severities = {
  [DiagnosticSeverity.Error]: "error",
  [DiagnosticSeverity.Warning]: "warning",
  [DiagnosticSeverity.Information]: "info",
  [DiagnosticSeverity.Hint]: "hint",
};

let text;
try {
  text = await load(source);
} catch (err) {
  console.error(`${source}: ${err.message}`);
  process.exit(1);
}

const parser = new Parser();
const { document, diagnostics } = await parser.parse(text, { source });
let errors = 0;
for (const d of diagnostics) {
  const sev = severities[d.severity] ?? String(d.severity);
  if (d.severity === DiagnosticSeverity.Error) errors++;
  const line = d.range ? d.range.start.line + 1 : 0;
  const where = d.path && d.path.length ? d.path.join(".") : "(document)";
  console.log(`${source}:${line}: ${sev} ${d.code}: ${d.message} at ${where}`);
}
if (errors > 0 || !document) {
  console.error(`${source}: ${errors} error(s); not a valid AsyncAPI document`);
  process.exit(1);
}
console.log(`${source}: valid AsyncAPI ${document.version()} (${diagnostics.length} diagnostics, none errors)`);
