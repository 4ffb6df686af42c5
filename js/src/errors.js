// The error tree of the Python runtime (runtime/errors.py): each message is one line naming the
// problem and the fix, so a caller can show it as it is.

export class TesseraError extends Error {
  /** @param {string} message */
  constructor(message) { super(message); this.name = new.target.name; }
}
/** The model directory is missing, incomplete, corrupt or of an unknown format. */
export class ModelDirectoryError extends TesseraError {}
/** A graph produced NaN or infinite values: corrupt weights or an overflow. */
export class NonFiniteOutputError extends ModelDirectoryError {}
/** A requested onnxruntime execution provider is not available here. */
export class ProviderError extends TesseraError {}
/** An argument outside what the model accepts (class, sampling option, seed ...). */
export class InvalidInputError extends TesseraError {}
/** The generation was cancelled through its AbortSignal. */
export class AbortError extends TesseraError {}
