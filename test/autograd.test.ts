// The autograd engine: accumulation, shared inputs, no-grad mode, graph
// retention and freeing, deep graphs, and the gradient checker itself.
import { describe, expect, it } from 'vitest';

import * as mg from '../lib/index.js';
import { expectNoLeaks, forEachDevice, values } from './helpers.js';

forEachDevice((device) => {
  const opts = { device };

  describe('autograd', () => {
    it('accumulates leaf gradients across backward calls until zeroGrad', () => {
      const x = mg.parameter(mg.tensor([1, 2, 3], [3], opts));
      expectNoLeaks(device, () => {
        mg.tidy(() => mg.sum(mg.mul(x, x)).backward());
        expect(values(x.grad!)).toEqual([2, 4, 6]);
        mg.tidy(() => mg.sum(x).backward());
        expect(values(x.grad!)).toEqual([3, 5, 7]);
        x.zeroGrad();
        expect(x.grad).toBeNull();
      });
      x.dispose();
    });

    it('sums the gradients of a tensor used several times', () => {
      mg.tidy(() => {
        const x = mg.tensor([2], [1], { ...opts, requiresGrad: true });
        // y = x*x + x*x*x  ->  dy/dx = 2x + 3x^2 = 16
        const sq = mg.mul(x, x);
        mg.sum(mg.add(sq, mg.mul(sq, x))).backward();
        expect(values(x.grad!)).toEqual([16]);
        x.grad!.dispose();
      });
    });

    it('records nothing under noGrad, and tensors without requiresGrad make no graph', () => {
      mg.tidy(() => {
        const x = mg.tensor([1, 2], [2], { ...opts, requiresGrad: true });
        const y = mg.noGrad(() => mg.mul(x, x));
        expect(y.requiresGrad).toBe(false);
        expect(mg.isGradEnabled()).toBe(true);
        expect(() => mg.sum(y).backward()).toThrow(/does not require grad/);
        const z = mg.mul(mg.ones([2], opts), mg.ones([2], opts));
        expect(z.requiresGrad).toBe(false);
      });
    });

    it('frees the graph after backward unless retainGraph', () => {
      mg.tidy(() => {
        const x = mg.tensor([1, 2], [2], { ...opts, requiresGrad: true });
        const loss = mg.sum(mg.mul(x, x));
        loss.backward(undefined, { retainGraph: true });
        loss.backward();
        expect(values(x.grad!)).toEqual([4, 8]);
        expect(() => loss.backward()).toThrow(/already freed by an earlier backward/);
        x.grad!.dispose();
      });
    });

    it('needs an explicit gradient for a non-scalar output', () => {
      mg.tidy(() => {
        const x = mg.tensor([1, 2], [2], { ...opts, requiresGrad: true });
        const y = mg.scale(x, 3);
        expect(() => y.backward()).toThrow(/has 2 elements; pass its gradient/);
        y.backward(mg.tensor([1, 10], [2], opts));
        expect(values(x.grad!)).toEqual([3, 30]);
        x.grad!.dispose();
      });
    });

    it('gradients pass through tensors disposed by an inner tidy', () => {
      const w = mg.parameter(mg.tensor([0.5, -1], [2], opts));
      expectNoLeaks(device, () => {
        const loss = mg.tidy(() => {
          const h = mg.tidy(() => mg.mul(mg.mul(w, w), w)); // intermediates gone, graph kept
          return mg.sum(h);
        });
        loss.backward();
        loss.dispose();
        expect(values(w.grad!)).toEqual([0.75, 3]);
        w.zeroGrad();
      });
      w.dispose();
    });

    it('runs backward through a deep chain without recursion limits', () => {
      expectNoLeaks(device, () => {
        const x = mg.parameter(mg.tensor([1], [1], opts));
        mg.tidy(() => {
          let h = x as mg.Tensor;
          for (let i = 0; i < 5000; i++) h = mg.addScalar(h, 0.001);
          mg.sum(h).backward();
        });
        expect(values(x.grad!)).toEqual([1]);
        x.grad!.dispose();
        x.dispose();
      });
    });

    it('the gradient checker catches a wrong gradient', () => {
      mg.tidy(() => {
        const x = mg.tensor([0.3, -0.7, 1.1], [3], opts);
        // detach() cuts the graph, so autograd sees zero where the true gradient is 2x.
        const r = mg.checkGradients((t) => mg.mul(t, mg.detach(t)), [x]);
        expect(r.ok).toBe(false);
        expect(r.failures.length).toBeGreaterThan(0);
        expect(() => mg.assertGradients((t) => mg.mul(t, mg.detach(t)), [x])).toThrow(/gradient check failed/);
        expect(mg.checkGradients((t) => mg.mul(t, t), [x]).ok).toBe(true);
      });
    });
  });
});
