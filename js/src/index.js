// tessera-ar for JavaScript: the public API.
export { Pipeline, onnxruntimeVersion } from "./pipeline.js";
export { TesseraError, ModelDirectoryError, NonFiniteOutputError, ProviderError, InvalidInputError, AbortError } from "./errors.js";
export { defaultRng, SeedSequence, PCG64, ImageStreams, imageSeeds } from "./rng.js";
export { applyGuidance, sampleRow, guidanceOn } from "./sampling.js";
export { groupSizes, localityPlan } from "./schedule.js";
export { readModelDirectory, checkManifest } from "./manifest.js";
