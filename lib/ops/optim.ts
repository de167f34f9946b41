// Ops of the family "optim": optimizers: AdamW and SGD, global gradient norm and clipping.
export {};
