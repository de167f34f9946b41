// The public API of memgpt: tensors and their memory, devices, autograd and the ops; the model, its checkpoints,
// training, generation and scoring; data parallelism; the data side (tokenizers, corpora, samplers) and safetensors.
export { MemgptError } from './core/errors.js';
export type { DType } from './core/dtype.js';
export {
  availableDevices, cudaStatus, defaultDevice, numThreads, setDefaultDevice, setNumThreads,
  type CudaStatus, type Device,
} from './native/backend.js';
export { Parameter, Tensor, arange, full, keep, ones, parameter, rand, randn, tensor, tidy, zeros, type TensorOptions } from './core/tensor.js';
export { emptyCache, memory, resetPeakMemory, type DeviceMemory } from './core/storage.js';
export { isGradEnabled, noGrad, zeroGrad, type BackwardFn } from './core/autograd.js';
export { add, addInPlace, addScalar, div, mul, neg, scale, sub } from './ops/elementwise.js';
export { matmul, type MatmulOptions } from './ops/matmul.js';
export { broadcastTo, sum } from './ops/reduce.js';
export { mean } from './ops/mean.js';
export { softmax } from './ops/softmax.js';
export { cast, clone, copyRowsInto, detach, permute, reshape, to, transpose } from './ops/shape.js';
export { assertGradients, checkGradients, type GradCheckOptions, type GradCheckResult } from './core/gradcheck.js';
export { Rng } from './core/random.js';
export * from './ops/norm.js';
export * from './ops/linear.js';
export * from './ops/attention.js';
export * from './ops/memwrite.js';
export * from './ops/classifier.js';
export * from './ops/decode.js';
export * from './ops/optim.js';
export { presets, parameterShapes, resolveConfig, type ModelConfig, type PresetName } from './nn/config.js';
export { MemGPT, type ForwardResult, type LayerDiagnostics } from './nn/model.js';
export * from './data/index.js';
export { BatchDecoder, type DecoderOptions } from './infer/decoder.js';
export { Decoder } from './infer/single-decoder.js';
export { generateBatch, type BatchGenerateOptions, type BatchSample } from './infer/batch.js';
export { generateTokens, penalizeRepeats, sampledTokens, sampleToken, type GenerateOptions, type SampledToken } from './infer/sampling.js';
export { streamText, streamTokens, textPieces, type StopReason, type TextCodec, type TextGenerateOptions, type TextToken } from './infer/text.js';
export { scoreStream } from './infer/score.js';
export {
  bfloat16Bytes, float32Bytes, readSafetensors, readSafetensorsHeader, safetensorsDTypeBytes, storedToFloat32, writeSafetensors,
  type SafetensorsDType, type SafetensorsHeader, type StoredTensor, type TensorInfo,
} from './io/safetensors.js';
export { CHECKPOINT_FORMAT, loadModel, loadTrainingState, readModelConfig, saveModel, saveTrainingState, type SaveModelOptions } from './io/checkpoint.js';
export { Trainer, defaultTrainOptions, evaluateLoss, learningRate, type ParallelOptions, type RunCallbacks, type StepLog, type TrainOptions } from './train/trainer.js';
export { lineChart, type Series } from './train/plot.js';
export { DEFAULT_TIMEOUT_SECONDS, ProcessGroup, cpuEngineStatus, rankFromEnv, type RankInfo } from './parallel/group.js';
export { DEFAULT_BUCKET_BYTES, GradientAllReduce, ZeroAdamW, broadcastParams, checkRanksAgree } from './parallel/data-parallel.js';
export { launchRanks, type LaunchOptions } from './parallel/launch.js';
