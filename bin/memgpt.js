#!/usr/bin/env node
// The `memgpt` command: runs the compiled CLI (dist/cli/main.js, built by `npm install`).
import { main } from '../dist/cli/main.js';

process.exitCode = await main(process.argv.slice(2));
