// Parses and validates an AsyncAPI document with the reference parser (@asyncapi/parser, which runs the
// specification's JSON Schema and its Spectral rules). Prints every diagnostic as one JSON line; exits 1 when any
// is an error or the document could not be parsed, 2 on bad usage.
import { readFileSync } from 'node:fs';
import { Parser } from '@asyncapi/parser';

const path = process.argv[2];
if (!path) {
  console.error('usage: node validate.mjs DOCUMENT.json');
  process.exit(2);
}
const { document, diagnostics } = await new Parser().parse(readFileSync(path, 'utf8'));
const severities = ['error', 'warning', 'information', 'hint'];
for (const d of diagnostics) {
  console.log(JSON.stringify({
    severity: severities[d.severity] ?? String(d.severity),
    code: d.code,
    message: d.message,
    path: d.path.join('/'),
  }));
}
const errors = diagnostics.filter((d) => d.severity === 0).length;
if (!document || errors > 0) {
  console.error(`${path}: ${errors} error(s); the document ${document ? 'parsed' : 'did not parse'}`);
  process.exit(1);
}
console.log(JSON.stringify({ valid: true, channels: document.channels().length, messages: document.allMessages().length }));
