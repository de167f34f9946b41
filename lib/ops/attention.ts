// Ops of the family "attention": fused causal self-attention with RoPE, the memory read and its gate.
export {};
