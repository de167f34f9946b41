// `npm run bench:kernels`: the kernel microbenchmarks (lib/cli/bench/kernels.ts), the same as `memgpt bench kernels`.
// Usage: npx tsx bench/kernels.ts [--device cpu|cuda] [--preset small|base|all] [--only SUBSTRING] [--json]
import { main } from '../lib/cli/main.js';

process.exitCode = await main(['bench', 'kernels', ...process.argv.slice(2)]);
