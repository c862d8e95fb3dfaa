//! fstab / crypttab device-name rewriting (pure text transforms).
