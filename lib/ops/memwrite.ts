// Ops of the family "memwrite": the memory write: pointer scores, softmax over tokens, candidates, gated update.
export {};
