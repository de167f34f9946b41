// Ops of the family "norm": layer norm, embedding and positions (RoPE, sinusoidal).
export {};
