//! Write an uncompressed cpio archive in the "newc" format, the one the kernel's
//! `init/initramfs.c` unpacks, to be appended to an existing initramfs image.
//!
//! The kernel unpacks every archive of an image in order into the same rootfs: a file of a
//! later archive replaces the file of the same name (it is unlinked first), a directory that
//! already exists is kept. An archive appended after a compressed stream must start on a
//! 4-byte boundary of the image; [`padding_before_append`] says how many zero bytes that takes
//! (zeros between segments are skipped by the kernel and by this crate's reader).

/// One entry of an archive to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewcEntry {
    /// A directory (mode 0755).
    Dir(String),
    /// A regular file with its permission bits (e.g. 0o644) and contents.
    File {
        path: String,
        perm: u32,
        data: Vec<u8>,
    },
}

impl NewcEntry {
    pub fn path(&self) -> &str {
        match self {
            NewcEntry::Dir(p) => p,
            NewcEntry::File { path, .. } => path,
        }
    }
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const TRAILER: &str = "TRAILER!!!";

/// The archive holding `entries` in the order given (parents must come before their
/// children: the kernel does not create missing directories), closed by its trailer.
/// Owner root, mtime 0, one link each, distinct inode numbers. Paths are relative
/// (no leading `/`), as in the images initramfs-tools and dracut write.
pub fn write_archive(entries: &[NewcEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let ino = i as u32 + 1;
        match e {
            NewcEntry::Dir(path) => push_entry(&mut out, ino, path, S_IFDIR | 0o755, 2, &[]),
            NewcEntry::File { path, perm, data } => {
                push_entry(&mut out, ino, path, S_IFREG | (perm & 0o7777), 1, data)
            }
        }
    }
    push_entry(&mut out, 0, TRAILER, 0, 1, &[]);
    out
}

/// Zero bytes to put after an image of `image_len` bytes so that an appended archive starts
/// on a 4-byte boundary.
pub fn padding_before_append(image_len: u64) -> usize {
    ((4 - image_len % 4) % 4) as usize
}

/// `a/b/c` → `a`, `a/b` (the directories an entry at `path` needs, outermost first).
pub fn parent_dirs(path: &str) -> Vec<String> {
    let mut dirs = Vec::new();
    let mut at = 0;
    while let Some(i) = path[at..].find('/') {
        dirs.push(path[..at + i].to_string());
        at += i + 1;
    }
    dirs
}

fn push_entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, nlink: u32, data: &[u8]) {
    let fields: [u32; 13] = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        data.len() as u32,
        0, // devmajor
        0, // devminor
        0, // rdevmajor
        0, // rdevminor
        name.len() as u32 + 1,
        0, // check (newc: unused)
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, data: &[u8]) -> NewcEntry {
        NewcEntry::File {
            path: path.into(),
            perm: 0o644,
            data: data.to_vec(),
        }
    }

    #[test]
    fn archive_reads_back_with_the_images_own_reader() {
        let entries = vec![
            NewcEntry::Dir("usr".into()),
            NewcEntry::Dir("usr/lib".into()),
            file("usr/lib/x.ko", b"\x7fELF123"),
            file("usr/lib/empty", b""),
            file("odd", b"12345"),
        ];
        let archive = write_archive(&entries);
        assert_eq!(archive.len() % 4, 0);
        let read = crate::initramfs_image::read_image(&archive, |_| true).unwrap();
        assert_eq!(
            read.paths,
            vec!["usr", "usr/lib", "usr/lib/x.ko", "usr/lib/empty", "odd"]
        );
        assert_eq!(read.files["usr/lib/x.ko"], b"\x7fELF123");
        assert_eq!(read.files["odd"], b"12345");
    }

    #[test]
    fn appended_after_an_unaligned_compressed_stream_the_later_file_wins() {
        let mut first = Vec::new();
        {
            let mut gz = flate2::write::GzEncoder::new(&mut first, flate2::Compression::fast());
            std::io::Write::write_all(
                &mut gz,
                &write_archive(&[file("conf/modules", b"old\n"), file("a", b"1")]),
            )
            .unwrap();
            gz.finish().unwrap();
        }
        for extra in 0..4 {
            let mut image = first.clone();
            image.extend(std::iter::repeat_n(0, extra));
            let pad = padding_before_append(image.len() as u64);
            assert_eq!((image.len() + pad) % 4, 0);
            image.extend(std::iter::repeat_n(0, pad));
            image.extend(write_archive(&[file("conf/modules", b"new\n")]));
            let read = crate::initramfs_image::read_image(&image, |_| true).unwrap();
            assert_eq!(read.files["conf/modules"], b"new\n", "extra zeros {extra}");
            assert_eq!(
                read.paths.iter().filter(|p| *p == "conf/modules").count(),
                2
            );
        }
    }

    #[test]
    fn parents_are_listed_outermost_first() {
        assert_eq!(
            parent_dirs("usr/lib/modules/6.1/kernel/x.ko"),
            vec![
                "usr",
                "usr/lib",
                "usr/lib/modules",
                "usr/lib/modules/6.1",
                "usr/lib/modules/6.1/kernel"
            ]
        );
        assert!(parent_dirs("top").is_empty());
    }
}
