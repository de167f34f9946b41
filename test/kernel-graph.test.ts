// Kernel graphs (lib/core/kernel-graph.ts): a replay runs the recorded kernels on the inputs' new values, bit-equal to
// running the code again; host transfers are refused while recording and leave the backend as it was; the graph
// keeps the memory its calls use alive (a weight disposed after recording still reads right) and frees it on dispose.
import { describe, expect, it } from 'vitest';

import { availableDevices, MemgptError, tensor, tidy, zeros } from '../lib/index.js';
import { KernelGraph } from '../lib/core/kernel-graph.js';
import { writeHost, type Tensor } from '../lib/core/tensor.js';
import { backendFor } from '../lib/native/backend.js';
import { add, mul } from '../lib/ops/elementwise.js';
import { linear } from '../lib/ops/linear.js';
import { stridedCopyInto } from '../lib/ops/shape.js';
import { contiguousStrides } from '../lib/ops/util.js';
import { expectNoLeaks, forEachDevice, randomArray, values } from './helpers.js';

/** out ← linear(x·x + x, w, b): temporaries made and freed inside, the result copied into a tensor made before. */
function body(x: Tensor, w: Tensor, b: Tensor, out: Tensor): void {
  tidy(() => {
    const y = linear(add(mul(x, x), x), w, b);
    stridedCopyInto('test', y, contiguousStrides(y.shape), out);
  });
}

describe('KernelGraph', () => {
  forEachDevice((device) => {
    it('replays the recorded kernels on new input values, bit-equal to running the code again', () => {
      expectNoLeaks(device, () => {
        const x = tensor(randomArray(12, 1), [3, 4], { device });
        const w = tensor(randomArray(20, 2), [5, 4], { device }), b = tensor(randomArray(5, 3), [5], { device });
        const out = zeros([3, 5], { device }), eager = zeros([3, 5], { device });
        const { graph } = KernelGraph.record(backendFor(device), () => body(x, w, b, out));
        try {
          expect(graph.kernels).toEqual(['binary', 'binary', 'linearForward', 'stridedCopy']);
          for (let seed = 10; seed < 13; seed++) {
            writeHost(x, randomArray(12, seed));
            graph.replay();
            body(x, w, b, eager);
            expect(values(out)).toEqual(values(eager));
          }
        } finally {
          graph.dispose();
          for (const t of [x, w, b, out, eager]) t.dispose();
        }
      });
    });

    it('keeps what its calls use alive: a weight disposed after recording still reads right, freed with the graph', () => {
      expectNoLeaks(device, () => {
        const x = tensor(randomArray(12, 4), [3, 4], { device });
        const w = tensor(randomArray(20, 5), [5, 4], { device }), b = tensor(randomArray(5, 6), [5], { device });
        const out = zeros([3, 5], { device });
        const { graph } = KernelGraph.record(backendFor(device), () => body(x, w, b, out));
        const expected = values(out);
        w.dispose();
        b.dispose();
        writeHost(out, new Float32Array(15));
        graph.replay();
        expect(values(out)).toEqual(expected);
        graph.dispose();
        graph.dispose();
        expect(() => graph.replay()).toThrow(/replay after dispose/);
        x.dispose();
        out.dispose();
      });
    });

    it('refuses kernels of another device while recording (they would run once and be missing from the replays)', () => {
      const other = device === 'cpu' ? 'cuda' : 'cpu';
      if (!availableDevices().includes(other)) return;  // one device here: nothing to refuse
      expectNoLeaks(device, () => {
        const x = zeros([4], { device: other });
        expect(() => KernelGraph.record(backendFor(device), () => tidy(() => void add(x, x)))).toThrow(/kernel graph: alloc was called on another device's backend while recording/);
        const y = add(x, x);  // and that backend works again
        expect(values(y)).toEqual([0, 0, 0, 0]);
        for (const t of [x, y]) t.dispose();
      });
    });

    it('refuses host transfers and nested recordings with one clear error, leaving the backend as it was', () => {
      expectNoLeaks(device, () => {
        const backend = backendFor(device);
        const before = { ...backend };
        expect(() => KernelGraph.record(backend, () => tidy(() => void tensor([1, 2, 3], [3], { device })))).toThrow(MemgptError);
        expect(() => KernelGraph.record(backend, () => tidy(() => void tensor([1, 2, 3], [3], { device })))).toThrow(/copyFromHost was called while recording/);
        const x = zeros([4], { device });
        expect(() => KernelGraph.record(backend, () => x.toArray())).toThrow(/copyToHost/);
        expect(() => KernelGraph.record(backend, () => KernelGraph.record(backend, () => undefined))).toThrow(/do not nest/);
        expect({ ...backend }).toEqual(before);
        const y = add(x, x);
        expect(values(y)).toEqual([0, 0, 0, 0]);
        for (const t of [x, y]) t.dispose();
      });
    });
  });
});
