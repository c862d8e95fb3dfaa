//! Is there room for the outputs? What a copy needs is the guest's data as `qemu-img measure`
//! counts it, not its virtual size: a 100 GiB disk holding 1 GiB needs about 1 GiB.

use std::path::Path;

use super::{qemu_img_reason, LoadError, QEMU_IMG_INFO_LIMIT};
use crate::process;

/// Free space kept for what the repairs write beside the guest's data (a new initramfs, an
/// appended module archive, installed packages), on top of what `qemu-img measure` counts.
pub const REPAIR_MARGIN_BYTES: u64 = 256 << 20;

/// The bytes a qcow2 copy of `overlay` (and everything under it) needs, as `qemu-img measure`
/// counts them: allocated data plus metadata.
pub fn measure_required(overlay: &Path) -> Result<u64, LoadError> {
    let fail = |reason: String| LoadError::Overlay {
        path: overlay.display().to_string(),
        reason: format!("qemu-img measure: {reason}"),
    };
    let out = process::qemu_img()
        .args(["measure", "--output=json", "-O", "qcow2", "-f", "qcow2"])
        .arg(overlay)
        .output_with_timeout(QEMU_IMG_INFO_LIMIT)
        .map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(qemu_img_reason(&String::from_utf8_lossy(&out.stderr))));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| fail(e.to_string()))?;
    v["required"]
        .as_u64()
        .ok_or_else(|| fail("no \"required\" in its answer".into()))
}

/// What the outputs may need and how that was counted: the measured data plus the margin, or
/// the virtual size when a measure failed (`measured` is None).
pub fn bytes_needed(measured: Option<u64>, virtual_size: u64) -> (u64, String) {
    match measured {
        Some(bytes) => (
            bytes.saturating_add(REPAIR_MARGIN_BYTES),
            format!(
                "the data qemu-img measure counts, plus {} MiB for the repairs",
                REPAIR_MARGIN_BYTES >> 20
            ),
        ),
        None => (virtual_size, "the virtual size".into()),
    }
}

/// Err with the one-line reason when `free` bytes cannot hold what the outputs may need.
pub fn check(
    dir: &Path,
    free: u64,
    measured: Option<u64>,
    virtual_size: u64,
) -> Result<(), String> {
    let (needed, counted) = bytes_needed(measured, virtual_size);
    if free >= needed {
        return Ok(());
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    Err(format!(
        "{}: not enough free space: the outputs may need up to {needed} bytes ({:.1} GiB, \
         {counted}), {free} bytes ({:.1} GiB) free",
        dir.display(),
        gib(needed),
        gib(free)
    ))
}

#[cfg(test)]
mod tests {
    use super::super::{create_overlay, probe, Source};
    use super::*;

    #[test]
    fn the_measured_data_counts_not_the_virtual_size() {
        let hundred_gib = 100u64 << 30;
        let dir = Path::new("/out");
        // 1 GiB of data on a 100 GiB disk fits in 2 GiB free.
        assert_eq!(check(dir, 2 << 30, Some(1 << 30), hundred_gib), Ok(()));
        // Exactly the data plus the margin fits; a byte less does not.
        let need = (1u64 << 30) + REPAIR_MARGIN_BYTES;
        assert_eq!(check(dir, need, Some(1 << 30), hundred_gib), Ok(()));
        let e = check(dir, need - 1, Some(1 << 30), hundred_gib).unwrap_err();
        assert!(e.starts_with("/out: not enough free space: "), "{e}");
        assert!(e.contains("qemu-img measure"), "{e}");
        assert!(!e.contains('\n'));
        // Without a measure the virtual size is all there is.
        let e = check(dir, 2 << 30, None, hundred_gib).unwrap_err();
        assert!(e.contains("100.0 GiB, the virtual size"), "{e}");
        assert_eq!(bytes_needed(Some(u64::MAX), 0).0, u64::MAX);
    }

    #[test]
    fn measure_counts_data_not_the_virtual_size() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.qcow2");
        let st = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&base)
            .arg("100G")
            .status()
            .unwrap();
        assert!(st.success());
        let st = std::process::Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", "write -P 7 0 8M"])
            .arg(&base)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        let info = probe(&Source::File(base.clone()), Some("qcow2")).unwrap();
        let overlay = dir.path().join("overlay.qcow2");
        create_overlay(&info, &overlay).unwrap();
        let required = measure_required(&overlay).unwrap();
        // 8 MiB of data plus a 100 GiB image's tables: far below the virtual size.
        assert!(
            (8 << 20..64 << 20).contains(&required),
            "required {required}"
        );
        let e = measure_required(&dir.path().join("missing.qcow2")).unwrap_err();
        assert!(e.to_string().contains("missing.qcow2"), "{e}");
    }
}
