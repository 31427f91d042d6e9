// Drive the official @actions/cache client against the endpoints in the environment.
//   node cache_roundtrip.mjs save KEY PATH...
//   node cache_roundtrip.mjs restore KEY RESTORE_KEYS_JSON PATH...
// The last stdout line is a JSON result: {"cacheId": n} or {"matchedKey": "k" | null}.
// Must sit beside a node_modules holding @actions/cache (ESM resolves from the script's directory).
import * as cache from '@actions/cache';

const [mode, key, ...rest] = process.argv.slice(2);

async function main() {
  if (mode === 'save') {
    const cacheId = await cache.saveCache(rest, key);
    return { cacheId };
  }
  if (mode === 'restore') {
    const [restoreKeys, ...paths] = rest;
    const matchedKey = await cache.restoreCache(paths, key, JSON.parse(restoreKeys));
    return { matchedKey: matchedKey ?? null };
  }
  throw new Error(`unknown mode ${mode}`);
}

main().then(
  (result) => { process.stdout.write('\n' + JSON.stringify(result) + '\n'); },
  (err) => { process.stdout.write('\n' + JSON.stringify({ error: String(err && err.stack || err) }) + '\n'); process.exitCode = 1; },
);
