//! drover worker.
