// Tensor lifetime and memory accounting: dispose, using, tidy, keep, views,
// the FinalizationRegistry safety net, and leak checks around whole
// forward/backward passes, on every backend.
import { describe, expect, it } from 'vitest';

import * as mg from '../lib/index.js';
import { expectNoLeaks, forEachDevice, randomArray, values } from './helpers.js';

forEachDevice((device) => {
  const opts = { device };

  describe('tensors', () => {
    it('round-trips values in every dtype', () => {
      mg.tidy(() => {
        expect(mg.tensor([[1, 2], [3, 4]], undefined, opts).toNested()).toEqual([[1, 2], [3, 4]]);
        expect(mg.tensor(new Int32Array([5, -6]), undefined, opts).dtype).toBe('int32');
        expect(values(mg.tensor([2147483647, -2147483648], [2], { ...opts, dtype: 'int32' }))).toEqual([2147483647, -2147483648]);
        expect(values(mg.tensor([1, 0.5, -3], [3], { ...opts, dtype: 'bfloat16' }))).toEqual([1, 0.5, -3]);
        expect(mg.full([2, 2], 7, opts).toNested()).toEqual([[7, 7], [7, 7]]);
        expect(mg.tensor(3, undefined, opts).item()).toBe(3);
        expect(mg.zeros([0, 4], opts).toArray().length).toBe(0);
      });
    });

    it('draws the same random tensors from the same seed', () => {
      mg.tidy(() => {
        expect(values(mg.randn([5], { ...opts, seed: 3 }))).toEqual(values(mg.randn([5], { ...opts, seed: 3 })));
        expect(values(mg.randn([5], { ...opts, seed: 3 }))).not.toEqual(values(mg.randn([5], { ...opts, seed: 4 })));
        const u = mg.rand([1000], { ...opts, seed: 1, low: 2, high: 3 }).toArray();
        expect(Math.min(...u)).toBeGreaterThanOrEqual(2);
        expect(Math.max(...u)).toBeLessThan(3);
      });
    });
  });

  describe('memory', () => {
    it('counts live tensors and bytes, and dispose gives them back', () => {
      expectNoLeaks(device, () => {
        const before = mg.memory(device);
        const t = mg.zeros([1000], opts);
        const during = mg.memory(device);
        expect(during.liveTensors).toBe(before.liveTensors + 1);
        expect(during.tensorBytes).toBe(before.tensorBytes + 4000);
        expect(during.bytesInUse).toBeGreaterThanOrEqual(before.bytesInUse + 4000);
        expect(during.peakBytes).toBeGreaterThanOrEqual(during.bytesInUse);
        t.dispose();
        t.dispose(); // twice is harmless
        expect(t.isDisposed).toBe(true);
      });
    });

    it('frees at the end of a `using` block', () => {
      expectNoLeaks(device, () => {
        using t = mg.ones([64], opts);
        expect(t.size).toBe(64);
      });
    });

    it('tidy frees intermediates and keeps what it returns, nested', () => {
      let outer: mg.Tensor | undefined;
      expectNoLeaks(device, () => {
        outer = mg.tidy(() => {
          const a = mg.ones([4], opts);
          const inner = mg.tidy(() => {
            const b = mg.add(a, a);
            return { result: [mg.mul(b, b)] };
          }).result[0];
          expect(values(inner)).toEqual([4, 4, 4, 4]);
          return inner;
        });
        expect(outer.isDisposed).toBe(false);
        outer.dispose();
      });
    });

    it('tidy frees everything when its function throws', () => {
      expectNoLeaks(device, () => {
        expect(() =>
          mg.tidy(() => {
            mg.ones([8], opts);
            throw new Error('boom');
          }),
        ).toThrow('boom');
      });
    });

    it('keep() saves a tensor from its scope', () => {
      expectNoLeaks(device, () => {
        let kept: mg.Tensor | undefined;
        mg.tidy(() => {
          kept = mg.keep(mg.ones([3], opts));
          mg.zeros([3], opts);
        });
        expect(kept!.isDisposed).toBe(false);
        kept!.dispose();
      });
    });

    it('views share storage until the last one is disposed', () => {
      expectNoLeaks(device, () => {
        const base = mg.arange(6, opts);
        const a = mg.reshape(base, [2, 3]);
        base.dispose();
        const v = mg.reshape(a, [3, 2]);
        const storages = mg.memory(device).liveStorages;
        a.dispose();
        expect(mg.memory(device).liveStorages).toBe(storages);
        expect(values(v)).toEqual([0, 1, 2, 3, 4, 5]);
        v.dispose();
        expect(mg.memory(device).liveStorages).toBe(storages - 1);
      });
    });

    it('tidy rejects async functions', () => {
      expectNoLeaks(device, () => {
        expect(() => mg.tidy((async () => mg.ones([1], opts)) as unknown as () => mg.Tensor)).toThrow(/must be synchronous/);
      });
    });

    it('forward and backward inside tidy leave only the gradients, which dispose cleanly', () => {
      const w = mg.parameter(mg.randn([8, 4], { ...opts, seed: 1 }), 'w');
      const b = mg.parameter(mg.zeros([4], opts), 'b');
      expectNoLeaks(device, () => {
        for (let step = 0; step < 3; step++) {
          mg.tidy(() => {
            const x = mg.tensor(randomArray(5 * 8, step), [5, 8], opts);
            const loss = mg.mean(mg.softmax(mg.add(mg.matmul(x, w), b)));
            loss.backward();
          });
        }
        expect(w.grad).not.toBeNull();
        mg.zeroGrad([w, b]);
      });
      w.dispose();
      b.dispose();
    });

    it('a graph whose output is disposed without backward frees its saved tensors', () => {
      const w = mg.parameter(mg.randn([6, 6], { ...opts, seed: 2 }));
      expectNoLeaks(device, () => {
        const y = mg.tidy(() => mg.softmax(mg.matmul(mg.ones([2, 6], opts), w)));
        y.dispose();
      });
      w.dispose();
    });

    it('parameter() takes over the memory of the tensor it is made from', () => {
      expectNoLeaks(device, () => {
        const t = mg.ones([3], opts);
        const p = mg.parameter(t, 'p');
        expect(t.isDisposed).toBe(true);
        expect(p.requiresGrad).toBe(true);
        expect(p.name).toBe('p');
        expect(mg.tidy(() => values(p))).toEqual([1, 1, 1]);
        p.dispose();
      });
    });

    it('the allocator reuses freed blocks instead of asking the system again', () => {
      mg.tidy(() => { mg.zeros([1 << 16], opts); });
      const allocsBefore = mg.memory(device).bytesReserved;
      for (let i = 0; i < 20; i++) mg.tidy(() => { mg.zeros([1 << 16], opts); });
      expect(mg.memory(device).bytesReserved).toBe(allocsBefore);
      mg.emptyCache(device);
      expect(mg.memory(device).bytesReserved).toBe(mg.memory(device).bytesInUse);
    });
  });
});

describe('safety net', () => {
  it.skipIf(typeof globalThis.gc !== 'function')('a tensor dropped without dispose is freed by the garbage collector', async () => {
    const before = mg.memory('cpu');
    (() => {
      for (let i = 0; i < 10; i++) mg.zeros([1000], { device: 'cpu' });
    })();
    for (let i = 0; i < 10 && mg.memory('cpu').liveTensors > before.liveTensors; i++) {
      await new Promise((r) => setTimeout(r, 10));
      globalThis.gc!();
    }
    expect(mg.memory('cpu').liveTensors).toBe(before.liveTensors);
    expect(mg.memory('cpu').bytesInUse).toBe(before.bytesInUse);
  });
});
