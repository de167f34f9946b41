// The foundation demo: fits W so that softmax(X·W) matches a hidden teacher's
// softmax(X·W*), by gradient descent on the squared error. It drives the whole
// path (tensors, native matmul and softmax, autograd, tidy) on the chosen device.
import { addInPlace, mul, scale, sub } from '../ops/elementwise.js';
import { matmul } from '../ops/matmul.js';
import { mean } from '../ops/mean.js';
import { softmax } from '../ops/softmax.js';
import { noGrad } from '../core/autograd.js';
import { Rng } from '../core/random.js';
import { memory } from '../core/storage.js';
import { parameter, randn, tidy } from '../core/tensor.js';
import type { Device } from '../native/backend.js';

export interface DemoOptions {
  device: Device;
  steps: number;
  lr: number;
  seed: number;
  log: (line: string) => void;
}

export interface DemoResult {
  firstLoss: number;
  finalLoss: number;
  stepsPerSecond: number;
}

export function runDemo({ device, steps, lr, seed, log }: DemoOptions): DemoResult {
  const [batch, dIn, dOut] = [256, 64, 32];
  const rng = new Rng(seed);
  const teacher = randn([dIn, dOut], { device, rng, std: 0.5 });
  const w = parameter(randn([dIn, dOut], { device, rng, std: 0.01 }), 'W');
  let firstLoss = NaN, finalLoss = NaN;
  const start = performance.now();
  try {
    for (let step = 1; step <= steps; step++) {
      const loss = tidy(() => {
        const x = randn([batch, dIn], { device, rng });
        const target = noGrad(() => softmax(matmul(x, teacher)));
        const diff = sub(softmax(matmul(x, w)), target);
        const l = mean(mul(diff, diff));
        l.backward();
        noGrad(() => addInPlace(w, scale(w.grad!, -lr)));
        w.zeroGrad();
        return l.item();
      });
      if (step === 1) firstLoss = loss;
      finalLoss = loss;
      if (step === 1 || step % Math.max(1, Math.floor(steps / 10)) === 0) log(`step ${String(step).padStart(4)}  loss ${loss.toExponential(4)}`);
    }
  } finally {
    teacher.dispose();
    w.dispose();
  }
  const seconds = (performance.now() - start) / 1000;
  const m = memory(device);
  log(`done: loss ${firstLoss.toExponential(3)} -> ${finalLoss.toExponential(3)} in ${seconds.toFixed(2)} s; live tensors ${m.liveTensors}, peak ${(m.peakBytes / 1024).toFixed(0)} KiB on ${device}`);
  return { firstLoss, finalLoss, stepsPerSecond: steps / seconds };
}
