// The error type of the library: every bad argument, bad input or backend
// failure surfaces as a MemgptError with one clear message.

export class MemgptError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'MemgptError';
  }
}

export function shapeStr(shape: readonly number[]): string {
  return `[${shape.join(',')}]`;
}
