//! levee: a self-healing control plane and traffic guardian for Kubernetes.
//!
//! The binary (`src/main.rs`) only parses the command line; everything it runs lives here.

pub mod actuators;
pub mod api;
pub mod cli;
pub mod edge;
pub mod engine;
pub mod operator;
pub mod replay;
pub mod server;
pub mod signals;
pub mod sim;
pub mod text;
