// The optim family: AdamW, SGD, gradient norm and clipping, against plain float64 TypeScript versions
// of PyTorch's algorithms over a few steps, with weight decay on and off, a param without a gradient,
// a param big enough to span several kernel chunks, state save/load, leaks and bad input.
import { describe, expect, it } from 'vitest';

import * as mg from '../lib/index.js';
import { expectClose, expectNoLeaks, forEachDevice, randomArray } from './helpers.js';

interface RefParam {
  w: Float64Array;
  m: Float64Array;
  v: Float64Array;
  t: number;
}

/** torch.optim.AdamW, one step for one param, in float64. */
function refAdamW(p: RefParam, g: ArrayLike<number>, lr: number, b1: number, b2: number, eps: number, wd: number): void {
  p.t++;
  const bc1 = 1 - b1 ** p.t, bc2 = 1 - b2 ** p.t;
  for (let i = 0; i < p.w.length; i++) {
    p.w[i] *= 1 - lr * wd;
    p.m[i] = b1 * p.m[i] + (1 - b1) * g[i];
    p.v[i] = b2 * p.v[i] + (1 - b2) * g[i] * g[i];
    p.w[i] -= (lr / bc1) * p.m[i] / (Math.sqrt(p.v[i]) / Math.sqrt(bc2) + eps);
  }
}

const shapes = [[7, 5], [13], [300, 250], [1]];  // 75000 elements: several 32768-element chunks

function makeParams(device: mg.Device, seed: number): mg.Parameter[] {
  return shapes.map((s, i) => mg.parameter(mg.tensor(randomArray(s.reduce((a, b) => a * b, 1), seed + i), s, { device })));
}

function setGrads(params: mg.Tensor[], seed: number, skip = -1, scale = 1): Float32Array[] {
  return params.map((p, i) => {
    p.zeroGrad();
    const g = randomArray(p.size, seed + 100 * i, -scale, scale);
    if (i !== skip) p.grad = mg.tensor(g, p.shape, { device: p.device });
    return g;
  });
}

function disposeAll(params: mg.Tensor[]): void {
  for (const p of params) {
    p.zeroGrad();
    p.dispose();
  }
}

forEachDevice((device) => {
  describe('AdamW', () => {
    for (const [label, wd] of [['with weight decay', 0.1], ['without weight decay', 0]] as const) {
      it(`matches PyTorch's AdamW in float64 over 4 steps, ${label}, noDecay and a param without a gradient`, () => {
        const params = makeParams(device, 1);
        const [lr, b1, b2, eps] = [3e-3, 0.9, 0.95, 1e-8];
        const opt = new mg.AdamW(params, { lr, betas: [b1, b2], eps, weightDecay: wd, noDecay: [params[1]] });
        const ref: RefParam[] = params.map((p) => ({ w: Float64Array.from(p.toArray()), m: new Float64Array(p.size), v: new Float64Array(p.size), t: 0 }));
        for (let step = 0; step < 4; step++) {
          const skip = step < 2 ? 3 : -1;  // param 3 gets no gradient in the first two steps, then starts at t = 1
          const grads = setGrads(params, 10 * step, skip);
          const stepLr = step === 3 ? lr / 2 : undefined;
          opt.step(stepLr);
          ref.forEach((r, i) => {
            if (i !== skip) refAdamW(r, grads[i], stepLr ?? lr, b1, b2, eps, i === 1 ? 0 : wd);
          });
        }
        expect(opt.stepCount).toBe(4);
        const state = opt.state();
        expect(state.steps).toEqual([4, 4, 4, 2]);
        params.forEach((p, i) => {
          // float32 rounding of w (|w| ≤ 1) and of the update, accumulated over 4 steps.
          expectClose(p.toArray(), ref[i].w, 2e-6, 1e-6);
          expectClose(state.m[i].toArray(), ref[i].m, 1e-7, 1e-5);
          expectClose(state.v[i].toArray(), ref[i].v, 1e-8, 1e-5);
        });
        opt.dispose();
        disposeAll(params);
      });
    }

    it('leaves a param without a gradient untouched', () => {
      const params = makeParams(device, 2);
      const before = params.map((p) => Array.from(p.toArray()));
      const opt = new mg.AdamW(params, { weightDecay: 0.5 });
      setGrads(params, 3, 0);
      opt.step();
      expect(Array.from(params[0].toArray())).toEqual(before[0]);
      expect(Array.from(params[1].toArray())).not.toEqual(before[1]);
      expect(Array.from(opt.state().m[0].toArray()).every((x) => x === 0)).toBe(true);
      opt.dispose();
      disposeAll(params);
    });

    it('a state saved and loaded continues exactly', () => {
      const a = makeParams(device, 4), b = makeParams(device, 4);
      const optA = new mg.AdamW(a, { lr: 1e-2 }), optB = new mg.AdamW(b, { lr: 1e-2 });
      for (let s = 0; s < 2; s++) {
        setGrads(a, s, s === 0 ? 2 : -1);
        optA.step();
      }
      a.forEach((p, i) => b[i].storage.backend.copy(b[i].handle, 0, p.handle, 0, p.size * 4));
      optB.loadState(optA.state());
      expect(optB.stepCount).toBe(2);
      setGrads(a, 7);
      setGrads(b, 7);
      optA.step();
      optB.step();
      a.forEach((p, i) => expect(Array.from(b[i].toArray())).toEqual(Array.from(p.toArray())));
      optA.dispose();
      optB.dispose();
      disposeAll([...a, ...b]);
    });

    it('frees its moments on dispose, and steps allocate nothing lasting', () => {
      const params = makeParams(device, 5);
      setGrads(params, 6);
      expectNoLeaks(device, () => {
        mg.tidy(() => {
          const opt = new mg.AdamW(params);
          opt.step();
          opt.step(1e-4);
          opt.dispose();
        });
      });
      disposeAll(params);
    });
  });

  describe('SGD', () => {
    it('w ← w − lr·g, skipping params without a gradient', () => {
      const params = makeParams(device, 8);
      const expected = params.map((p) => Float64Array.from(p.toArray()));
      const opt = new mg.SGD(params, { lr: 0.1 });
      for (let step = 0; step < 2; step++) {
        const grads = setGrads(params, 20 + step, 2);
        opt.step(step === 1 ? 0.05 : undefined);
        expected.forEach((w, i) => {
          if (i !== 2) for (let e = 0; e < w.length; e++) w[e] -= (step === 1 ? 0.05 : 0.1) * grads[i][e];
        });
      }
      params.forEach((p, i) => expectClose(p.toArray(), expected[i], 1e-6, 1e-6));
      disposeAll(params);
    });
  });

  describe('gradNorm and clipGradNorm', () => {
    const refNorm = (grads: Float32Array[], skip = -1) =>
      Math.sqrt(grads.reduce((s, g, i) => (i === skip ? s : g.reduce((a, x) => a + x * x, s)), 0));

    it('the global norm of all gradients (a param without one counts nothing)', () => {
      const params = makeParams(device, 9);
      const grads = setGrads(params, 30, 1);
      expect(mg.gradNorm(params)).toBeCloseTo(refNorm(grads, 1), 9);
      params.forEach((p) => p.zeroGrad());
      expect(mg.gradNorm(params)).toBe(0);
      disposeAll(params);
    });

    it('clips to maxNorm when above it, as torch clip_grad_norm_, and returns the norm before', () => {
      const params = makeParams(device, 10);
      const grads = setGrads(params, 40);
      const norm = refNorm(grads);
      expect(mg.clipGradNorm(params, norm * 2)).toBeCloseTo(norm, 9);
      params.forEach((p, i) => expect(Array.from(p.grad!.toArray())).toEqual(Array.from(grads[i])));
      const maxNorm = norm / 4;
      expect(mg.clipGradNorm(params, maxNorm)).toBeCloseTo(norm, 9);
      const coef = maxNorm / (norm + 1e-6);
      params.forEach((p, i) => expectClose(p.grad!.toArray(), Array.from(grads[i], (g) => g * coef), 1e-7, 1e-6));
      expect(mg.gradNorm(params)).toBeCloseTo(maxNorm, 5);
      disposeAll(params);
    });

    it('scales a gradient buffer shared by two params once', () => {
      mg.tidy(() => {
        const a = mg.tensor([3, 0], [2], { device, requiresGrad: true }), b = mg.tensor([1, 1], [2], { device, requiresGrad: true });
        mg.sum(mg.mul(mg.add(a, b), mg.tensor([0, 4], [2], { device }))).backward();  // dA = dB = [0, 4]
        expect(mg.clipGradNorm([a, b], 1)).toBeCloseTo(Math.sqrt(32), 6);
        expectClose(a.grad!.toArray(), [0, 4 / (Math.sqrt(32) + 1e-6)], 1e-6, 1e-6);
        expectClose(b.grad!.toArray(), [0, 4 / (Math.sqrt(32) + 1e-6)], 1e-6, 1e-6);
        a.zeroGrad();
        b.zeroGrad();
      });
    });

    it('reports a non-finite norm and leaves the gradients as they are', () => {
      const params = makeParams(device, 11);
      const grads = setGrads(params, 50);
      params[0].grad!.dispose();
      const bad = Float32Array.from(grads[0]);
      bad[3] = Infinity;
      params[0].grad = mg.tensor(bad, params[0].shape, { device });
      expect(mg.clipGradNorm(params, 1)).toBe(Infinity);
      expect(Array.from(params[1].grad!.toArray())).toEqual(Array.from(grads[1]));
      disposeAll(params);
    });
  });

  describe('optim bad input', () => {
    it('throws clear errors', () => {
      const params = makeParams(device, 12);
      const ints = mg.parameter(mg.zeros([3], { device, dtype: 'int32' }));
      expect(() => new mg.AdamW([...params, ints])).toThrow(/AdamW: params\[4\] \[3\] has dtype int32; expected float32/);
      expect(() => new mg.SGD([ints], { lr: 1 })).toThrow(/SGD: params\[0\] \[3\] has dtype int32/);
      expect(() => new mg.AdamW(params, { lr: 0 })).toThrow(/AdamW: lr must be a positive finite number, got 0/);
      expect(() => new mg.SGD(params, { lr: -1 })).toThrow(/SGD: lr must be a positive finite number, got -1/);
      expect(() => new mg.AdamW(params, { betas: [0.9, 1] })).toThrow(/AdamW: betas\[1\] must be in \[0, 1\)/);
      expect(() => new mg.AdamW([params[0], params[0]])).toThrow(/listed twice/);
      expect(() => mg.clipGradNorm(params, -1)).toThrow(/clipGradNorm: maxNorm must be a non-negative finite number/);
      const opt = new mg.AdamW(params);
      expect(() => opt.step(-1e-3)).toThrow(/AdamW.step: lr must be a positive finite number/);
      params[0].grad = mg.zeros([2], { device });
      expect(() => opt.step()).toThrow(/AdamW.step: the gradient of params\[0\] is Tensor\(\[2\]/);
      expect(() => opt.loadState({ m: [], v: [], step: 0 })).toThrow(/AdamW.loadState: the state must have m and v/);
      opt.dispose();
      expect(() => opt.step()).toThrow(/AdamW.step: the optimizer was disposed/);
      disposeAll([...params, ints]);
    });
  });
});
