// What Node and the browser export alike.
export { TesseraError, ModelDirectoryError, NonFiniteOutputError, ProviderError, InvalidInputError, AbortError } from "./errors.js";
export { defaultRng, SeedSequence, PCG64, ImageStreams, imageSeeds } from "./rng.js";
export { applyGuidance, sampleRow, guidanceOn } from "./sampling.js";
export { groupSizes, localityPlan } from "./schedule.js";
export { readModelDirectory, checkManifest } from "./manifest.js";
export { Pipeline as PipelineCore } from "./pipeline.js";
export { urlStore } from "./fetch.js";
