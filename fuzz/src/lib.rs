//! The fuzz targets' bodies: one function per parser that reads peer bytes, each asserting the
//! invariants that must hold for any input. The targets in `fuzz_targets/` call these, and the
//! product's test suite (`tests/fuzz_regressions.rs`) includes the same file to replay the seed
//! corpus and every input a target ever found, so a crash once fixed stays fixed.

pub mod checks;
