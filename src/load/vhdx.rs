//! Just enough of the VHDX layout (MS-VHDX 1.0) to tell a differencing disk and the parent
//! paths it records: file identifier → header → region table → metadata table → the file
//! parameters ("has parent") and parent locator items. Every offset comes from the file and
//! is checked before use.

/// The file type identifier at offset 0.
pub const VHDX_SIGNATURE: &[u8] = b"vhdxfile";

const HEADER_OFFSETS: [u64; 2] = [64 << 10, 128 << 10];
const REGION_TABLE_OFFSETS: [u64; 2] = [192 << 10, 256 << 10];
const REGION_TABLE_SIZE: usize = 64 << 10;
const REGION_ENTRY_SIZE: usize = 32;
const REGION_HEADER_SIZE: usize = 16;
/// The metadata table is the first 64 KiB of the metadata region.
const METADATA_TABLE_SIZE: usize = 64 << 10;
const METADATA_ENTRY_SIZE: usize = 32;
const METADATA_HEADER_SIZE: usize = 32;
/// MS-VHDX caps both tables at 2047 entries and a metadata item at 1 MiB.
const MAX_ENTRIES: usize = 2047;
const MAX_ITEM_SIZE: usize = 1 << 20;
const LOCATOR_HEADER_SIZE: usize = 20;
const LOCATOR_ENTRY_SIZE: usize = 12;
const FILE_PARAMETERS_HAS_PARENT: u32 = 1 << 1;

/// GUIDs as stored on disk (the first three fields little-endian).
pub const METADATA_REGION_GUID: [u8; 16] = guid(0x8B7CA206, 0x4790, 0x4B9A, 0xB8FE_575F_050F_886E);
pub const FILE_PARAMETERS_GUID: [u8; 16] = guid(0xCAA16737, 0xFA36, 0x4D43, 0xB3B6_33F0_AA44_E76B);
pub const PARENT_LOCATOR_GUID: [u8; 16] = guid(0xA8D35F2D, 0xB30B, 0x454D, 0xABF7_D3D8_4834_AB0C);

/// A GUID's 16 on-disk bytes from its textual groups (`d1-d2-d3-d4`, the last two groups as one).
pub const fn guid(d1: u32, d2: u16, d3: u16, d4: u64) -> [u8; 16] {
    let a = d1.to_le_bytes();
    let b = d2.to_le_bytes();
    let c = d3.to_le_bytes();
    let d = d4.to_be_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

/// What the metadata says about a parent.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ParentInfo {
    /// The file parameters' "has parent" bit.
    pub has_parent: bool,
    /// The parent locator's key/value pairs (parent_linkage, relative_path, …), in file order.
    pub locator: Vec<(String, String)>,
}

impl ParentInfo {
    pub fn is_differencing(&self) -> bool {
        self.has_parent || !self.locator.is_empty()
    }

    /// `differencing VHDX (parent relative_path "..\b.vhdx", …)`: the entries that name files.
    pub fn describe(&self) -> String {
        let paths: Vec<String> = self
            .locator
            .iter()
            .filter(|(k, _)| k.ends_with("_path"))
            .map(|(k, v)| format!("{k} {v:?}"))
            .collect();
        if paths.is_empty() {
            "is a differencing VHDX (it needs a parent disk; no parent path recorded)".into()
        } else {
            format!("is a differencing VHDX (parent {})", paths.join(", "))
        }
    }
}

fn le16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(off..off.checked_add(2)?)?.try_into().ok()?,
    ))
}
fn le32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}
fn le64(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(off..off.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// Parse the parent information of a VHDX. `read_at(offset, len)` returns up to `len` bytes
/// of the file from `offset` (fewer at its end). Err: a damaged or truncated structure.
pub fn parent_info(
    read_at: &mut dyn FnMut(u64, usize) -> Option<Vec<u8>>,
) -> Result<ParentInfo, String> {
    let ident = read_at(0, 8).ok_or("cannot read the VHDX file identifier")?;
    if ident != VHDX_SIGNATURE {
        return Err("not a VHDX file".into());
    }
    let has_header = HEADER_OFFSETS
        .iter()
        .any(|&off| read_at(off, 4).is_some_and(|b| b == b"head"));
    if !has_header {
        return Err("no valid VHDX header".into());
    }
    let (meta_offset, meta_length) = metadata_region(read_at)?;
    let table_len = METADATA_TABLE_SIZE.min(meta_length);
    let table = read_at(meta_offset, table_len).ok_or("cannot read the VHDX metadata table")?;
    if !table.starts_with(b"metadata") {
        return Err("bad VHDX metadata table signature".into());
    }
    let count = usize::from(le16(&table, 10).ok_or("truncated VHDX metadata table")?);
    if count > MAX_ENTRIES {
        return Err(format!("VHDX metadata table has {count} entries"));
    }
    let mut info = ParentInfo::default();
    for i in 0..count {
        let at = i
            .checked_mul(METADATA_ENTRY_SIZE)
            .and_then(|o| o.checked_add(METADATA_HEADER_SIZE))
            .ok_or("VHDX metadata entry out of range")?;
        let entry = table
            .get(at..at.saturating_add(METADATA_ENTRY_SIZE))
            .ok_or("truncated VHDX metadata table")?;
        let id = &entry[..16];
        if id != FILE_PARAMETERS_GUID && id != PARENT_LOCATOR_GUID {
            continue;
        }
        let item_off = le32(entry, 16).ok_or("truncated VHDX metadata entry")?;
        let item_len = le32(entry, 20).ok_or("truncated VHDX metadata entry")? as usize;
        if item_len > MAX_ITEM_SIZE || item_len as u64 > meta_length as u64 {
            return Err(format!("VHDX metadata item of {item_len} bytes"));
        }
        let item = meta_offset
            .checked_add(u64::from(item_off))
            .and_then(|start| read_at(start, item_len))
            .filter(|b| b.len() == item_len)
            .ok_or("VHDX metadata item outside the file")?;
        if id == FILE_PARAMETERS_GUID {
            let flags = le32(&item, 4).ok_or("truncated VHDX file parameters")?;
            info.has_parent = flags & FILE_PARAMETERS_HAS_PARENT != 0;
        } else {
            info.locator = parse_locator(&item)?;
        }
    }
    Ok(info)
}

/// The metadata region's (offset, length) from the first region table with the right signature.
fn metadata_region(
    read_at: &mut dyn FnMut(u64, usize) -> Option<Vec<u8>>,
) -> Result<(u64, usize), String> {
    for off in REGION_TABLE_OFFSETS {
        let Some(table) = read_at(off, REGION_TABLE_SIZE) else {
            continue;
        };
        if !table.starts_with(b"regi") {
            continue;
        }
        let count = le32(&table, 8).ok_or("truncated VHDX region table")? as usize;
        if count > MAX_ENTRIES {
            return Err(format!("VHDX region table has {count} entries"));
        }
        for i in 0..count {
            let at = REGION_HEADER_SIZE + i * REGION_ENTRY_SIZE;
            let entry = table
                .get(at..at + REGION_ENTRY_SIZE)
                .ok_or("truncated VHDX region table")?;
            if entry[..16] == METADATA_REGION_GUID {
                let offset = le64(entry, 16).ok_or("truncated VHDX region entry")?;
                let length = le32(entry, 24).ok_or("truncated VHDX region entry")? as usize;
                return Ok((offset, length));
            }
        }
        return Err("the VHDX region table has no metadata region".into());
    }
    Err("no valid VHDX region table".into())
}

/// The key/value pairs of a parent locator item (UTF-16LE strings at item-relative offsets).
fn parse_locator(item: &[u8]) -> Result<Vec<(String, String)>, String> {
    let count = usize::from(le16(item, 18).ok_or("truncated VHDX parent locator")?);
    let text = |off: u32, len: u16| -> Result<String, String> {
        let start = off as usize;
        let bytes = item
            .get(start..start.saturating_add(usize::from(len)))
            .ok_or("VHDX parent locator entry outside the item")?;
        let units: Vec<u16> = bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        Ok(String::from_utf16_lossy(&units))
    };
    let mut pairs = Vec::new();
    for i in 0..count {
        let at = LOCATOR_HEADER_SIZE + i * LOCATOR_ENTRY_SIZE;
        let entry = item
            .get(at..at + LOCATOR_ENTRY_SIZE)
            .ok_or("truncated VHDX parent locator")?;
        let (key_off, value_off) = (le32(entry, 0), le32(entry, 4));
        let (key_len, value_len) = (le16(entry, 8), le16(entry, 10));
        let (Some(ko), Some(vo), Some(kl), Some(vl)) = (key_off, value_off, key_len, value_len)
        else {
            return Err("truncated VHDX parent locator entry".into());
        };
        pairs.push((text(ko, kl)?, text(vo, vl)?));
    }
    Ok(pairs)
}

/// Test support: a minimal VHDX image in memory with the given parent information.
#[cfg(test)]
pub(crate) fn synthetic(has_parent: bool, locator: &[(&str, &str)]) -> Vec<u8> {
    let meta = 1usize << 20;
    let mut f = vec![0u8; meta + (128 << 10)];
    f[..8].copy_from_slice(VHDX_SIGNATURE);
    f[64 << 10..(64 << 10) + 4].copy_from_slice(b"head");
    let rt = 192 << 10;
    f[rt..rt + 4].copy_from_slice(b"regi");
    f[rt + 8..rt + 12].copy_from_slice(&1u32.to_le_bytes());
    f[rt + 16..rt + 32].copy_from_slice(&METADATA_REGION_GUID);
    f[rt + 32..rt + 40].copy_from_slice(&(meta as u64).to_le_bytes());
    f[rt + 40..rt + 44].copy_from_slice(&(1u32 << 20).to_le_bytes());
    f[meta..meta + 8].copy_from_slice(b"metadata");
    let mut entries = 0u16;
    let mut put_entry = |f: &mut Vec<u8>, id: [u8; 16], off: u32, len: u32| {
        let at = meta + METADATA_HEADER_SIZE + usize::from(entries) * METADATA_ENTRY_SIZE;
        f[at..at + 16].copy_from_slice(&id);
        f[at + 16..at + 20].copy_from_slice(&off.to_le_bytes());
        f[at + 20..at + 24].copy_from_slice(&len.to_le_bytes());
        entries += 1;
    };
    let params = 64u32 << 10;
    put_entry(&mut f, FILE_PARAMETERS_GUID, params, 8);
    let flags = if has_parent {
        FILE_PARAMETERS_HAS_PARENT
    } else {
        0
    };
    let p = meta + params as usize;
    f[p + 4..p + 8].copy_from_slice(&flags.to_le_bytes());
    if !locator.is_empty() {
        let item = locator_item(locator);
        let off = params + 64;
        put_entry(&mut f, PARENT_LOCATOR_GUID, off, item.len() as u32);
        let at = meta + off as usize;
        f[at..at + item.len()].copy_from_slice(&item);
    }
    f[meta + 10..meta + 12].copy_from_slice(&entries.to_le_bytes());
    f
}

/// Test support: a parent locator item holding `pairs`.
#[cfg(test)]
pub(crate) fn locator_item(pairs: &[(&str, &str)]) -> Vec<u8> {
    let utf16 = |s: &str| -> Vec<u8> { s.encode_utf16().flat_map(u16::to_le_bytes).collect() };
    let mut item = vec![0u8; LOCATOR_HEADER_SIZE + pairs.len() * LOCATOR_ENTRY_SIZE];
    item[..16].copy_from_slice(&guid(0xB04AEFB7, 0xD19E, 0x4A81, 0xB789_25B8_E944_5913));
    item[18..20].copy_from_slice(&(pairs.len() as u16).to_le_bytes());
    for (i, (k, v)) in pairs.iter().enumerate() {
        let (k, v) = (utf16(k), utf16(v));
        let at = LOCATOR_HEADER_SIZE + i * LOCATOR_ENTRY_SIZE;
        let ko = item.len();
        item.extend_from_slice(&k);
        let vo = item.len();
        item.extend_from_slice(&v);
        item[at..at + 4].copy_from_slice(&(ko as u32).to_le_bytes());
        item[at + 4..at + 8].copy_from_slice(&(vo as u32).to_le_bytes());
        item[at + 8..at + 10].copy_from_slice(&(k.len() as u16).to_le_bytes());
        item[at + 10..at + 12].copy_from_slice(&(v.len() as u16).to_le_bytes());
    }
    item
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(file: &[u8]) -> impl FnMut(u64, usize) -> Option<Vec<u8>> + '_ {
        move |off, len| {
            let start = usize::try_from(off).ok()?;
            let bytes = file.get(start..)?;
            Some(bytes[..len.min(bytes.len())].to_vec())
        }
    }

    #[test]
    fn guids_are_stored_mixed_endian() {
        assert_eq!(
            PARENT_LOCATOR_GUID,
            [
                0x2d, 0x5f, 0xd3, 0xa8, 0x0b, 0xb3, 0x4d, 0x45, 0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34,
                0xab, 0x0c
            ]
        );
    }

    #[test]
    fn a_plain_vhdx_has_no_parent() {
        let f = synthetic(false, &[]);
        let info = parent_info(&mut reader(&f)).unwrap();
        assert!(!info.is_differencing());
    }

    #[test]
    fn a_differencing_vhdx_names_its_parent_paths() {
        let f = synthetic(
            true,
            &[
                ("parent_linkage", "{83ab5bd0-0000-0000-0000-000000000000}"),
                ("relative_path", "..\\..\\etc\\shadow"),
                ("absolute_win32_path", "C:\\base.vhdx"),
            ],
        );
        let info = parent_info(&mut reader(&f)).unwrap();
        assert!(info.has_parent);
        assert_eq!(info.locator.len(), 3);
        let text = info.describe();
        assert!(
            text.contains(r#"relative_path "..\\..\\etc\\shadow""#)
                && text.contains("absolute_win32_path")
                && !text.contains("parent_linkage"),
            "{text}"
        );
        // The bit alone is enough to refuse.
        let bit_only = parent_info(&mut reader(&synthetic(true, &[]))).unwrap();
        assert!(bit_only.is_differencing());
        assert!(bit_only.describe().contains("no parent path"));
    }

    #[test]
    fn truncated_vhdx_is_an_error_not_a_panic() {
        let f = synthetic(true, &[("relative_path", "b.vhdx")]);
        for cut in [
            8,
            1000,
            200 << 10,
            (1 << 20) + 40,
            (1 << 20) + (64 << 10) + 70,
        ] {
            assert!(parent_info(&mut reader(&f[..cut])).is_err(), "cut at {cut}");
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            patches in proptest::collection::vec((0usize..6, 0usize..256, 0u8..=255), 0..32),
            cut in 0usize..(1 << 20) + (128 << 10),
        ) {
            let mut f = synthetic(true, &[("relative_path", "b.vhdx"), ("volume_path", "\\\\?\\V")]);
            // Aim at the structures: identifier, header, region table, metadata table, items.
            let bases = [0, 64 << 10, 192 << 10, 1 << 20, (1 << 20) + (64 << 10), (1 << 20) + (64 << 10) + 64];
            for (region, delta, byte) in patches {
                f[bases[region] + delta] = byte;
            }
            let _ = parent_info(&mut reader(&f));
            let _ = parent_info(&mut reader(&f[..cut]));
        }

        #[test]
        fn arbitrary_locator_items_never_panic(item in proptest::collection::vec(0u8..=255, 0..512)) {
            let _ = parse_locator(&item);
        }
    }
}
