// Decoding speed (lib/cli/bench/decode.ts: `memgpt bench decode`, whose flags it takes) on one thread unless
// --threads says otherwise. Versions before b6789a5 have no lib/cli/bench/decode.ts: time them with bench/decode.ts
// of 74a06be (a standalone script) copied into their tree (--decoder-only: the Decoder they have too), in rounds
// alternating with this one.
// Usage: npx tsx bench/decode.ts [--threads 1] [--preset small] [--device cpu|cuda] [--batches 1,4,16] [--tokens 320]
//        [--repeats 3] [--precision float32|bfloat16] [--eager] [--decoder-only] [--out FILE.json] [--json]
import * as mg from '../lib/index.js';
import { main } from '../lib/cli/main.js';

const argv = process.argv.slice(2);
const at = argv.indexOf('--threads');
mg.setNumThreads(at >= 0 ? Number(argv[at + 1]) : 1);
process.exitCode = await main(['bench', 'decode', ...(at >= 0 ? [...argv.slice(0, at), ...argv.slice(at + 2)] : argv)]);
