// The training-step benchmark (lib/cli/bench/train.ts), the same as `memgpt bench train`; bench/compare-train.sh runs it.
// Usage: npx tsx bench/train.ts [--preset small] [--batch-size 8] [--segments 4] [--steps 5] [--device cpu|cuda] [--json]
import { main } from '../lib/cli/main.js';

process.exitCode = await main(['bench', 'train', ...process.argv.slice(2)]);
