//! Raw, unsafe bindings to libguestfs, generated at build time by bindgen from `guestfs.h`.
//!
//! Use the safe wrapper in the `h2k-guest` crate (`src/guestfs.rs`) instead of calling these
//! directly.
#![allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    dead_code
)]
#![allow(clippy::all)]

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
