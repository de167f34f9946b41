// Ops of the family "linear": linear layers: GEMM with fused bias and GELU epilogues.
export {};
