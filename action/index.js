// Export the runner's cache-service variables to later steps through $GITHUB_ENV.
//
// The runner sets ACTIONS_RUNTIME_TOKEN, ACTIONS_RESULTS_URL, ACTIONS_CACHE_URL
// and ACTIONS_CACHE_SERVICE_V2 for JavaScript actions only; `run:` steps (and
// composite actions) do not see them. No dependencies: plain Node 20.
'use strict';

const crypto = require('crypto');
const fs = require('fs');

const NAMES = ['ACTIONS_RUNTIME_TOKEN', 'ACTIONS_RESULTS_URL', 'ACTIONS_CACHE_URL', 'ACTIONS_CACHE_SERVICE_V2'];

function fail(message) {
  process.stdout.write(`::error::${message}\n`);
  process.exit(1);
}

function main() {
  const envFile = process.env.GITHUB_ENV;
  if (!envFile) fail('GITHUB_ENV is not set: run this as a step of a GitHub Actions job');
  const token = process.env.ACTIONS_RUNTIME_TOKEN;
  if (!token) fail('ACTIONS_RUNTIME_TOKEN is not set: the runner gives it to JavaScript actions only');
  // The heredoc form, with a random delimiter, cannot be broken by a value.
  const lines = [];
  const exported = [];
  for (const name of NAMES) {
    const value = process.env[name];
    if (value === undefined || value === '') continue;
    const delimiter = `ghadelimiter_${crypto.randomUUID()}`;
    if (value.includes(delimiter)) fail(`${name}: value contains the delimiter`);
    lines.push(`${name}<<${delimiter}`, value, delimiter);
    exported.push(name);
  }
  fs.appendFileSync(envFile, lines.join('\n') + '\n', { encoding: 'utf8' });
  process.stdout.write(`exported ${exported.join(', ')} for later steps\n`);
}

main();
