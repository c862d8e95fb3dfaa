//! FIX: the guest repairs, each a small unit that reads a guest file, computes the new text
//! with a pure function, writes it back and records the diff.

pub mod fstab;
pub mod grub;
