// Small SVG line charts for the run folder (loss curves, memory diagnostics):
// plain text, no dependencies, readable in any browser or editor preview.
import { existsSync, readFileSync } from 'node:fs';

import { writeFileAtomic, type RunFiles } from './run-folder.js';

export interface Series {
  name: string;
  points: [x: number, y: number][];
}

const palette = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#17becf'];

function niceTicks(lo: number, hi: number, count: number): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? raw;
  const ticks: number[] = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(Number(t.toPrecision(12)));
  return ticks;
}

const escape = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

/** A line chart of one or more series as an SVG document. Non-finite points are skipped. */
export function lineChart(series: Series[], options: { title: string; xLabel: string; yLabel: string; width?: number; height?: number }): string {
  const width = options.width ?? 720, height = options.height ?? 420;
  const m = { left: 64, right: 150, top: 36, bottom: 48 };
  const pts = series.flatMap((s) => s.points).filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
  const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
  // Folded, not spread: Math.min(...xs) overflows the call stack past about 100k points (a long run logging every step).
  const range = (v: number[]): [number, number] => (v.length ? [v.reduce((a, b) => Math.min(a, b)), v.reduce((a, b) => Math.max(a, b))] : [0, 1]);
  let [x0, x1] = range(xs);
  let [y0, y1] = range(ys);
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) [y0, y1] = [y0 - 0.5, y1 + 0.5];
  const pad = (y1 - y0) * 0.05;
  y0 -= pad;
  y1 += pad;
  const px = (x: number) => m.left + ((x - x0) / (x1 - x0)) * (width - m.left - m.right);
  const py = (y: number) => height - m.bottom - ((y - y0) / (y1 - y0)) * (height - m.top - m.bottom);
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${width / 2}" y="20" text-anchor="middle" font-size="14">${escape(options.title)}</text>`,
  ];
  for (const t of niceTicks(y0, y1, 6)) {
    out.push(`<line x1="${m.left}" x2="${width - m.right}" y1="${py(t)}" y2="${py(t)}" stroke="#eee"/>`);
    out.push(`<text x="${m.left - 6}" y="${py(t) + 4}" text-anchor="end">${t}</text>`);
  }
  for (const t of niceTicks(x0, x1, 8)) out.push(`<text x="${px(t)}" y="${height - m.bottom + 16}" text-anchor="middle">${t}</text>`);
  out.push(`<rect x="${m.left}" y="${m.top}" width="${width - m.left - m.right}" height="${height - m.top - m.bottom}" fill="none" stroke="#888"/>`);
  out.push(`<text x="${(m.left + width - m.right) / 2}" y="${height - 10}" text-anchor="middle">${escape(options.xLabel)}</text>`);
  out.push(`<text transform="translate(16 ${(m.top + height - m.bottom) / 2}) rotate(-90)" text-anchor="middle">${escape(options.yLabel)}</text>`);
  series.forEach((s, i) => {
    const color = palette[i % palette.length];
    const path = s.points
      .filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y))
      .map(([x, y], j) => `${j ? 'L' : 'M'}${px(x).toFixed(1)},${py(y).toFixed(1)}`)
      .join('');
    if (path) out.push(`<path d="${path}" fill="none" stroke="${color}" stroke-width="1.5"/>`);
    out.push(`<line x1="${width - m.right + 10}" x2="${width - m.right + 30}" y1="${m.top + 10 + i * 18}" y2="${m.top + 10 + i * 18}" stroke="${color}" stroke-width="2"/>`);
    out.push(`<text x="${width - m.right + 36}" y="${m.top + 14 + i * 18}">${escape(s.name)}</text>`);
  });
  out.push('</svg>');
  return out.join('\n') + '\n';
}

/** The fields of a metrics.jsonl row the plots read (a Trainer's StepLog). */
interface MetricsRow {
  step: number;
  loss: number;
  lr: number;
  gradNorm: number;
  evalLoss?: number;
  memory?: { readGate: number; writeGate: number; pointerEntropy: number }[];
}

/** Redraws a run folder's loss.svg, optimizer.svg and memory.svg from its metrics.jsonl. */
export function drawRunPlots(files: RunFiles, segmentLen: number): void {
  if (!existsSync(files.metrics)) return;
  const rows = readFileSync(files.metrics, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as MetricsRow);
  const atomic = writeFileAtomic;
  atomic(files.lossPlot, lineChart([
    { name: 'train loss', points: rows.map((r) => [r.step, r.loss]) },
    { name: 'held-out loss', points: rows.filter((r) => r.evalLoss !== undefined).map((r) => [r.step, r.evalLoss!]) },
  ], { title: 'Loss (nats per token)', xLabel: 'step', yLabel: 'loss' }));
  // The learning rate scaled to the gradient norm's range, so that both read on one axis.
  const peakNorm = rows.reduce((a, r) => Math.max(a, r.gradNorm), 0), peakLr = rows.reduce((a, r) => Math.max(a, r.lr), 0);
  const lrScale = peakLr > 0 && peakNorm > 0 ? peakNorm / peakLr : 1;
  atomic(files.optimizerPlot, lineChart([
    { name: 'gradient norm (before clipping)', points: rows.map((r) => [r.step, r.gradNorm]) },
    { name: `learning rate × ${lrScale.toPrecision(3)}`, points: rows.map((r) => [r.step, r.lr * lrScale]) },
  ], { title: `Optimizer: gradient norm and learning rate (peak ${peakLr.toPrecision(3)})`, xLabel: 'step', yLabel: 'norm' }));
  const withMemory = rows.filter((r) => r.memory?.length);
  if (withMemory.length) {
    const layers = withMemory[0].memory!.length;
    const series = [];
    for (let l = 0; l < layers; l++) {
      series.push({ name: `L${l} read gate`, points: withMemory.map((r) => [r.step, r.memory![l].readGate] as [number, number]) });
      series.push({ name: `L${l} write gate`, points: withMemory.map((r) => [r.step, r.memory![l].writeGate] as [number, number]) });
      // Normalised by its uniform value ln T: 1 = the pointer spreads over the whole segment, 0 = one token.
      const lnT = Math.log(segmentLen);
      series.push({ name: `L${l} pointer entropy / ln T`, points: withMemory.map((r) => [r.step, r.memory![l].pointerEntropy / lnT] as [number, number]) });
    }
    atomic(files.memoryPlot, lineChart(series, { title: 'Memory use per layer (mean gates, pointer entropy)', xLabel: 'step', yLabel: 'gate / entropy ÷ ln T' }));
  }
}
