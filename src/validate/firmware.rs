//! BIOS or UEFI: the partition-table scan (pure) and where OVMF lives.

use super::*;

// ---------------------------------------------------------------------------------------------
// Firmware: partition table scan (pure) and OVMF
// ---------------------------------------------------------------------------------------------

/// EFI system partition C12A7328-F81F-11D2-BA4B-00A0C93EC93B, as stored on disk.
pub const ESP_TYPE_GUID: [u8; 16] = [
    0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b,
];
/// BIOS boot partition 21686148-6449-6E6F-744E-656564454649 ("Hah!IdontNeedEFI").
pub const BIOS_BOOT_TYPE_GUID: [u8; 16] = *b"Hah!IdontNeedEFI";

/// The partition table at the start of a disk (512-byte sectors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionTable {
    Gpt { esp: bool, bios_boot: bool },
    Mbr { esp: bool },
    None,
}

/// Sectors to read for [`scan_partition_table`]: MBR, GPT header and 128 entries.
pub const HEAD_SECTORS: u64 = 34;

/// Look for an EFI system partition in the first sectors of a disk.
pub fn scan_partition_table(head: &[u8]) -> PartitionTable {
    let u32_at = |o: usize| {
        head.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    let u64_at = |o: usize| {
        head.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    if head.get(512..520) == Some(b"EFI PART") {
        let entries_lba = u64_at(512 + 72).unwrap_or(2);
        let count = u32_at(512 + 80).unwrap_or(0).min(1024) as usize;
        let size = u32_at(512 + 84).unwrap_or(128) as usize;
        let mut esp = false;
        let mut bios_boot = false;
        if size >= 16 && entries_lba < (head.len() as u64 / 512) {
            let start = entries_lba as usize * 512;
            for i in 0..count {
                let Some(ty) = head.get(start + i * size..start + i * size + 16) else {
                    break;
                };
                esp |= ty == ESP_TYPE_GUID;
                bios_boot |= ty == BIOS_BOOT_TYPE_GUID;
            }
        }
        return PartitionTable::Gpt { esp, bios_boot };
    }
    if head.get(510..512) == Some(&[0x55, 0xaa]) {
        let types: Vec<u8> = (0..4)
            .filter_map(|i| head.get(446 + 16 * i + 4).copied())
            .collect();
        if types.iter().any(|&t| t != 0) {
            return PartitionTable::Mbr {
                esp: types.contains(&0xef),
            };
        }
    }
    PartitionTable::None
}

/// BIOS or UEFI for this partition table, and why.
pub fn firmware_for(table: PartitionTable) -> (Firmware, String) {
    match table {
        PartitionTable::Gpt {
            esp: true,
            bios_boot,
        } => (
            Firmware::Uefi,
            if bios_boot {
                "GPT with an EFI system partition (and a BIOS boot partition: \
                 --firmware bios tests the BIOS path)"
                    .into()
            } else {
                "GPT with an EFI system partition".into()
            },
        ),
        PartitionTable::Gpt { esp: false, .. } => {
            (Firmware::Bios, "GPT without an EFI system partition".into())
        }
        PartitionTable::Mbr { esp: true } => (
            Firmware::Uefi,
            "MBR with an EFI system partition (type 0xEF)".into(),
        ),
        PartitionTable::Mbr { esp: false } => (Firmware::Bios, "MBR partition table".into()),
        PartitionTable::None => (Firmware::Bios, "no partition table found".into()),
    }
}

/// Read the first sectors through qemu-img (any format) and scan them.
pub(crate) fn read_partition_table(
    source: &Source,
    info: &SourceInfo,
    dir: &Path,
) -> Result<PartitionTable, ValidateError> {
    let out_path = dir.join("head.raw");
    let mut of = OsString::from("of=");
    of.push(&out_path);
    let out = process::qemu_img()
        .args(["dd", "-U", "-f", &info.format, "-O", "raw", "bs=512"])
        .arg(format!("count={HEAD_SECTORS}"))
        .arg(format!("if={}", source.qemu_name()))
        .arg(of)
        .output()
        .map_err(spawn_err)?;
    if !out.status.success() {
        return Err(ValidateError::PartitionTable {
            image: source.qemu_name(),
            reason: process::reduce_stderr(&String::from_utf8_lossy(&out.stderr))
                .unwrap_or_else(|| format!("qemu-img exited with {}", out.status)),
        });
    }
    let head = fs::read(&out_path).map_err(io_err(out_path.display()))?;
    let _ = fs::remove_file(&out_path);
    Ok(scan_partition_table(&head))
}

/// OVMF code and variable-store templates, the first pair that exists.
pub(crate) const OVMF_PAIRS: &[(&str, &str)] = &[
    // Debian, Ubuntu
    (
        "/usr/share/OVMF/OVMF_CODE_4M.fd",
        "/usr/share/OVMF/OVMF_VARS_4M.fd",
    ),
    (
        "/usr/share/OVMF/OVMF_CODE.fd",
        "/usr/share/OVMF/OVMF_VARS.fd",
    ),
    // Fedora, RHEL
    (
        "/usr/share/edk2/ovmf/OVMF_CODE.fd",
        "/usr/share/edk2/ovmf/OVMF_VARS.fd",
    ),
    // Arch
    (
        "/usr/share/edk2/x64/OVMF_CODE.4m.fd",
        "/usr/share/edk2/x64/OVMF_VARS.4m.fd",
    ),
    // openSUSE
    (
        "/usr/share/qemu/ovmf-x86_64-code.bin",
        "/usr/share/qemu/ovmf-x86_64-vars.bin",
    ),
];

/// (code, vars template): H2K_OVMF_CODE/H2K_OVMF_VARS, else the distribution's files.
pub fn find_ovmf() -> Result<(PathBuf, PathBuf), ValidateError> {
    if let (Some(c), Some(v)) = (
        std::env::var_os("H2K_OVMF_CODE"),
        std::env::var_os("H2K_OVMF_VARS"),
    ) {
        let (c, v) = (PathBuf::from(c), PathBuf::from(v));
        if c.is_file() && v.is_file() {
            return Ok((c, v));
        }
        return Err(ValidateError::NoOvmf {
            looked: format!("{} and {} (from H2K_OVMF_*)", c.display(), v.display()),
        });
    }
    OVMF_PAIRS
        .iter()
        .map(|(c, v)| (PathBuf::from(c), PathBuf::from(v)))
        .find(|(c, v)| c.is_file() && v.is_file())
        .ok_or_else(|| ValidateError::NoOvmf {
            looked: OVMF_PAIRS
                .iter()
                .map(|(c, _)| *c)
                .collect::<Vec<_>>()
                .join(", "),
        })
}
