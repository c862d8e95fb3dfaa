//! The subcommands of the binary: each module holds one command's flags and its run.

pub mod docs;
pub mod fix;
pub mod service;
pub mod signals;
pub mod validate;

pub(crate) use crate::{absolute, appliance_options, Cli, GlobalArgs};
