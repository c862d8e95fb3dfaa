//! What this build is: tool version, git commit and the libguestfs it was built against.

pub const TOOL: &str = env!("CARGO_PKG_VERSION");
pub const GIT_COMMIT: &str = env!("H2K_GIT_COMMIT");
pub const LIBGUESTFS: &str = env!("H2K_LIBGUESTFS_VERSION");

/// The long `--version` text.
pub const LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("H2K_GIT_COMMIT"),
    ", built against libguestfs ",
    env!("H2K_LIBGUESTFS_VERSION"),
    ")"
);
