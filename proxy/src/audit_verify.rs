//! `dermgate audit verify`: walks the chain and says where it breaks.
//!
//! Reads the files in order and checks every line's `prev` against the hash
//! of the line before (across files too), every checkpoint's signature (with
//! the public key), and the file sequence. It tells apart: an edited or
//! deleted record, two records out of order, a missing file, a truncated
//! file, a bad checkpoint signature, a rewritten chain without valid
//! checkpoints, and — not tampering — a last line torn by a crash.

use std::path::{Path, PathBuf};

use aws_lc_rs::signature::{ED25519, UnparsedPublicKey};
use base64::Engine;
use serde::Serialize;

use crate::audit::{rotated_files, sha256_hex};

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// More records than this after the last valid checkpoint means checkpoints were removed.
const MAX_UNSIGNED_RUN: u64 = 1000 + 64;

/// One finding, with where.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Finding {
    /// File.
    pub file: String,
    /// 1-based line (0 = the file as a whole).
    pub line: usize,
    /// What kind.
    pub kind: &'static str,
    /// Explanation.
    pub detail: String,
}

/// The result of a verification.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Records checked (checkpoints included).
    pub records: u64,
    /// Files checked.
    pub files: usize,
    /// Checkpoints whose signature verified.
    pub checkpoints_verified: u64,
    /// Tampering or loss.
    pub problems: Vec<Finding>,
    /// Not tampering (a crash's torn line).
    pub notes: Vec<Finding>,
}

impl Report {
    /// True when nothing was tampered with or lost.
    pub fn intact(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The files of the trail whose current file is `current`, in order.
pub fn trail_files(current: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = rotated_files(current).into_iter().map(|(_, p)| p).collect();
    if current.exists() {
        v.push(current.to_path_buf());
    }
    v
}

fn seq_of(p: &Path) -> Option<u64> {
    let name = p.file_name()?.to_str()?;
    let mut parts = name.rsplitn(3, '.');
    let _ext = parts.next()?;
    let mid = parts.next()?;
    (mid.len() == 6).then(|| mid.parse().ok()).flatten()
}

/// Verifies `files` in order; `pubkey` is the raw 32-byte Ed25519 public key.
pub fn verify(files: &[PathBuf], pubkey: Option<&[u8]>) -> std::io::Result<Report> {
    let mut rep = Report {
        files: files.len(),
        ..Report::default()
    };
    let key = pubkey.map(|k| UnparsedPublicKey::new(&ED25519, k.to_vec()));
    let mut expected = GENESIS.to_string();
    let mut unsigned_run: u64 = 0;
    let mut prev_seq: Option<u64> = None;
    // A torn tail of the previous file, to decide crash or truncation when the next file starts.
    let mut pending_torn: Option<Finding> = None;
    for (fi, path) in files.iter().enumerate() {
        let name = path.display().to_string();
        if let (Some(a), Some(b)) = (prev_seq, seq_of(path))
            && b > a + 1
        {
            for missing in a + 1..b {
                rep.problems.push(Finding {
                    file: name.clone(),
                    line: 0,
                    kind: "missing_file",
                    detail: format!("rotated file number {missing:06} is missing before this file"),
                });
            }
        }
        prev_seq = seq_of(path).or(prev_seq);
        let bytes = std::fs::read(path)?;
        let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
        let tail = lines.pop().unwrap_or(&[]);
        let is_last = fi + 1 == files.len();
        let hashes: Vec<String> = lines.iter().map(|l| sha256_hex(l)).collect();
        for (i, line) in lines.iter().enumerate() {
            rep.records += 1;
            let v: serde_json::Value = match serde_json::from_slice(line) {
                Ok(v) => v,
                Err(_) => {
                    rep.problems.push(Finding {
                        file: name.clone(),
                        line: i + 1,
                        kind: "unparsable",
                        detail: "not a JSON record: edited or corrupted".into(),
                    });
                    expected = hashes[i].clone();
                    continue;
                }
            };
            let prev = v.get("prev").and_then(|p| p.as_str()).unwrap_or("");
            if prev != expected {
                let finding = if i == 0 && fi > 0 {
                    match pending_torn.take() {
                        Some(t) => Finding {
                            kind: "truncated_file",
                            detail: format!("{} was truncated: this file continues from a record that is not in it", t.file),
                            ..t
                        },
                        None => Finding {
                            file: name.clone(),
                            line: 1,
                            kind: "chain_broken_between_files",
                            detail: "the first record does not continue the previous file: the previous file was truncated or a file is missing".into(),
                        },
                    }
                } else if hashes.get(i + 1).is_some_and(|h| h == prev) {
                    Finding {
                        file: name.clone(),
                        line: i + 1,
                        kind: "reordered",
                        detail: format!(
                            "records at lines {} and {} are out of order",
                            i + 1,
                            i + 2
                        ),
                    }
                } else if i > 0 {
                    Finding {
                        file: name.clone(),
                        line: i,
                        kind: "edited_or_deleted",
                        detail: format!(
                            "the record at line {i} was edited, or records were deleted between lines {i} and {}",
                            i + 1
                        ),
                    }
                } else {
                    Finding {
                        file: name.clone(),
                        line: 1,
                        kind: "edited_or_deleted",
                        detail: "the first record does not continue the chain: records before it were deleted, or it was edited".into(),
                    }
                };
                // Two out-of-order records break the chain twice; report the swap once.
                if !rep.problems.iter().any(|p| {
                    p.kind == "reordered" && p.file == finding.file && p.line + 1 == finding.line
                }) {
                    rep.problems.push(finding);
                }
            } else if i == 0
                && let Some(t) = pending_torn.take()
            {
                // The next file continues from the last complete line: the torn line was a crash.
                rep.notes.push(t);
            }
            if v.get("kind").and_then(|k| k.as_str()) == Some("checkpoint") {
                let sig = v
                    .get("sig")
                    .and_then(|s| s.as_str())
                    .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok());
                match (&key, sig) {
                    (Some(k), Some(sig)) if k.verify(prev.as_bytes(), &sig).is_ok() => {
                        rep.checkpoints_verified += 1;
                        unsigned_run = 0;
                    }
                    (Some(_), _) => rep.problems.push(Finding {
                        file: name.clone(),
                        line: i + 1,
                        kind: "bad_checkpoint_signature",
                        detail: "checkpoint signature does not verify: the chain up to here was rewritten, or the wrong public key".into(),
                    }),
                    (None, _) => unsigned_run = 0,
                }
            } else {
                unsigned_run += 1;
                if key.is_some() && unsigned_run == MAX_UNSIGNED_RUN {
                    rep.problems.push(Finding {
                        file: name.clone(),
                        line: i + 1,
                        kind: "missing_checkpoints",
                        detail: format!("{MAX_UNSIGNED_RUN} records without a valid checkpoint: checkpoints were removed"),
                    });
                }
            }
            expected = hashes[i].clone();
        }
        if !tail.is_empty() {
            let f = Finding {
                file: name.clone(),
                line: lines.len() + 1,
                kind: "torn_last_line",
                detail: "the last line is incomplete: the writer stopped mid-record (a crash), not tampering".into(),
            };
            if is_last {
                rep.notes.push(f);
            } else {
                pending_torn = Some(f);
            }
        }
    }
    if let Some(t) = pending_torn {
        rep.notes.push(t);
    }
    Ok(rep)
}
