// The runtime's one error type, in a module of its own so that every other module can import it without
// import circles.

/** Any refusal of the runtime: a one-line message saying what was expected. */
export class KaeError extends Error {
  constructor(message) {
    super(message);
    this.name = 'KaeError';
  }
}
