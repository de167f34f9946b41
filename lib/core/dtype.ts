// Element types of tensors, their native codes (native/common/common.h) and
// host-side conversions, bfloat16 included (round to nearest even, as in C++).

export type DType = 'float32' | 'bfloat16' | 'int32';

export const dtypeCode: Record<DType, number> = { float32: 0, bfloat16: 1, int32: 2 };
export const dtypeBytes: Record<DType, number> = { float32: 4, bfloat16: 2, int32: 4 };

export function isFloat(dtype: DType): boolean {
  return dtype !== 'int32';
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

export function floatToBf16Bits(x: number): number {
  f32[0] = x;
  const u = u32[0];
  if ((u & 0x7fffffff) > 0x7f800000) return ((u >>> 16) | 0x40) & 0xffff; // quiet NaN
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

export function bf16BitsToFloat(bits: number): number {
  u32[0] = (bits & 0xffff) << 16;
  return f32[0];
}

/** Host typed array holding `dtype` values as numbers (bfloat16 as float32). */
export type HostArray = Float32Array | Int32Array;

/** Raw storage bytes for `values` in `dtype`. */
export function encodeHost(values: ArrayLike<number>, dtype: DType): Float32Array | Int32Array | Uint16Array {
  if (dtype === 'float32') return values instanceof Float32Array ? values : Float32Array.from(values);
  if (dtype === 'int32') {
    const out = new Int32Array(values.length);
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      if (!Number.isInteger(v) || v < -2147483648 || v > 2147483647) {
        throw new RangeError(`int32 tensor: value ${v} at index ${i} is not a 32-bit integer`);
      }
      out[i] = v;
    }
    return out;
  }
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = floatToBf16Bits(values[i]);
  return out;
}

/** Raw storage of `n` elements, ready to be filled by a device-to-host copy. */
export function rawHostBuffer(dtype: DType, n: number): Float32Array | Int32Array | Uint16Array {
  if (dtype === 'float32') return new Float32Array(n);
  if (dtype === 'int32') return new Int32Array(n);
  return new Uint16Array(n);
}

/** The values of a raw buffer as numbers (bfloat16 widened to float32). */
export function decodeHost(raw: Float32Array | Int32Array | Uint16Array, dtype: DType): HostArray {
  if (dtype !== 'bfloat16') return raw as HostArray;
  const out = new Float32Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = bf16BitsToFloat(raw[i]);
  return out;
}
