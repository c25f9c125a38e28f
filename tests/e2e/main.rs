//! End-to-end tests: the real `carrow` binary, real files, real servers on
//! 127.0.0.1. One test binary with a module per area, to save link time.

mod adbc;
mod attacks;
mod cli;
mod console;
mod coordinator;
mod febrl;
mod generated_sql;
mod governance;
mod ground_truth;
mod joining;
mod linkage;
mod node;
mod ops;
mod opt_outs;
mod postgres;
mod robustness;
mod streaming;
mod support;
mod tls;
mod tpch;
