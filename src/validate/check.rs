//! `qemu-img check`: run it and read its JSON report.

use super::*;

// ---------------------------------------------------------------------------------------------
// qemu-img check
// ---------------------------------------------------------------------------------------------

/// What `qemu-img check` found.
#[derive(Debug, Clone, Serialize)]
pub struct CheckOutcome {
    pub image: String,
    pub format: String,
    /// False when the format has no metadata qemu-img can check (raw, vpc).
    pub applicable: bool,
    /// No check errors and no corruptions (leaked clusters waste space but harm nothing).
    pub clean: bool,
    pub check_errors: u64,
    pub corruptions: u64,
    pub leaks: u64,
    pub image_end_offset: Option<u64>,
    pub note: Option<String>,
}

impl CheckOutcome {
    /// One line for people.
    pub fn summary(&self) -> String {
        if !self.applicable {
            return format!(
                "{} ({}): image check not applicable: {}",
                self.image,
                self.format,
                self.note.as_deref().unwrap_or("no metadata to check")
            );
        }
        if self.clean && self.leaks == 0 {
            return format!("{} ({}): no errors found", self.image, self.format);
        }
        format!(
            "{} ({}): {} corruption(s), {} leaked cluster(s), {} check error(s){}",
            self.image,
            self.format,
            self.corruptions,
            self.leaks,
            self.check_errors,
            if self.clean {
                " (leaks only waste space)"
            } else {
                ""
            }
        )
    }
}

/// `qemu-img check` the image, its format detected.
pub fn check_image(path: &Path) -> Result<CheckOutcome, ValidateError> {
    check_image_as(&path.display().to_string(), None)
}

/// `qemu-img check` an image or NBD URI; `format` forces the format.
pub fn check_image_as(image: &str, format: Option<&str>) -> Result<CheckOutcome, ValidateError> {
    let source = Source::parse(image);
    let info = load::probe(&source, format)?;
    let name = source.qemu_name();
    let out = process::qemu_img()
        .args(["check", "-U", "--output=json", "-f", &info.format])
        .arg(&name)
        .output()
        .map_err(spawn_err)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Exit status 63: the format does not support checks.
    if out.status.code() == Some(63) || stderr.contains("does not support checks") {
        return Ok(CheckOutcome {
            image: name,
            format: info.format.clone(),
            applicable: false,
            clean: true,
            check_errors: 0,
            corruptions: 0,
            leaks: 0,
            image_end_offset: None,
            note: Some(format!(
                "{} images have no metadata for qemu-img to check",
                info.format
            )),
        });
    }
    // 0 clean, 2 corruptions, 3 leaks: all print the JSON report. 1 = the check could not run.
    let parsed: Option<serde_json::Value> = serde_json::from_slice(&out.stdout).ok();
    let Some(report) = parsed.filter(|_| matches!(out.status.code(), Some(0 | 2 | 3))) else {
        let reason = process::reduce_stderr(&stderr)
            .unwrap_or_else(|| format!("qemu-img exited with {}", out.status));
        return Err(ValidateError::Check {
            image: name,
            reason,
        });
    };
    Ok(check_outcome_from_json(&name, &info.format, &report))
}

/// Build the outcome from `qemu-img check --output=json` (absent counters are 0).
pub fn check_outcome_from_json(image: &str, format: &str, v: &serde_json::Value) -> CheckOutcome {
    let n = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
    let check_errors = n("check-errors");
    let corruptions = n("corruptions");
    CheckOutcome {
        image: image.to_string(),
        format: format.to_string(),
        applicable: true,
        clean: check_errors == 0 && corruptions == 0,
        check_errors,
        corruptions,
        leaks: n("leaks"),
        image_end_offset: v.get("image-end-offset").and_then(|x| x.as_u64()),
        note: None,
    }
}
