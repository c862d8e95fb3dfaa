//! GRUB and kernel command-line rewriting (pure text transforms).
