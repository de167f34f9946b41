// The data side of memgpt: tokenizers, corpora on disk, batch sampling, synthetic long-range tasks.
export { getTokenizer, type Tokenizer, type TokenizerName } from './tokenizer.js';
export { DOCUMENT_SEPARATOR, loadCorpus, splitCorpus, type Corpus } from './corpus.js';
export {
  BatchSampler, epochPermutation, gatherSamples, samplesIn, sequentialBatches,
  type Batch, type SampleOrder, type SamplerOptions, type SamplerState,
} from './sampler.js';
export {
  passkeyCorpus, passkeyDocument, segmentedCopyCorpus, segmentedCopyLayout,
  type CopyOptions, type PasskeyCorpusOptions, type PasskeyOptions,
} from './tasks.js';
