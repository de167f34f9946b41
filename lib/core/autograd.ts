// Reverse-mode automatic differentiation. Each op that sees an input requiring
// grad records a GradNode: its inputs (other nodes or leaf tensors), the tensors
// it saved for backward (its own references, so tidy() and dispose() of the
// caller's tensors cannot free them) and a backward function. Nodes are
// reference-counted by the tensors and nodes that point at them, so a graph is
// freed as soon as nothing can reach it; backward() frees saved tensors as it
// goes unless asked to retain the graph. Leaves accumulate gradients (+=).
import { MemgptError, shapeStr } from './errors.js';
import { keep, ones, setBackwardHook, tidy, zeros, type GradFn, type Tensor } from './tensor.js';

/**
 * How gradients are summed: the ops' add and addInPlace, handed to the tape by ops/elementwise.ts when it loads, so
 * that core/ never imports ops/ (tfjs's engine takes its gradient accumulator the same way).
 */
export interface GradientSum {
  add(a: Tensor, b: Tensor): Tensor;
  addInPlace(target: Tensor, g: Tensor): void;
}
let gradientSum: GradientSum | null = null;

export function setGradientSum(sum: GradientSum): void {
  gradientSum = sum;
}

function summer(): GradientSum {
  if (!gradientSum) throw new MemgptError('internal: backward needs the ops (import memgpt, or lib/ops/elementwise.js, first)');
  return gradientSum;
}

let gradEnabled = true;

export function isGradEnabled(): boolean {
  return gradEnabled;
}

/** Runs fn without recording anything for backward. */
export function noGrad<T>(fn: () => T): T {
  const prev = gradEnabled;
  gradEnabled = false;
  try {
    return fn();
  } finally {
    gradEnabled = prev;
  }
}

/**
 * Computes the gradients of an op's inputs from the gradients of its outputs.
 * `saved` are the tensors the op asked to keep; `needsGrad[i]` says whether
 * input i wants a gradient (return null for the others).
 */
export type BackwardFn = (gradOutputs: Tensor[], saved: Tensor[], needsGrad: boolean[]) => (Tensor | null)[];

type Edge = { node: GradNode; index: number } | { leaf: Tensor } | null;

class GradNode implements GradFn {
  private refs = 0;
  inputs: Edge[];
  saved: Tensor[] | null;

  constructor(
    readonly op: string,
    inputs: Edge[],
    saved: Tensor[],
    readonly backwardFn: BackwardFn,
    readonly outputs: { shape: readonly number[]; dtype: Tensor['dtype']; device: Tensor['device'] }[],
    readonly inputShapes: (readonly number[])[],
  ) {
    this.inputs = inputs;
    this.saved = saved;
  }

  ref(): this {
    this.refs++;
    return this;
  }

  unref(): void {
    if (--this.refs > 0) return;
    this.releaseSaved();
    const inputs = this.inputs;
    this.inputs = [];
    for (const e of inputs) if (e && 'node' in e) e.node.unref();
  }

  releaseSaved(): void {
    if (!this.saved) return;
    for (const t of this.saved) t.dispose();
    this.saved = null;
  }
}

/**
 * Records `outputs` as made by op from `inputs`, when grad mode is on and some
 * input requires grad. `saved` tensors are kept (as new views) until backward.
 */
export function record(op: string, inputs: Tensor[], outputs: Tensor[], saved: Tensor[], backwardFn: BackwardFn): void {
  if (!gradEnabled || !inputs.some((t) => t.requiresGrad)) return;
  const edges: Edge[] = inputs.map((t) => {
    if (!t.requiresGrad) return null;
    const fn = t._gradFn as GradNode | null;
    return fn ? { node: fn.ref(), index: t._outputIndex } : { leaf: t };
  });
  const node = new GradNode(
    op,
    edges,
    saved.map((t) => t._view(t.shape, false)),
    backwardFn,
    outputs.map((t) => ({ shape: t.shape, dtype: t.dtype, device: t.device })),
    inputs.map((t) => t.shape),
  );
  outputs.forEach((t, i) => {
    node.ref();
    t._setGradFn(node, i);
  });
}

/** Adds g into a gradient slot, taking ownership of g; in place when the slot's storage is its own (or a gradient bucket). */
function accumulate(current: Tensor | null, g: Tensor): Tensor {
  if (!current) return keep(g);
  if (current.storage.refCount === 1 || current.storage.gradientBucket) {
    summer().addInPlace(current, g);
    g.dispose();
    return current;
  }
  const sum = keep(summer().add(current, g));
  current.dispose();
  g.dispose();
  return sum;
}

function accumulateLeaf(leaf: Tensor, g: Tensor): void {
  if (leaf.isDisposed) {
    g.dispose();
    return;
  }
  leaf.grad = accumulate(leaf.grad, g);
}

/** Nodes reachable from root, each after every node that consumes it (iterative: graphs can be deep). */
function topologicalOrder(root: GradNode): GradNode[] {
  const post: GradNode[] = [];
  const seen = new Set<GradNode>([root]);
  const stack: [GradNode, number][] = [[root, 0]];
  while (stack.length) {
    const top = stack[stack.length - 1];
    const [node, i] = top;
    if (i < node.inputs.length) {
      top[1]++;
      const e = node.inputs[i];
      if (e && 'node' in e && !seen.has(e.node)) {
        seen.add(e.node);
        stack.push([e.node, 0]);
      }
    } else {
      stack.pop();
      post.push(node);
    }
  }
  return post.reverse();
}

function runBackward(root: Tensor, grad: Tensor | undefined, options: { retainGraph?: boolean }): void {
  if (!root.requiresGrad) throw new MemgptError(`backward: tensor ${shapeStr(root.shape)} does not require grad (no input of it has requiresGrad)`);
  if (grad) {
    if (grad.shape.join() !== root.shape.join() || grad.device !== root.device || grad.dtype !== root.dtype) {
      throw new MemgptError(`backward: gradient ${grad} does not match output ${root}`);
    }
  } else if (root.size !== 1) {
    throw new MemgptError(`backward: output ${shapeStr(root.shape)} has ${root.size} elements; pass its gradient`);
  }
  const seed = () => keep(grad ? grad._view() : ones(root.shape, { dtype: root.dtype, device: root.device }));
  const rootNode = root._gradFn as GradNode | null;
  if (!rootNode) {
    accumulateLeaf(root, seed());
    return;
  }
  const pending = new Map<GradNode, (Tensor | null)[]>();
  pending.set(rootNode, rootNode.outputs.map((_, i) => (i === root._outputIndex ? seed() : null)));
  const prevGrad = gradEnabled;
  gradEnabled = false;
  try {
    for (const node of topologicalOrder(rootNode)) {
      const grads = pending.get(node);
      pending.delete(node);
      if (!grads) continue;
      if (!node.saved) {
        grads.forEach((g) => g?.dispose());
        throw new MemgptError(`backward: the graph through '${node.op}' was already freed by an earlier backward (pass { retainGraph: true } to run backward twice)`);
      }
      const saved = node.saved;
      const needs = node.inputs.map((e) => e !== null);
      let inputGrads: (Tensor | null)[] = [];
      try {
        inputGrads = tidy(() => {
          const full = grads.map((g, i) => g ?? zeros(node.outputs[i].shape, node.outputs[i]));
          return node.backwardFn(full, saved, needs);
        });
        // Each gradient slot owns its tensor: one returned twice, or an output gradient passed through, becomes a view.
        inputGrads = inputGrads.map((g, i) => (g && (inputGrads.indexOf(g) !== i || grads.includes(g)) ? g._view() : g));
      } finally {
        grads.forEach((g) => g?.dispose());
      }
      if (inputGrads.length !== node.inputs.length) {
        inputGrads.forEach((g) => g?.dispose());
        throw new MemgptError(`internal: ${node.op} backward returned ${inputGrads.length} gradients for ${node.inputs.length} inputs`);
      }
      node.inputs.forEach((edge, i) => {
        const g = inputGrads[i];
        if (!g) return;
        if (!edge) {
          g.dispose();
          return;
        }
        if (g.shape.join() !== node.inputShapes[i].join()) {
          throw new MemgptError(`internal: ${node.op} backward gave ${shapeStr(g.shape)} for input ${i} of shape ${shapeStr(node.inputShapes[i])}`);
        }
        if ('leaf' in edge) {
          accumulateLeaf(edge.leaf, g);
        } else {
          const slots = pending.get(edge.node) ?? edge.node.outputs.map(() => null);
          slots[edge.index] = accumulate(slots[edge.index], g);
          pending.set(edge.node, slots);
        }
      });
      if (!options.retainGraph) node.releaseSaved();
    }
  } finally {
    gradEnabled = prevGrad;
    for (const grads of pending.values()) grads.forEach((g) => g?.dispose());
  }
}

setBackwardHook(runBackward);

/** Drops the gradients of the given tensors (parameters). */
export function zeroGrad(tensors: Iterable<Tensor>): void {
  for (const t of tensors) t.zeroGrad();
}
