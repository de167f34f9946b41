#!/usr/bin/env node
// The `memgpt` command: runs the compiled CLI (dist/cli.js, built by `npm install`).
import { main } from '../dist/cli.js';

process.exitCode = await main(process.argv.slice(2));
