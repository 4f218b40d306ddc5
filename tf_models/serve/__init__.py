"""Serving: runtimes, exports, the runtime served on this machine, and the Predictor."""
