//! Nothing to call: this crate only pins the features of kiln's shared dependencies (see its
//! Cargo.toml), so that every selection of kiln's packages builds burn's tree once.
