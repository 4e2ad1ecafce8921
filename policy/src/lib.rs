//! dermgate's segmentation policy: language, validation, compiler and evaluator.
//!
//! Pure: no I/O, no clock, no sockets. Time and the source address come in as data.
//! [`text`] holds the shared machinery for reading the TOML files users write
//! (positions, every error at once, durations and sizes).

pub mod text;
