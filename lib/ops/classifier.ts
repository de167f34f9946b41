// Ops of the family "classifier": the output head: tied logits, cross-entropy and the copy mixture, fused.
export {};
