// The books benchmark as the project runs it (results in bench/results/books-cpu.json and its plots): the
// command is `memgpt bench books` (lib/cli/bench/books); this wrapper only fixes where the results go. With --jobs,
// the runs are child processes of bin/memgpt.js, which runs the compiled dist/ (npm run build:ts).
// Usage: npx tsx bench/books.ts [memgpt bench books flags], e.g. --corpus kjv --seeds 1 --jobs 2
import { main } from '../lib/cli/main.js';

const argv = process.argv.slice(2);
process.exitCode = await main(['bench', 'books', ...(argv.includes('--out') ? argv : [...argv, '--out', 'bench/results/books-cpu.json'])]);
