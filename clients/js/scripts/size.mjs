// `npm run size`: the client as an app bundles it (the main entry with the IndexedDB
// storage; the storage wrapper `idb` left out, as the budget says), minified by
// esbuild, then gzipped. Prints the bytes and fails above the 15 KB budget.
import { build } from 'esbuild';
import { gzipSync } from 'node:zlib';

const BUDGET = 15_000;
const result = await build({
  stdin: {
    contents: "export * from './dist/index.js'; export { IndexedDBStorage } from './dist/indexeddb.js';",
    resolveDir: new URL('..', import.meta.url).pathname,
    loader: 'js',
  },
  bundle: true,
  minify: true,
  format: 'esm',
  platform: 'browser',
  target: 'es2022',
  external: ['idb'],
  write: false,
  legalComments: 'none',
});
const code = result.outputFiles[0].contents;
const gz = gzipSync(code, { level: 9 }).length;
console.log(`@edgesync/client (index + indexeddb, without idb): ${code.length} bytes minified, ${gz} bytes minified+gzip (budget ${BUDGET})`);
if (gz > BUDGET) {
  console.error(`over budget by ${gz - BUDGET} bytes`);
  process.exit(1);
}
