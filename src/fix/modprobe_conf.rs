//! modprobe configuration that keeps a driver from loading (pure text transforms).
//!
//! Why: a template may carry `blacklist virtio_blk` or `install virtio_blk /bin/false` in
//! `/etc/modprobe.d` or `/usr/lib/modprobe.d` (a "VMware only" hardening). The initramfs
//! copies those files, and udev then never loads the driver for the virtio disk even when its
//! file is in the image. A name in `/etc/modprobe.d` replaces the same name in
//! `/usr/lib/modprobe.d` (and `/lib/modprobe.d`), which is how a packaged file is overridden.

use super::text::{lines, Change, Rewrite};

/// A rule that keeps a module from loading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub line: usize,
    pub module: String,
    /// The rule as written.
    pub rule: String,
}

/// The module a line blocks, if it blocks one: `blacklist M`, `install M <command>` whose
/// command does not load it anyway (a `modprobe` in it is taken as loading it), `alias M off`.
fn blocked_module(body: &str) -> Option<String> {
    let mut words = body.split_whitespace();
    let keyword = words.next()?;
    let module = words.next()?.replace('-', "_");
    let rest: Vec<&str> = words.collect();
    let blocks = match keyword {
        "blacklist" => true,
        "install" => !rest.iter().any(|w| w.ends_with("modprobe")),
        "alias" => rest.first() == Some(&"off"),
        _ => false,
    };
    blocks.then_some(module)
}

/// The rules of a modprobe.d file that block one of `modules`.
pub fn blocks(text: &str, modules: &[&str]) -> Vec<Block> {
    lines(text)
        .filter_map(|l| {
            let body = l.body.trim();
            if body.starts_with('#') {
                return None;
            }
            let module = blocked_module(body)?;
            modules.contains(&module.as_str()).then(|| Block {
                line: l.number,
                module,
                rule: body.to_string(),
            })
        })
        .collect()
}

/// Comment out every rule that blocks one of `modules`; everything else is kept byte for byte.
pub fn lift_blocks(text: &str, modules: &[&str]) -> Rewrite {
    let found = blocks(text, modules);
    if found.is_empty() {
        return Rewrite::unchanged(text);
    }
    let mut out = Rewrite {
        text: String::with_capacity(text.len() + 64 * found.len()),
        ..Rewrite::default()
    };
    for line in lines(text) {
        match found.iter().find(|b| b.line == line.number) {
            Some(b) => {
                out.text.push_str("# h2k-guest: needed on KVM: ");
                out.text.push_str(line.body);
                out.changes.push(Change {
                    line: b.line,
                    field: b.module.clone(),
                    old: b.rule.clone(),
                    new: String::new(),
                });
            }
            None => out.text.push_str(line.body),
        }
        out.text.push_str(line.ending);
    }
    out
}

/// Every block in a set of modprobe.d files (path, text) as modprobe reads them: files by
/// name, a name in an `etc/modprobe.d` directory replacing the same name elsewhere. Paths may
/// be guest paths or paths inside an initramfs image.
pub fn effective_blocks<'a>(files: &[(&'a str, &str)], modules: &[&str]) -> Vec<(&'a str, Block)> {
    let name = |p: &str| p.rsplit('/').next().unwrap_or(p).to_string();
    let in_etc = |p: &str| p.trim_start_matches('/').starts_with("etc/");
    let mut chosen: std::collections::BTreeMap<String, (&'a str, &str)> = Default::default();
    for (path, text) in files {
        if !path.ends_with(".conf") {
            continue;
        }
        let key = name(path);
        let replace = match chosen.get(&key) {
            Some((old, _)) => in_etc(path) || !in_etc(old),
            None => true,
        };
        if replace {
            chosen.insert(key, (path, text));
        }
    }
    chosen
        .into_values()
        .flat_map(|(path, text)| blocks(text, modules).into_iter().map(move |b| (path, b)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &[&str] = &["virtio_blk", "virtio_pci", "virtio_net"];

    #[test]
    fn blacklist_install_and_alias_off_block() {
        let text = "# comment\nblacklist virtio_blk\n  install virtio-pci /bin/false\ninstall virtio_net /sbin/modprobe --ignore-install virtio_net\nalias virtio_blk off\nblacklist floppy\noptions virtio_blk x=1\n# blacklist virtio_pci\n";
        let found = blocks(text, M);
        let got: Vec<(usize, &str)> = found.iter().map(|b| (b.line, b.module.as_str())).collect();
        assert_eq!(
            got,
            vec![(2, "virtio_blk"), (3, "virtio_pci"), (5, "virtio_blk")]
        );
    }

    #[test]
    fn lift_comments_out_the_blocks_only() {
        let text = "blacklist virtio_blk\r\nblacklist floppy\ninstall virtio_pci /bin/true";
        let out = lift_blocks(text, M);
        assert_eq!(
            out.text,
            "# h2k-guest: needed on KVM: blacklist virtio_blk\r\nblacklist floppy\n# h2k-guest: needed on KVM: install virtio_pci /bin/true"
        );
        assert_eq!(out.changes.len(), 2);
        assert_eq!(lift_blocks(&out.text, M), Rewrite::unchanged(&out.text));
        assert_eq!(lift_blocks("", M), Rewrite::unchanged(""));
    }

    #[test]
    fn etc_replaces_the_same_name_in_usr_lib() {
        let files = [
            ("/usr/lib/modprobe.d/vmware.conf", "blacklist virtio_blk\n"),
            ("/etc/modprobe.d/vmware.conf", "# lifted\n"),
            ("/lib/modprobe.d/other.conf", "blacklist virtio_net\n"),
            ("/etc/modprobe.d/README", "blacklist virtio_pci\n"),
        ];
        let found = effective_blocks(&files, M);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, "/lib/modprobe.d/other.conf");
        assert_eq!(found[0].1.module, "virtio_net");
        // Inside an image the paths have no leading slash.
        let image = [
            ("usr/lib/modprobe.d/v.conf", "blacklist virtio_blk\n"),
            ("etc/modprobe.d/v.conf", ""),
        ];
        assert!(effective_blocks(&image, M).is_empty());
    }
}
