//! A batch dropped in the spool (the list `fix --batch FILE` reads, with absolute paths) is
//! split into one job per VM: each listed manifest is copied into `to_be_processed/` under its
//! own file name and then runs, is filed (`processed/` or `failed/`, with its report) and is
//! retried like any manifest submitted alone. The batch itself is filed under `processed/`
//! with a report of what it queued, or under `failed/` — with nothing queued — when any entry
//! is unusable.
//!
//! Every entry is read and checked before the first is queued. Each queued copy is noted in
//! the batch's ledger right after its rename, so a daemon killed in the middle of a split
//! queues only the rest when the batch is re-run (at worst the one VM being renamed at the
//! moment of the kill runs twice; none is lost).

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::spool::{self, Claimed, FileKey, LedgerEntry, Spool};

/// One VM the batch queued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Queued {
    /// `manifests[N]` in the batch.
    pub entry: String,
    /// The listed manifest.
    pub manifest: PathBuf,
    /// Its name in `to_be_processed/` (the job's name comes from it).
    pub queued_as: String,
    /// Queued by an earlier attempt of this batch (a daemon died during the split).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub earlier: bool,
}

/// The ledger note of a queued entry; a re-run of the split skips entries noted so.
fn note(entry: &str, queued_as: &str) -> String {
    format!("split: queued {entry} as {queued_as}")
}

fn noted(history: &[String], entry: &str) -> Option<String> {
    let prefix = format!("split: queued {entry} as ");
    history
        .iter()
        .find_map(|h| h.strip_prefix(&prefix).map(str::to_string))
}

/// Read a listed manifest: a regular file (symlinks followed, FIFOs not waited on) of at most
/// `max` bytes.
fn read_listed(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = f.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err(format!(
            "{}, not a manifest file",
            crate::util::file_type_name(&meta.file_type())
        ));
    }
    if meta.len() > max {
        return Err(format!(
            "{} bytes is too big for a manifest (limit {max} bytes, max_manifest_bytes)",
            meta.len()
        ));
    }
    let mut bytes = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// Split the claimed batch `text` (submitted as `name`). `Err` is one line naming the batch
/// and the entry; nothing is queued then (unless an earlier attempt already queued some).
pub fn split(
    sp: &Spool,
    claimed: &Claimed,
    ledger: &LedgerEntry,
    job_id: &str,
    text: &str,
    max_bytes: u64,
) -> Result<Vec<Queued>, String> {
    let name = claimed.original.to_string_lossy().into_owned();
    let shown = Path::new(&name);
    let entries = crate::batch::parse_absolute_batch(shown, text).map_err(|e| e.to_string())?;
    // Everything is read and checked first: a bad entry queues nothing.
    let mut copies = Vec::new();
    for e in &entries {
        let bad =
            |reason: String| format!("{name}: {}: {}: {reason}", e.label, e.manifest.display());
        let file_name = e
            .manifest
            .file_name()
            .map(OsStr::to_os_string)
            .unwrap_or_default();
        if spool::is_hidden_name(&file_name) || !spool::has_manifest_extension(&file_name) {
            return Err(bad(
                "the daemon takes manifests named *.json, *.yaml or *.yml (not dotfiles, *.tmp, *.part)"
                    .into(),
            ));
        }
        let bytes = read_listed(&e.manifest, max_bytes).map_err(bad)?;
        if crate::batch::looks_like_batch(&String::from_utf8_lossy(&bytes)) {
            return Err(bad("a batch itself; batches do not nest".into()));
        }
        copies.push((e, file_name, bytes));
    }
    let mut ledger = ledger.clone();
    let mut queued = Vec::new();
    for (e, file_name, bytes) in copies {
        if let Some(as_name) = noted(&ledger.history, &e.label) {
            queued.push(Queued {
                entry: e.label.clone(),
                manifest: e.manifest.clone(),
                queued_as: as_name,
                earlier: true,
            });
            continue;
        }
        let as_name = queue_copy(sp, &name, job_id, &e.label, &file_name, &bytes)
            .map_err(|err| format!("{name}: {}: cannot queue it: {err}", e.label))?;
        ledger.history.push(note(&e.label, &as_name));
        spool::ledger_write(sp, &claimed.key, &ledger);
        log::info!(
            "batch {name}: {} ({}) queued as {as_name}",
            e.label,
            e.manifest.display()
        );
        queued.push(Queued {
            entry: e.label.clone(),
            manifest: e.manifest.clone(),
            queued_as: as_name,
            earlier: false,
        });
    }
    Ok(queued)
}

/// Write one VM's manifest into `to_be_processed/` the atomic way (a hidden temp file renamed
/// in), its ledger entry first so its reports say which batch queued it. Returns its name.
fn queue_copy(
    sp: &Spool,
    batch: &str,
    job_id: &str,
    entry: &str,
    file_name: &OsStr,
    bytes: &[u8],
) -> std::io::Result<String> {
    let tbp = sp.to_be_processed();
    let tmp = crate::util::synced_temp_beside(&tbp.join(file_name), bytes)?;
    let meta = tmp.as_file().metadata()?;
    let key = FileKey::of(&meta);
    let first = LedgerEntry {
        key: Some(key),
        manifest: file_name.to_string_lossy().into_owned(),
        attempts: 0,
        history: vec![format!(
            "{}: split from batch {batch} ({entry}, job {job_id})",
            crate::util::now_rfc3339()
        )],
        ..LedgerEntry::default()
    };
    spool::ledger_write(sp, &key, &first);
    let tmp_path = tmp.into_temp_path();
    match spool::move_unique(&tmp_path, &tbp, file_name) {
        Ok(p) => {
            let _ = tmp_path.keep();
            Ok(p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default())
        }
        Err(e) => {
            spool::ledger_remove(sp, &key);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spool with `batch.json` (listing `names`, written under `vms/`) claimed.
    fn claimed_batch(names: &[&str]) -> (tempfile::TempDir, Spool, Claimed, String) {
        let d = tempfile::tempdir().unwrap();
        let sp = Spool::new(&d.path().join("spool"));
        sp.create().unwrap();
        let vms = d.path().join("vms");
        std::fs::create_dir(&vms).unwrap();
        let mut list = Vec::new();
        for n in names {
            std::fs::write(
                vms.join(n),
                format!("{{\"version\": \"1.0\", \"vm\": {n:?}}}"),
            )
            .unwrap();
            list.push(vms.join(n).display().to_string());
        }
        let text = serde_json::to_string(&list).unwrap();
        std::fs::write(sp.to_be_processed().join("batch.json"), &text).unwrap();
        let spool::Claim::Claimed(c) = spool::claim(&sp, OsStr::new("batch.json")).unwrap() else {
            panic!("not claimed")
        };
        (d, sp, c, text)
    }

    #[test]
    fn a_split_queues_every_vm_with_its_ledger_and_a_rerun_only_the_rest() {
        let (_d, sp, claimed, text) = claimed_batch(&["a.json", "b.json", "c.json"]);
        // An earlier attempt (its daemon died) queued manifests[0] already.
        let ledger = LedgerEntry {
            key: Some(claimed.key),
            attempts: 2,
            history: vec![note("manifests[0]", "a.json")],
            ..LedgerEntry::default()
        };
        let queued = split(&sp, &claimed, &ledger, "job-1", &text, 1 << 20).unwrap();
        let got: Vec<(&str, bool)> = queued
            .iter()
            .map(|q| (q.queued_as.as_str(), q.earlier))
            .collect();
        assert_eq!(
            got,
            [("a.json", true), ("b.json", false), ("c.json", false)]
        );
        let mut present: Vec<String> = std::fs::read_dir(sp.to_be_processed())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        present.sort();
        assert_eq!(
            present,
            ["b.json", "c.json"],
            "a.json was queued twice, or a temp file left"
        );
        // Each copy carries a ledger entry naming the batch, for its reports.
        let meta = std::fs::metadata(sp.to_be_processed().join("b.json")).unwrap();
        let l = spool::ledger_read(&sp, &FileKey::of(&meta)).unwrap();
        assert_eq!(l.attempts, 0);
        assert!(
            l.history[0].contains("split from batch batch.json (manifests[1], job job-1)"),
            "{:?}",
            l.history
        );
        // The batch's own ledger notes both, so another re-run queues nothing more.
        let batch_ledger = spool::ledger_read(&sp, &claimed.key).unwrap();
        assert_eq!(
            noted(&batch_ledger.history, "manifests[2]").as_deref(),
            Some("c.json")
        );
        let again = split(&sp, &claimed, &batch_ledger, "job-2", &text, 1 << 20).unwrap();
        assert!(again.iter().all(|q| q.earlier));
        assert_eq!(std::fs::read_dir(sp.to_be_processed()).unwrap().count(), 2);
    }

    #[test]
    fn a_manifest_over_the_size_limit_fails_the_whole_split() {
        let (_d, sp, claimed, text) = claimed_batch(&["a.json", "b.json"]);
        let ledger = LedgerEntry::default();
        let e = split(&sp, &claimed, &ledger, "j", &text, 10).unwrap_err();
        assert!(e.starts_with("batch.json: manifests[0]: "), "{e}");
        assert!(e.contains("too big for a manifest (limit 10 bytes"), "{e}");
        assert_eq!(std::fs::read_dir(sp.to_be_processed()).unwrap().count(), 0);
    }

    #[test]
    fn queued_entries_are_found_in_the_history() {
        let h = vec![
            "2026-01-01T00:00:00Z: daemon pid 1 died in stage manifest".to_string(),
            note("manifests[0]", "a.json"),
            note("manifests[10]", "b-1.json"),
        ];
        assert_eq!(noted(&h, "manifests[0]").as_deref(), Some("a.json"));
        assert_eq!(noted(&h, "manifests[10]").as_deref(), Some("b-1.json"));
        assert_eq!(noted(&h, "manifests[1]"), None);
    }
}
