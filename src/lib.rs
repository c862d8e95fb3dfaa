//! h2k-guest: repair a Linux guest disk exported from VMware (or another hypervisor) offline
//! and write a KVM-ready image.
//!
//! The modules follow the pipeline of one VM:
//! [`load`] → [`inspect`] → [`fix`] → [`convert`] → [`validate`], driven by a [`manifest`]
//! (or flags), recorded in a [`report`]; [`daemon`] runs the pipeline for manifests dropped in
//! a spool directory. [`guestfs`] is the only module with `unsafe` (over `guestfs-sys`).
//! Every child program runs through [`process`].

#![deny(unsafe_code)]

pub mod accel;
pub mod appliance;
pub mod batch;
pub mod convert;
pub mod daemon;
pub mod devices;
pub mod fix;
pub mod grub_env;
#[allow(unsafe_code)]
pub mod guestfs;
pub mod initramfs_image;
pub mod inspect;
pub mod inspect_cmd;
pub mod libvirt;
pub mod load;
pub mod logging;
pub mod manifest;
pub mod metrics;
pub mod pipeline;
pub mod plan;
pub mod process;
pub mod progress;
pub mod report;
pub mod util;
pub mod validate;
pub mod version;
pub mod webhook;
pub mod workdir;
pub mod workflow;
pub mod workflow_watch;
